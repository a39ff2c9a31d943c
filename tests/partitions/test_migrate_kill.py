"""kill -9 of ``meterd migrate partitions`` (a subprocess) at chosen steps and at random
moments, then a rerun: the same files as a migration that was never interrupted."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from meterd.config import Config
from meterd.partitions._migrate import check_layout, migrate
from tests.partitions.migrate_data import SMALL, contents, copy_of, populated_template

ROOT = Path(__file__).resolve().parents[2]


def migrate_and_die(config: Config, *args: str) -> int:
    return subprocess.run(
        [sys.executable, "-m", "tests.partitions.procs.migrate_and_die", str(config.path), *args],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    ).returncode


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """A populated single store and the contents its migration to 4 shards gives (from a
    copy, never interrupted)."""
    template = populated_template(tmp_path_factory.mktemp("template"), 20)
    reference = copy_of(template, tmp_path_factory.mktemp("reference"), 2, SMALL)
    migrate(reference)
    return template, dict(contents(reference, with_ids=True))


def rerun_gives_the_reference(config: Config, expected: dict[str, object]) -> None:
    migrate(config)
    check_layout(config)
    assert dict(contents(config, with_ids=True)) == expected


def fresh(prepared: tuple[Path, dict[str, object]], where: Path) -> Config:
    return copy_of(prepared[0], where, 2, SMALL)


def test_kill9_at_a_step_then_rerun(
    prepared: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    config = fresh(prepared, tmp_path / "run")
    assert migrate_and_die(config, "--step", "target 1") == -9
    rerun_gives_the_reference(config, prepared[1])


def test_kill9_at_a_random_moment_then_rerun(
    prepared: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    rng = random.Random(15)
    config = fresh(prepared, tmp_path / "run")
    migrate_and_die(config, "--after", f"{rng.uniform(0.0, 0.6):.3f}")
    rerun_gives_the_reference(config, prepared[1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "step",
    ["prepared", "planned", "store 0", "target 0", "target 3", "built", "placed 0",
     "placed 1", "placed 11", "aside 0", "aside 2"],
)  # fmt: skip
def test_kill9_at_every_step_then_rerun(
    prepared: tuple[Path, dict[str, object]], tmp_path: Path, step: str
) -> None:
    config = fresh(prepared, tmp_path / "run")
    assert migrate_and_die(config, "--step", step) == -9
    rerun_gives_the_reference(config, prepared[1])


@pytest.mark.slow
def test_kill9_at_many_random_moments_then_rerun(
    prepared: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    # The moments are drawn over how long an uninterrupted migration of the same store takes
    # on this machine now (its imports warm or not): the shorter of two, so that a slow
    # first one (cold caches, a busy machine) does not let most runs finish first.
    durations = []
    for n in range(2):
        timed = fresh(prepared, tmp_path / f"timed{n}")
        finished = subprocess.run(
            [sys.executable, "-m", "tests.partitions.procs.migrate_and_die", str(timed.path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        durations.append(float(finished.stdout.split()[-1]))
        rerun_gives_the_reference(timed, prepared[1])
    duration = min(durations)
    rng = random.Random(1515)
    killed = 0
    for n in range(30):
        config = fresh(prepared, tmp_path / f"run{n}")
        after = rng.uniform(0.0, duration)
        killed += migrate_and_die(config, "--after", f"{after:.3f}") == -9
        rerun_gives_the_reference(config, prepared[1])
    assert killed >= 10  # most runs were interrupted
