"""A small HTTP app for the service tests. It listens on $PORT and answers
`pid <pid>`; its first argument picks a behaviour:

    serve        (default) answer every request; `/crash` exits mid-request,
                 `/slow` takes 300 ms, `Upgrade: echo` switches to an echo
                 of raw bytes
    never-ready  never listen
    ignore-term  like serve, but ignore SIGTERM
"""
import http.server
import os
import signal
import socketserver
import sys
import time

mode = sys.argv[1] if len(sys.argv) > 1 else "serve"
if mode == "never-ready":
    time.sleep(3600)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.headers.get("Upgrade") == "echo":
            # A raw upgraded connection: echo bytes until the client closes.
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while data := self.connection.recv(1024):
                self.connection.sendall(data)
            self.close_connection = True
            return
        if self.path.startswith("/crash"):
            os._exit(7)
        if self.path.startswith("/slow"):
            time.sleep(0.3)
        body = f"pid {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
