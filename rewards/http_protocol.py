"""uvicorn's h11 HTTP protocol with a header read timeout, for the reward server (`rewards/server.py`).

uvicorn bounds the idle time between requests (keep-alive) but not the time a client takes to send
a request's headers: one byte every few seconds holds a connection open forever. This protocol
closes a connection whose request line and headers have not all arrived ``header_timeout_s``
seconds after their first byte (or after the connection opened). The body's own deadline is the
app's (``body_timeout_s``, answered 408).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

#: the attribute of uvicorn's `Config` that carries the timeout to each connection's protocol
CONFIG_ATTR = "blip3o_rl_header_timeout_s"


@functools.cache
def header_timeout_protocol() -> type:
    """The `H11Protocol` subclass that closes a connection whose request headers take over
    ``header_timeout_s``. uvicorn and h11 (the ``[server]`` extra) are imported here, when a server is
    built, so this module imports without them. The class is also the module attribute
    ``HeaderTimeoutH11Protocol`` (`__getattr__`), so uvicorn's worker processes can unpickle it by name."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        """`H11Protocol` that closes a connection whose request headers take over ``header_timeout_s``."""

        def __init__(self, config: Any, *args: Any, **kwargs: Any):
            super().__init__(config, *args, **kwargs)
            self._header_timeout_s = float(getattr(config, CONFIG_ATTR, 10.0))
            self._header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(self._header_timeout_s, self._header_timed_out)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
                logger.info("closed the connection of %s: no complete request headers in %g s", client,
                            self._header_timeout_s)
                self.transport.close()

    HeaderTimeoutH11Protocol.__qualname__ = "HeaderTimeoutH11Protocol"
    return HeaderTimeoutH11Protocol


def __getattr__(name: str) -> Any:
    if name == "HeaderTimeoutH11Protocol":  # by name, as pickle finds it in a spawned worker
        return header_timeout_protocol()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
