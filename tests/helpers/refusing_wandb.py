"""A local stand-in for a W&B server that refuses every request (401, as for a revoked key)."""

import contextlib
import http.server
import threading
from collections.abc import Iterator


class Refusing(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        body = b'{"errors": [{"message": "user is not logged in"}]}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def refusing_server() -> Iterator[str]:
    """Its URL (for WANDB_BASE_URL) while it runs."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
