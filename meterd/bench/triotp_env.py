"""Isolated virtualenv for the triotp peer benchmark, and a runner for it.

triotp 0.2.1 (the newest release installable on Python 3.11) pins
``trio>=0.19,<0.20``, which must never be installed into the project's own
environment. This module (stdlib only) builds a dedicated virtualenv, by
default ``.bench-venvs/triotp`` under the repository root, installs triotp
there, and runs ``meterd/bench/peer_triotp.py`` (by its path) with that venv's interpreter.

Usage from Python::

    from meterd.bench.triotp_env import ensure_triotp_venv, run_peer

    python = ensure_triotp_venv()
    figures = run_peer(python, ["--quick"])

or from the shell (extra arguments are passed to the peer script)::

    python -m meterd.bench.triotp_env --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import venv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
#: The checkout holding ``meterd/`` (an editable install: the repository root).
REPO_ROOT = BENCH_DIR.parents[1]
DEFAULT_VENV = REPO_ROOT / ".bench-venvs" / "triotp"
PEER_SCRIPT = BENCH_DIR / "peer_triotp.py"

TRIOTP_VERSION = "0.2.1"
#: trio series triotp 0.2.1 requires (``trio>=0.19,<0.20``).
TRIO_SERIES = "0.19."
#: triotp itself plus its dependency set, pinned so that peer figures are
#: reproducible (these are the versions pip resolves for triotp 0.2.1).
REQUIREMENTS: tuple[str, ...] = (
    f"triotp=={TRIOTP_VERSION}",
    "trio==0.19.0",
    "tenacity==8.5.0",
    "trio-util==0.7.0",
    "Logbook==1.10.1",
)

#: Environment variables that could leak the project's packages into the venv.
_LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")


class TriotpEnvError(RuntimeError):
    """The triotp venv could not be built or the peer benchmark failed."""


def venv_python(path: Path) -> Path:
    """Return the interpreter path inside the virtualenv at ``path``."""
    return path / "bin" / "python"


def _clean_env() -> dict[str, str]:
    """Copy of ``os.environ`` without variables that alter ``sys.path``."""
    return {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}


def installed_versions(
    python: Path, distributions: Sequence[str] = ("triotp", "trio")
) -> dict[str, str | None]:
    """Ask ``python`` which versions of ``distributions`` it has (None if absent)."""
    probe = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        out[name] = None\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [str(python), "-I", "-c", probe, *distributions],
        capture_output=True,
        text=True,
        env=_clean_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise TriotpEnvError(f"{python} failed to report versions: {proc.stderr}")
    versions: dict[str, str | None] = json.loads(proc.stdout)
    return versions


def _is_ready(versions: Mapping[str, str | None]) -> bool:
    """True when triotp is the pinned version and trio is from the 0.19 series."""
    trio_version = versions.get("trio")
    return (
        versions.get("triotp") == TRIOTP_VERSION
        and trio_version is not None
        and trio_version.startswith(TRIO_SERIES)
    )


def ensure_triotp_venv(path: Path = DEFAULT_VENV) -> Path:
    """Create (if missing) the triotp venv at ``path`` and return its python.

    The venv gets ``triotp==0.2.1`` and its pinned dependencies; the function
    then checks that the venv's trio is a 0.19.x release. It is idempotent: an
    existing, correct venv is reused without touching the network.

    Raises:
        TriotpEnvError: pip failed or the resulting versions are wrong.
    """
    path = path.resolve()
    python = venv_python(path)
    if not python.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
    if _is_ready(installed_versions(python)):
        return python
    proc = subprocess.run(
        [
            str(python),
            "-I",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *REQUIREMENTS,
        ],
        capture_output=True,
        text=True,
        env=_clean_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise TriotpEnvError(
            f"pip install {' '.join(REQUIREMENTS)} failed in {path}:\n{proc.stdout}\n{proc.stderr}"
        )
    versions = installed_versions(python)
    if not _is_ready(versions):
        raise TriotpEnvError(
            f"{path} has {versions}, expected triotp {TRIOTP_VERSION} with trio {TRIO_SERIES}x"
        )
    return python


def run_peer(
    python: Path, args: Sequence[str] = (), timeout: float | None = None
) -> dict[str, Any]:
    """Run ``meterd/bench/peer_triotp.py`` with ``python`` and return its JSON object.

    ``args`` are passed to the script (e.g. ``["--quick"]`` or
    ``["--actors", "10000"]``). The script's progress log goes to this
    process's stderr; its stdout must be a single JSON object.

    Raises:
        TriotpEnvError: the script failed or printed something else than JSON.
        subprocess.TimeoutExpired: ``timeout`` seconds elapsed.
    """
    proc = subprocess.run(
        [str(python), "-I", str(PEER_SCRIPT), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=_clean_env(),
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise TriotpEnvError(f"{PEER_SCRIPT.name} exited with {proc.returncode}")
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise TriotpEnvError(
            f"{PEER_SCRIPT.name} printed non-JSON output: {proc.stdout[:500]!r}"
        ) from exc
    if not isinstance(result, dict):
        raise TriotpEnvError(f"{PEER_SCRIPT.name} printed {type(result).__name__}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ensure the venv, run the peer benchmark, print its JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m meterd.bench.triotp_env",
        description="Run the triotp peer benchmark in its own virtualenv; "
        "unknown arguments are passed to meterd/bench/peer_triotp.py.",
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ours, peer_args = parser.parse_known_args(argv)
    python = ensure_triotp_venv(ours.venv)
    print(json.dumps(run_peer(python, peer_args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
