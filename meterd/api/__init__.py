"""The operator and billing-support HTTP API (protocol.md §3), served in the daemon's Trio run.

* :mod:`.server` — :class:`ApiServer`, hypercorn's Trio worker as a supervised child.
* :mod:`.routes` — the routes and the starlette application.
* :mod:`.auth`, :mod:`.params`, :mod:`.errors` — the admin token, query parameters, the
  one error shape.
* :mod:`.metrics` — ``/metrics`` (Prometheus), read from the daemon's counters at scrape time.
* :mod:`.openapi` — the OpenAPI 3 document served at ``/openapi.json``.

``docs/api.md`` describes the endpoints and the choices made.
"""

from .metrics import Metrics
from .routes import Daemon, build_app
from .server import ApiServer

__all__ = ["ApiServer", "Daemon", "Metrics", "build_app"]
