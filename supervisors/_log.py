"""The library's logger: one structured event per crash or escalation, no tracebacks walls."""

from __future__ import annotations

import structlog

logger = structlog.get_logger("supervisors")
