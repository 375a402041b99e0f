"""A local OpenAI-compatible chat endpoint for judge tests: a handler base and a running server."""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer


class JudgeHandler(BaseHTTPRequestHandler):
    """Subclasses implement ``verdict(text) -> str`` (the judge's answer to one prompt)."""

    def verdict(self, text: str) -> str:
        raise NotImplementedError

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.reply({"choices": [{"message": {"content": self.verdict(body["messages"][0]["content"])}}]})

    def reply(self, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextmanager
def serving(handler: type) -> Iterator[str]:
    """The base URL (…/v1) of ``handler`` served on a free local port for the duration."""
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
