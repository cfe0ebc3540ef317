"""Serve an output directory (deep-zoom viewer, tiles) over http on the loopback interface.

The generated ``index.html`` works from ``file://`` already; serving is for browsers or setups
that block local files, and for viewing from another tab/machine through an SSH tunnel. The
server binds ``127.0.0.1`` only: exposing a directory to the network needs an explicit
``allow_remote=True``.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import webbrowser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gigasid.errors import GigasidError

__all__ = ["LOOPBACK_HOSTS", "ServeError", "ViewerServer", "serve"]

log = logging.getLogger(__name__)

#: Host names accepted without ``allow_remote`` (``localhost`` is bound as ``127.0.0.1``).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


class ServeError(GigasidError, ValueError):
    """The directory cannot be served as asked (non-loopback host, missing directory...)."""


class _QuietHandler(SimpleHTTPRequestHandler):
    """Static file handler: logs through ``logging``, knows the DeepZoom descriptor type."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".dzi": "application/xml",
        ".js": "text/javascript",
        ".json": "application/json",
        ".webp": "image/webp",
    }

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("%s - %s", self.address_string(), format % args)


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

    def __init__(self, address: tuple[str, int], directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
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
    if not root.is_dir():
        raise ServeError(f"cannot serve {root}: not a directory; run an export first")
    if host not in LOOPBACK_HOSTS and not allow_remote:
        raise ServeError(
            f"refusing to serve on {host!r}: only 127.0.0.1 (this machine) is allowed by "
            "default; pass allow_remote=True (CLI: --allow-remote) to expose the directory to "
            "the network, or tunnel the port instead (ssh -L)"
        )
    bind = "127.0.0.1" if host == "localhost" else host
    try:
        server = ViewerServer((bind, int(port)), root.resolve())
    except OSError as exc:
        raise ServeError(f"cannot listen on {bind}:{port}: {exc}; choose another port") from exc
    server.start()
    log.info("serving %s at %s", root, server.url)
    if open_browser:
        webbrowser.open(server.url + page)
    return server
