"""[[webhooks]] and [[alerts]] (protocol.md §4): every problem named, secrets never shown."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from meterd.config import Config, ConfigError, load

BASE = """
[api]
admin_token = "admin-token-0123456789"
[[meters]]
name = "dyno.seconds"
aggregation = "sum"
"""

GOOD = """
[[webhooks]]
name = "billing"
url = "http://127.0.0.1:9999/hooks"
secret_env = "HOOK_SECRET"

[[alerts]]
name = "dyno-1000"
meter = "dyno.seconds"
threshold = "1000"
webhook = "billing"

[[alerts]]
name = "dyno-spend"
meter = "dyno.seconds"
spend = "25.00"
accounts = ["acme"]
webhook = "billing"
"""

SECRET = "s3cret-hook-key-0123456789"


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(BASE + text)
    return load(path, env={"HOOK_SECRET": SECRET})


def test_a_good_config_reads_its_rules(tmp_path: Path) -> None:
    config = _load(tmp_path, GOOD)
    [hook] = config.webhooks
    assert hook.secret == SECRET
    assert SECRET not in repr(hook)
    usage, spend = config.alerts
    assert usage.threshold == Decimal("1000")
    assert usage.spend is None
    assert spend.spend == Decimal("25.00")
    assert spend.accounts == frozenset({"acme"})
    assert not spend.applies_to("other")
    assert usage.applies_to("other")
    # the crossing id is derived from the rule, the account and the period only
    assert usage.crossing_id("acme", "2026-11") == usage.crossing_id("acme", "2026-11")
    assert usage.crossing_id("acme", "2026-11") != usage.crossing_id("acme", "2026-12")
    assert usage.crossing_id("acme", "2026-11") != spend.crossing_id("acme", "2026-11")


def test_every_problem_is_named_with_a_suggestion(tmp_path: Path) -> None:
    bad = """
[[webhooks]]
name = "billing"
url = "ftp://nowhere"
secret = "short"
[[webhooks]]
name = "billing"
url = "https://example.com/x"
secret = "s3cret-hook-key-0123456789"
[[alerts]]
name = "a1"
meter = "dyno.second"
webhook = "biling"
threshold = 1000
[[alerts]]
name = "a1"
meter = "dyno.seconds"
webhook = "billing"
threshold = "10"
spend = "5"
treshold = "1"
[[alerts]]
name = "a3"
meter = "dyno.seconds"
webhook = "billing"
accounts = []
"""
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, bad)
    problems = "\n".join(caught.value.problems)
    for expected in (
        "webhooks[0].url: expected an http:// or https:// URL",
        "webhooks[0].secret: the secret must hold at least 16",
        "webhooks[1].name: 'billing' is already the name of webhooks[0]",
        "alerts[0].meter: 'dyno.second' is not a configured meter (did you mean 'dyno.seconds'?)",
        "alerts[0].webhook: 'biling' is not a configured webhook (did you mean 'billing'?)",
        'alerts[0].threshold: expected a decimal string like "1000"',
        "alerts[1].name: 'a1' is already the name of alerts[0]",
        "alerts[1].treshold: unknown key (did you mean 'threshold'?)",
        "alerts[1].spend: give threshold (usage) or spend (amount), not both",
        "alerts[2].threshold: missing",
        "alerts[2].accounts: an empty list watches no account",
    ):
        assert expected in problems, (expected, problems)
    assert "short" not in problems  # the secret's value is never shown


def test_plain_http_off_loopback_is_a_warning(tmp_path: Path) -> None:
    config = _load(tmp_path, GOOD.replace("127.0.0.1:9999", "hooks.internal"))
    assert any(w.startswith("webhooks[0].url:") and "not loopback" in w for w in config.warnings)
