# SPDX-License-Identifier: Apache-2.0
# The traced process of bench/python_web.py: a web service as the standard library builds one,
# http.server.ThreadingHTTPServer (a thread per connection) speaking HTTP/1.1 with keep-alive on
# 127.0.0.1, serving bench/python_web_app.py's JSON handler at POST /order. Binds a free port,
# prints "ready PID PORT" and serves until SIGTERM or SIGINT. No access log (its lines would fill
# the harness's pipe).
import http.server
import os
import signal
import sys

from python_web_app import respond


class OrderHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a connection carries many requests
    # Headers and body are two writes: without TCP_NODELAY the second waits for the client's
    # delayed ACK (40 ms), and the server would sit idle instead of measuring its CPU.
    disable_nagle_algorithm = True

    def do_POST(self):
        if self.path != "/order":
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length", "0"))
        payload = respond(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OrderHandler)
    server.daemon_threads = True  # open keep-alive connections do not hold the exit

    def shut_down(_signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    print(f"ready {os.getpid()} {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except SystemExit:
        pass
    server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
