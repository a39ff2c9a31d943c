"""Every operation of the API says how it is answered across owner processes (its scope),
declared once beside its route (meterd/api/operations.py)."""

from __future__ import annotations

import pytest

from meterd.api.openapi import OPERATIONS
from meterd.api.operations import Scope, every_shard


def test_every_operation_declares_its_scope() -> None:
    undeclared = [op.id for op in OPERATIONS if op.scope is None]
    assert undeclared == [], f"operations without a scope: {undeclared}"


def test_a_scope_of_every_shard_names_its_merge() -> None:
    assert every_shard("accounts") == Scope("shards", "accounts")
    with pytest.raises(TypeError, match="needs the name of its merge"):
        Scope("shards")
    with pytest.raises(TypeError, match="takes no merge"):
        Scope("account", "accounts")


def test_account_scoped_operations_name_an_account() -> None:
    for op in OPERATIONS:
        if op.scope is not None and op.scope.kind == "account":
            assert "{account}" in op.route, op.id
        if op.scope is not None and op.scope.kind == "actor":
            assert "{actor:path}" in op.route, op.id
