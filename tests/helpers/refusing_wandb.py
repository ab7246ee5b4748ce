"""A local stand-in for a W&B server that refuses every request (401, as for a revoked key)."""

import contextlib
import http.server
import threading
from collections.abc import Iterator


class Refusing(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        self.server.requests += 1  # type: ignore[attr-defined]
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


class RefusingServer(http.server.ThreadingHTTPServer):
    requests = 0  # answered so far

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def refusing_server() -> Iterator[RefusingServer]:
    """The server (its `url` for WANDB_BASE_URL, its `requests` count) while it runs."""
    server = RefusingServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
