"""The operator and billing-support HTTP API (protocol.md §3), served in the daemon's Trio run.

* :mod:`.server` — :class:`ApiServer`, hypercorn's Trio worker as a supervised child.
* :mod:`.app` — the starlette application, one route per path of the operations.
* :mod:`.routes`, :mod:`.billing` — the operations (handlers, each declared once with its
  models and answers: :mod:`.operations`).
* :mod:`.models`, :mod:`.answers` — what requests carry and what the API answers, as msgspec
  models: checked on each request and written into the document.
* :mod:`.openapi` — the OpenAPI 3.1 document served at ``/openapi.json``, generated.
* :mod:`.auth`, :mod:`.bodies`, :mod:`.errors` — the admin token, bounded JSON bodies, the
  one error shape.
* :mod:`.metrics` — ``/metrics`` (Prometheus), read from the daemon's counters at scrape time.

``docs/api.md`` describes the endpoints and the choices made.
"""

from .app import build_app
from .daemon import Daemon
from .metrics import Metrics
from .server import ApiServer

__all__ = ["ApiServer", "Daemon", "Metrics", "build_app"]
