"""A tiny local HTTP file server for download tests (127.0.0.1 only).

Serves byte strings from memory, supports ``Range: bytes=N-[M]`` (206, and 416
past the end), HEAD, and misbehaviours chosen by ``mode``:

- ``"ok"``: a well-behaved server.
- ``"truncate"``: announce the full Content-Length but send only
  ``truncate_at`` bytes of the body (from the requested offset), then close.
- ``"ignore_range"``: always answer 200 with the whole file.
- ``"no_head"``: like ``ok`` but HEAD answers 405.

Every request is recorded in ``server.requests`` as ``(method, path, range)``.
The server stops itself after ``max_lifetime`` seconds even if a test forgets.
"""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class LocalServer:
    """Context manager: ``with LocalServer({"/a.bin": data}) as srv: srv.url("/a.bin")``."""

    def __init__(
        self, files: dict[str, bytes], mode: str = "ok", truncate_at: int = 0, max_lifetime: float = 30.0
    ) -> None:
        self.files = dict(files)
        self.mode = mode
        self.truncate_at = truncate_at
        self.requests: list[tuple[str, str, str | None]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(max_lifetime, self._httpd.shutdown)
        self._timer.daemon = True

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a stuck client cannot hold a handler thread forever

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.command, self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                if head and server.mode == "no_head":
                    self.send_error(405, "Method Not Allowed")
                    return
                start, status = 0, 200
                m = _RANGE.fullmatch(rng or "")
                if m and server.mode != "ignore_range":
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    end = int(m.group(2)) + 1 if m.group(2) else len(data)
                    data, status = data[start:end], 206
                    total = len(server.files[self.path])
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{total}")
                self.end_headers()
                if head:
                    return
                if server.mode == "truncate":
                    self.wfile.write(data[: server.truncate_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

        return Handler


def closed_port() -> int:
    """A local port with nothing listening on it (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
