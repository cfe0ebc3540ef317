"""Serve an output directory (deep-zoom viewer, tiles) over http on the loopback interface.

The generated ``index.html`` works from ``file://`` already; serving is for browsers or setups
that block local files, and for viewing from another tab/machine through an SSH tunnel. The
server binds ``127.0.0.1`` only: exposing a directory to the network needs an explicit
``allow_remote=True``.

Besides files, a server can answer a few dynamic paths (``routes``): each maps a URL path to a
function returning the response; the live view of a running job
(:mod:`gigasid.io.live_page`) is served this way.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import webbrowser
from collections.abc import Callable, Mapping
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gigasid.errors import GigasidError

__all__ = ["LOOPBACK_HOSTS", "Response", "Route", "ServeError", "ViewerServer", "serve"]

log = logging.getLogger(__name__)

#: Host names accepted without ``allow_remote`` (``localhost`` is bound as ``127.0.0.1``).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


class ServeError(GigasidError, ValueError):
    """The directory cannot be served as asked (non-loopback host, missing directory...)."""


#: What a route returns: HTTP status, content type and body.
Response = tuple[int, str, bytes]
#: A dynamic path's handler: called with the query string (without ``?``) on every GET.
Route = Callable[[str], Response]


class _QuietHandler(SimpleHTTPRequestHandler):
    """Static file handler: logs through ``logging``, knows the DeepZoom descriptor type."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".dzi": "application/xml",
        ".js": "text/javascript",
        ".json": "application/json",
        ".webp": "image/webp",
    }

    def __init__(self, *args: Any, routes: Mapping[str, Route] | None = None,
                 **kwargs: Any) -> None:
        # dynamic paths, answered before files (given per server through functools.partial)
        self.routes: Mapping[str, Route] = routes or {}
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("%s - %s", self.address_string(), format % args)

    def _route(self, head: bool) -> bool:
        """Answer a dynamic path; False when the path is not one (a file then)."""
        url = urlsplit(self.path)
        route = self.routes.get(url.path)
        if route is None:
            return False
        try:
            status, ctype, body = route(url.query)
        except Exception:  # noqa: BLE001 - one failed request must not stop the server
            log.exception("%s failed", url.path)
            status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # the answers change as the job runs
        self.end_headers()
        if not head:
            self.wfile.write(body)
        return True

    def do_GET(self) -> None:  # noqa: N802 - base class name
        if not self._route(head=False):
            super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802 - base class name
        if not self._route(head=True):
            super().do_HEAD()


class ViewerServer(ThreadingHTTPServer):
    """A :class:`~http.server.ThreadingHTTPServer` running in a daemon thread.

    Attributes
    ----------
    url
        ``http://host:port/`` of the served directory.
    directory
        The served directory.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], directory: Path,
                 routes: Mapping[str, Route] | None = None) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory),
                                    routes=dict(routes or {}))
        super().__init__(address, handler)
        self.directory = directory
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if isinstance(host, bytes):  # pragma: no cover - typeshed allows bytes
            host = host.decode()
        return f"http://{host}:{port}/"

    def start(self) -> ViewerServer:
        """Start serving in a daemon thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="gigasid-serve",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and wait for the thread (idempotent)."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()

    def wait(self) -> None:
        """Block until the server stops or Ctrl-C is pressed (then stop it)."""
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    directory: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    open_browser: bool = True,
    *,
    allow_remote: bool = False,
    page: str = "index.html",
    routes: Mapping[str, Route] | None = None,
) -> ViewerServer:
    """Serve ``directory`` over http in a background thread.

    Parameters
    ----------
    directory
        Directory to serve (e.g. a run's ``out/``).
    host
        Interface to bind. Only ``127.0.0.1`` / ``localhost`` unless ``allow_remote``.
    port
        TCP port; ``0`` picks a free one (read it from ``server.url``).
    open_browser
        Open ``url + page`` in the default web browser.
    allow_remote
        Allow binding a non-loopback interface (``0.0.0.0``, a LAN address): everything in
        ``directory`` becomes readable by anyone who can reach the port.
    page
        Page opened in the browser.
    routes
        Dynamic paths (``{"/live/status.json": handler, ...}``), answered before files. With
        routes, ``directory`` may not exist yet (a running job's ``out/``): its files are
        served once they appear.

    Returns
    -------
    ViewerServer
        The started server; ``server.url`` is its address, ``server.stop()`` stops it (it can
        also be used as a context manager).

    Raises
    ------
    ServeError
        Non-loopback ``host`` without ``allow_remote``, missing directory, or port unavailable.
    """
    root = Path(directory)
    if not root.is_dir() and not (routes and not root.exists()):
        raise ServeError(f"cannot serve {root}: not a directory; run an export first")
    if host not in LOOPBACK_HOSTS and not allow_remote:
        raise ServeError(
            f"refusing to serve on {host!r}: only 127.0.0.1 (this machine) is allowed by "
            "default; pass allow_remote=True (CLI: --allow-remote) to expose the directory to "
            "the network, or tunnel the port instead (ssh -L)"
        )
    bind = "127.0.0.1" if host == "localhost" else host
    try:
        server = ViewerServer((bind, int(port)), root.resolve(), routes)
    except OSError as exc:
        raise ServeError(f"cannot listen on {bind}:{port}: {exc}; choose another port") from exc
    server.start()
    log.info("serving %s at %s", root, server.url)
    if open_browser:
        webbrowser.open(server.url + page)
    return server
