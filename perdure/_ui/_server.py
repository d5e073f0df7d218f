"""Serving the web UI: uvicorn on a socket of our own (so ``--port 0`` can say which
port it got), with SIGTERM and Ctrl-C ending it with exit code 0."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn

from perdure._app import App
from perdure._ui._app import create_app

LOOPBACK_NAMES = ["127.0.0.1", "localhost"]


def serve(
    app: App,
    *,
    host: str,
    port: int,
    read_only: bool = False,
    allowed_hosts: list[str] | None = None,
    on_ready: Callable[[str], None] = print,
) -> None:
    """Serve the UI until SIGINT/SIGTERM; ``on_ready`` gets its URL once it listens
    (``port`` 0: a free port, which the URL names). On a loopback address it answers
    to loopback names and ``allowed_hosts`` (a proxy's public name) only."""
    allowed = [*LOOPBACK_NAMES, *(allowed_hosts or [])] if host in LOOPBACK_NAMES else None
    asgi = create_app(app, read_only=read_only, allowed_hosts=allowed)
    sock = socket.create_server((host, port), family=_family(host))
    config = uvicorn.Config(asgi, log_level="warning", lifespan="on", access_log=False)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    on_ready(f"http://{shown}:{bound_port}/")
    _Server(config).run(sockets=[sock])


class _Server(uvicorn.Server):
    """uvicorn's server, but a SIGTERM or SIGINT ends it with exit code 0 after its
    graceful shutdown, as ``perdure worker`` ends (uvicorn re-raises the signal once it
    has shut down, so the process would die of it: -15, or a KeyboardInterrupt)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for open requests
        self.should_exit = True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
