"""The API server: the starlette app on hypercorn's Trio worker, as a supervised task child.

:class:`ApiServer` runs under the root supervisor after ``ingest``
(:meth:`ApiServer.child_spec`). It serves on ``[api] listen`` (HTTPS when ``tls_cert`` /
``tls_key`` are set) in the daemon's own Trio run: ``hypercorn.trio.serve`` starts its
listeners in this task's nursery, so a handler awaiting an actor or the store is just
another Trio task.

Shutdown (the supervisor cancels the task): hypercorn's shutdown trigger fires, it stops
accepting and gives requests in flight ``GRACEFUL_TIMEOUT`` to finish, all within the
child's shutdown grace (:func:`supervisors.shutdown_shield`). Hypercorn's access log is
off (request headers carry the admin token); its error log goes to the standard
``logging`` logger ``meterd.api.hypercorn``, which :func:`meterd.logs.configure` routes
through structlog (one line per event).

An unexpected exception in a route is answered 500 and logged once by the app's handler
(:mod:`.errors`); starlette then re-raises it, and :class:`AnsweredErrors` stops it there,
so hypercorn does not log it a second time as a multi-line traceback.

One hypercorn race is closed here (:class:`_Connection`): when a websocket's client and
server close at the same moment, hypercorn's connection could send the client's close
reply while it was already sending EOF (the one send it makes outside its send lock), and
the ``trio.BusyResourceError`` ended the whole server, every request in flight with it
(the supervisor restarted it, with a new listening socket). A send that meets a connection
already sending EOF is now treated as the connection closing, as a broken one is.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import hypercorn.trio.run
import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

import supervisors as sv
from meterd.config import ApiConfig

from .app import build_app
from .daemon import Daemon

log = structlog.get_logger("meterd.api")

GRACEFUL_TIMEOUT: Final = 3.0  # seconds for requests in flight when the API stops
SHUTDOWN_GRACE: Final = 5.0  # the child's shutdown grace, above GRACEFUL_TIMEOUT


class AnsweredErrors:
    """ASGI wrapper: an exception from ``app`` ends here once it has been answered.

    Starlette answers an unexpected exception with the 500 of :mod:`.errors` (which logs
    it) and then re-raises it for the server; here it is dropped instead. One raised
    before any answer is left to hypercorn (which answers 500 and logs one line).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        answered = False

        async def tracking_send(message: Any) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if scope["type"] != "http" or not answered:
                raise  # hypercorn answers and logs it (one line, see meterd.logs)
            # else: the 500 went out and the app's handler logged it: nothing more to do


class _Connection(TCPServer):
    """hypercorn's Trio connection, where a send that collides with the EOF being sent
    (``_close``, outside the send lock) is the connection closing, not a server crash."""

    async def protocol_send(self, event: Event) -> None:
        try:
            await super().protocol_send(event)
        except trio.BusyResourceError:
            await self.protocol.handle(Closed())


hypercorn.trio.run.TCPServer = _Connection  # type: ignore[attr-defined]  # what serve() builds


def hypercorn_config(api: ApiConfig) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [str(api.listen)]
    config.accesslog = None
    config.errorlog = logging.getLogger("meterd.api.hypercorn")
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.include_server_header = False
    if api.tls is not None:
        config.certfile = str(api.tls.cert)
        config.keyfile = str(api.tls.key)
    return config


class AppServer:
    """An ASGI ``app`` served by hypercorn on ``[api]`` (its listen address and TLS) as a
    task child: listening once started, requests in flight finishing within the child's
    shutdown grace when it is stopped (see the module doc)."""

    def __init__(self, api: ApiConfig, app: Any) -> None:
        self.api = api
        self.app = app
        self.urls: list[str] = []  # what the running incarnation listens on

    def child_spec(self, id: str = "api") -> sv.ChildSpec:
        return sv.task_spec(id, self.run, shutdown=SHUTDOWN_GRACE)

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:8701``), or "" when not listening."""
        return self.urls[0] if self.urls else ""

    def start_beside(self, nursery: trio.Nursery) -> None:
        """Start the tasks that run beside the server, for as long as it runs (none)."""

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled, then shut hypercorn down gracefully."""
        shield = sv.shutdown_shield()
        stop = trio.Event()
        config = hypercorn_config(self.api)
        try:
            async with trio.open_nursery() as nursery:
                self.start_beside(nursery)
                self.urls = await nursery.start(self._serve, shield, config, stop)
                log.info("api_listening", url=self.url)
                task_status.started(self)
                try:
                    await trio.sleep_forever()
                finally:
                    stop.set()
        finally:
            self.urls = []

    async def _serve(
        self,
        shield: trio.CancelScope,
        config: HypercornConfig,
        stop: trio.Event,
        *,
        task_status: trio.TaskStatus[list[str]],
    ) -> None:
        with shield:  # requests in flight finish when the child is stopped
            try:
                await serve(
                    self.app,
                    config,
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            except OSError as error:
                raise OSError(
                    error.errno, f"api.listen {self.api.listen}: {error.strerror}"
                ) from error


class ApiServer(AppServer):
    """The operator HTTP API of one daemon (see the module doc)."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(daemon.config.api, AnsweredErrors(build_app(daemon)))
        self.daemon = daemon

    def child_spec(self, id: str = "api") -> sv.ChildSpec:
        self.daemon.api_child_id = id
        return super().child_spec(id)

    def start_beside(self, nursery: trio.Nursery) -> None:
        """The tree's restarts, written into the store while the API runs."""
        if self.daemon.restarts is not None:
            nursery.start_soon(self.daemon.restarts.run)


__all__ = ["AnsweredErrors", "ApiServer", "AppServer", "hypercorn_config"]
