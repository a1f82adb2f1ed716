"""A small HTTP app for the service tests. It listens on $PORT and answers
`pid <pid>`; its first argument picks a behaviour:

    serve        (default) answer every request; `/crash` exits mid-request,
                 `/slow` takes 300 ms, `/hang` 60 s, `/hog` touches 200 MiB
                 of memory, `/headers` answers the
                 request line and headers it got, a POST answers
                 `received <n>` for its body, `Upgrade: echo` switches to an
                 echo of raw bytes
    never-ready  never listen
    ignore-term  like serve, but ignore SIGTERM
    escapee      like serve, after starting `sleep 300` in a session of its
                 own (setsid), whose pid it writes to $ESCAPEE_PIDFILE
    one-per-connection
                 like serve, but a second request on a connection is met by
                 closing it unanswered (a keep-alive connection closed by the
                 app just as the proxy reuses it)
    close-after-answer
                 like serve, but every connection is closed right after its
                 first answer, which does not say `Connection: close`
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
if mode == "escapee":
    import subprocess
    escapee = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with open(os.environ["ESCAPEE_PIDFILE"], "w") as pidfile:
        pidfile.write(str(escapee.pid))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        received = 0
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                received += len(self.rfile.read(size))
                self.rfile.readline()
        else:
            received = len(self.rfile.read(int(self.headers.get("content-length", "0"))))
        self.answer(f"received {received}\n".encode())

    def answer(self, body):
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if mode == "one-per-connection":
            if getattr(self, "answered", False):
                self.close_connection = True
                return
            self.answered = True
        if mode == "close-after-answer":
            self.close_connection = True
        if self.path.startswith("/headers"):
            lines = [self.requestline] + [f"{name.lower()}: {value}" for name, value in self.headers.items()]
            return self.answer(("\n".join(lines) + "\n").encode())
        if self.path.startswith("/hang"):
            time.sleep(60)
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
        if self.path.startswith("/hog"):
            # Touches 200 MiB, page by page: past a smaller memory size.
            hog = bytearray(200 << 20)
            for page in range(0, len(hog), 4096):
                hog[page] = 1
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
