"""One JSON POST with a hard deadline and a redirect policy that never leaks credentials.

urllib's timeout applies to each socket read, so a server that trickles bytes keeps a request alive
indefinitely, and urllib follows redirects to any host with the Authorization header attached.
:func:`post_json` bounds the *whole* request (connect, send, headers, body) by ``timeout`` with a
watchdog that shuts the socket at the deadline, follows only 307/308 redirects (which keep the POST
body), at most a few, and drops Authorization when a redirect leaves the original scheme, host and
port. Other redirects are errors. The body must be UTF-8 JSON.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from typing import Any

MAX_BODY = 16 * 2**20  # bytes; a judge's answer is a few hundred
MAX_REDIRECTS = 3


class HTTPStatusError(Exception):
    """A non-2xx answer; ``retriable`` for 5xx and 429."""

    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        snippet = body[:200].decode("utf-8", "replace").strip()
        super().__init__(f"HTTP {status} {reason}" + (f": {snippet}" if snippet else ""))
        self.status = status
        self.retriable = status >= 500 or status == 429


class RedirectRefused(Exception):
    """A redirect that is not followed (it would change the method or loop)."""


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int]:
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _once(url: str, body: bytes, headers: dict[str, str], deadline: float) -> tuple[int, str, Any, bytes]:
    """(status, reason, headers, body) of one POST, all of it within ``deadline`` (monotonic)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"unsupported URL {url!r} (http or https)")
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed before the request")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=remaining)
    expired = threading.Event()

    def kill() -> None:  # wakes a blocked recv in the requesting thread
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(remaining, kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        path = parts.path or "/"
        conn.request("POST", path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers)
        resp = conn.getresponse()
        chunks, size = [], 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or expired.is_set():
                raise TimeoutError
            if conn.sock is not None:
                conn.sock.settimeout(left)
            chunk = resp.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_BODY:
                raise ValueError(f"response larger than {MAX_BODY} bytes")
            chunks.append(chunk)
        if expired.is_set():  # the shutdown may look like a clean end of the body
            raise TimeoutError
        return resp.status, resp.reason, resp.headers, b"".join(chunks)
    except (OSError, http.client.HTTPException) as e:
        if expired.is_set() or time.monotonic() >= deadline:
            raise TimeoutError(f"no complete answer within the timeout ({type(e).__name__})") from None
        raise
    finally:
        watchdog.cancel()
        conn.close()


def post_json(url: str, payload: Any, headers: dict[str, str], timeout: float) -> Any:
    """POST ``payload`` as JSON and return the decoded JSON answer; the whole exchange ≤ ``timeout`` s.

    Raises TimeoutError, OSError / http.client.HTTPException (network), ValueError (not UTF-8 JSON),
    HTTPStatusError (non-2xx) or RedirectRefused.
    """
    deadline = time.monotonic() + timeout
    body = json.dumps(payload).encode()
    headers = {**headers, "Content-Type": "application/json"}
    origin = _origin(urllib.parse.urlsplit(url))
    for _ in range(MAX_REDIRECTS + 1):
        status, reason, resp_headers, data = _once(url, body, headers, deadline)
        if status in (301, 302, 303, 307, 308):
            if status not in (307, 308):
                raise RedirectRefused(f"HTTP {status} redirect would turn the POST into a GET; not followed")
            target = urllib.parse.urljoin(url, resp_headers.get("Location", ""))
            if _origin(urllib.parse.urlsplit(target)) != origin:  # never hand the key to another origin
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
            continue
        if not 200 <= status < 300:
            raise HTTPStatusError(status, reason, data)
        return json.loads(data.decode("utf-8"))
    raise RedirectRefused(f"more than {MAX_REDIRECTS} redirects")
