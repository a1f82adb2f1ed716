# The Python hello guest (componentize-py): same answer as guests/src/hello.c.
from wit_world import exports
from wit_world.imports.types import Fields, OutgoingResponse, OutgoingBody, ResponseOutparam, IncomingRequest
from componentize_py_types import Ok


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        stream = body.write()
        stream.blocking_write_and_flush(b"Hello from dormouse!\n")
        stream.__exit__(None, None, None)
        OutgoingBody.finish(body, None)
