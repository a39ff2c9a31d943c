"""TOML tables declared once: typed fields, each key checked with its name in every message.

A table is a frozen dataclass. A field annotated with :func:`key` is one key of the table:
the annotation is its type, the default its default (no default: the key is required), and
``key(...)`` says what it means, its unit and its bounds. That one declaration drives the
checks, the messages and the reference table in the docs (:func:`reference`). Fields without
``key`` are not read from the file.

:func:`check_fields` checks one parsed TOML table against such a class. msgspec converts
and checks each value (type, bounds, pattern); this module phrases what msgspec refuses in
the user's terms (``expected an integer, got a string ('10')``), names the dotted key
(``meters[2].aggregation``, arrays counted from 0), suggests the close name of an unknown
key, reads a secret from the file or from ``<key>_env``, and never shows a secret. Keys are
checked one at a time, so every problem is reported, not only the first: msgspec alone stops
at the first.

Durations have one convention: a string with a unit (``"500ms"``, ``"30s"``, ``"90m"``,
``"12h"``, ``"35d"``) or a number of seconds (``30``, ``0.25``), kept as a
:class:`Duration` of whole milliseconds. A renamed key keeps its old name working
(``key(was=...)``) with a deprecation warning naming the new one.

Why msgspec rather than pydantic v2: start-up. Importing the library, declaring the config's
tables and validating the shipped config.toml took a median 52 ms of CPU with msgspec
0.22 and 155 ms with pydantic 2.14, against 33 ms for a bare interpreter importing the
same standard modules (``farm-bench``, 15 paired runs): ~20 ms added to every command that
reads the config, against ~120 ms. Pydantic's draw, reporting every error at once, stops at
a model's boundary (its cross-field validators run only when all its fields are valid), so a
driver of our own was needed either way; and msgspec may serve the ingest hot path later.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final

import msgspec
from msgspec import inspect as mi

__all__ = [
    "ABSENT",
    "Check",
    "Duration",
    "Invalid",
    "KeyInfo",
    "Row",
    "check_fields",
    "dotted",
    "format_duration",
    "got",
    "key",
    "kind",
    "kind_of",
    "reference",
    "show",
    "suggest",
]

SECOND_MS: Final = 1000
MINUTE_MS: Final = 60 * SECOND_MS
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
_UNITS: Final = {"ms": 1, "s": SECOND_MS, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}
_DURATION: Final = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
ABSENT: Final = object()  # ``table.get(name, ABSENT)``: the key is not in the table


class Invalid(Exception):
    """A value's problem in the user's words (never holding a secret).

    ``key`` names a part of the value (``match.size``, ``dimensions[1]``) when the problem is
    there rather than in the whole value."""

    def __init__(self, text: str, key: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.key = key


def format_duration(ms: int) -> str:
    """``ms`` in the largest whole unit: ``35d``, ``90m``, ``1500ms``."""
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True, slots=True, order=True)
class Duration:
    """A length of time in whole milliseconds, the one unit of every duration in the config."""

    ms: int

    @property
    def seconds(self) -> float:
        return self.ms / 1000

    def __str__(self) -> str:
        return format_duration(self.ms)

    @classmethod
    def of(cls, text: str) -> Duration:
        """``Duration.of("30s")``: a duration written as in the config file."""
        return _duration(text, KeyInfo())


# --- declaring keys -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What :func:`key` says about one key beyond msgspec's own constraints."""

    unit: str = ""
    low: Duration | None = None  # bounds of a Duration (msgspec's ge/le are for numbers)
    high: Duration | None = None
    pattern: re.Pattern[str] | None = None  # checked here: the message names the rule
    invalid: str = ""  # what a value not matching ``pattern`` should be ("a valid meter name")
    missing: str = ""  # the hint after "missing" when a required key is absent
    secret: bool = False  # also given as <key>_env; its value is never shown
    was: str = ""  # the key's old name, still read, with a deprecation warning
    was_unit: str = ""  # "ms": the old key held an integer number of milliseconds
    parse: Callable[[object], Any] | None = None  # converts the value (raises Invalid)
    kind: str = ""  # the value's description in the reference, for a ``parse``d key


def key(
    meaning: str,
    *,
    unit: str = "",
    ge: float | Duration | None = None,
    le: float | Duration | None = None,
    pattern: str | None = None,
    invalid: str = "",
    max_length: int | None = None,
    missing: str = "",
    secret: bool = False,
    was: str = "",
    was_unit: str = "",
    parse: Callable[[object], Any] | None = None,
    kind: str = "",
) -> msgspec.Meta:
    """Declare one key: ``Annotated[int, key("Events per batch.", ge=1, le=100_000)] = 1000``.

    ``meaning`` is the sentence the reference shows. ``ge``/``le`` bound a number or a
    :class:`Duration`; ``pattern`` (the whole value must match) with ``invalid`` phrases a
    refusal as "'X' is not <invalid>"; ``secret`` keys may come from ``<key>_env``; ``was``
    is an old name of the key; ``parse`` converts a value msgspec has no type for.
    """
    numeric = {
        "ge": ge if not isinstance(ge, Duration) else None,
        "le": le if not isinstance(le, Duration) else None,
    }
    info = KeyInfo(
        unit=unit,
        low=ge if isinstance(ge, Duration) else None,
        high=le if isinstance(le, Duration) else None,
        pattern=re.compile(pattern) if pattern is not None else None,
        invalid=invalid,
        missing=missing,
        secret=secret,
        was=was,
        was_unit=was_unit,
        parse=parse,
        kind=kind,
    )
    constraints: dict[str, Any] = {n: v for n, v in numeric.items() if v is not None}
    if max_length is not None:
        constraints["max_length"] = max_length
    meta: msgspec.Meta = msgspec.Meta(**constraints, description=meaning, extra={"key": info})
    return meta


Parser = Callable[[object, KeyInfo, "Check"], Any]


@dataclass(frozen=True, slots=True)
class _Kind:
    parse: Parser
    name: str  # in the reference: "duration", "HOST:PORT"
    default: Callable[[Any, Check], Any] | None = None  # e.g. a relative default path resolved


_KINDS: dict[type, _Kind] = {}


def kind(
    cls: type, name: str, *, default: Callable[[Any, Check], Any] | None = None
) -> Callable[[Parser], Parser]:
    """Register the parser of a value type msgspec does not know (``Listen``, ``Path``)."""

    def register(parse: Parser) -> Parser:
        _KINDS[cls] = _Kind(parse, name, default)
        return parse

    return register


# --- the check ----------------------------------------------------------------------------------


class Check:
    """One document's check: its problems and warnings, and what parsers need (the config's
    directory for relative paths, the environment for ``*_env`` keys)."""

    def __init__(self, base: Path, env: Mapping[str, str]) -> None:
        self.base = base
        self.env = env
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{key}: {text}")

    def warn(self, key: str, text: str) -> None:
        self.warnings.append(f"{key}: {text}")

    def unique_name(self, prefix: str, name: Any, seen: dict[Any, str]) -> bool:
        """Whether the ``name`` of the entry at ``prefix`` (``meters[2]``) is the first of
        its kind; ``seen`` maps each name to the entry that took it first. A repeat is a
        problem at ``<prefix>.name`` naming that entry. ``None`` (no valid name) passes."""
        if name is None:
            return True
        if name in seen:
            self.problem(f"{prefix}.name", f"{name!r} is already the name of {seen[name]}")
            return False
        seen[name] = prefix
        return True

    def unknown_keys(
        self,
        prefix: str,
        table: Mapping[str, object],
        allowed: Sequence[str],
        old: Collection[str] = (),
    ) -> None:
        """A problem for each key of ``table`` that is neither ``allowed`` nor an ``old``
        name (still read, not suggested)."""
        for name in table:
            if name not in allowed and name not in old:
                hint = suggest(name, allowed) or f" (expected one of {', '.join(allowed)})"
                self.problem(dotted(prefix, name), f"unknown key{hint}")

    def table(self, key: str, value: object) -> dict[str, object]:
        """``value`` as a table ({} when absent or, with a problem, not a table)."""
        if value is ABSENT:
            return {}
        if not isinstance(value, dict):
            self.problem(key, f"expected a table ([{key}]), got {kind_of(value)}")
            return {}
        return value

    def array_of_tables(self, key: str, value: object) -> list[tuple[str, dict[str, object]]]:
        """``(key[i], table)`` for each table of an array of tables (``[[key]]``)."""
        if value is ABSENT:
            return []
        if not isinstance(value, list):
            self.problem(key, f"expected an array of tables ([[{key}]]), got {kind_of(value)}")
            return []
        tables = []
        for index, item in enumerate(value):
            if isinstance(item, dict):
                tables.append((f"{key}[{index}]", item))
            else:
                self.problem(
                    f"{key}[{index}]", f"expected a table ([[{key}]]), got {kind_of(item)}"
                )
        return tables


def check_fields(
    cls: type,
    table: Mapping[str, object],
    prefix: str,
    check: Check,
    *,
    also: Sequence[str] = (),
) -> tuple[dict[str, Any], bool]:
    """Check ``table`` against the keys declared by ``cls``: (the valid values by field name,
    defaults included; whether every key was valid). Every problem goes to ``check``.
    ``also``: more names the table may hold (checked by the caller)."""
    keys = _keys(cls)
    check.unknown_keys(prefix, table, (*_allowed(cls), *also), [k.info.was for k in keys])
    values: dict[str, Any] = {}
    ok = True
    for spec in keys:
        try:
            values[spec.name] = spec.read(table, prefix, check)
        except Invalid as error:
            check.problem(dotted(prefix, spec.name, error.key), error.text)
            ok = False
        except _Reported:
            ok = False
    return values, ok


# --- one key ------------------------------------------------------------------------------------


class _Reported(Exception):
    """A problem already recorded under its own key."""


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    annotation: Any  # for msgspec.convert
    type: mi.Type  # the value's type, without its metadata and without ``| None``
    info: KeyInfo
    meaning: str
    required: bool
    default: Any

    def read(self, table: Mapping[str, object], prefix: str, check: Check) -> Any:
        if self.info.secret:
            return self.secret(table, prefix, check)
        value = table.get(self.name, ABSENT)
        if self.info.was and self.info.was in table:
            old_key = dotted(prefix, self.info.was)
            if value is not ABSENT:
                check.problem(
                    old_key, f"give either {self.name} or {self.info.was} (its old name), not both"
                )
                raise _Reported
            try:
                converted = self.convert_old(table[self.info.was], check)
            except Invalid as error:
                check.problem(old_key, error.text)
                raise _Reported from None
            check.warn(
                old_key,
                f"deprecated, renamed {dotted(prefix, self.name)}: write"
                f" {self.name} = {_toml(converted)}",
            )
            return converted
        if value is ABSENT:
            if self.required:
                raise Invalid(f"missing{self.missing_hint()}")
            return self.default_value(check)
        return self.convert(value, check)

    def missing_hint(self) -> str:
        if self.info.missing:
            return f" ({self.info.missing})"
        if isinstance(self.type, mi.EnumType | mi.LiteralType):
            return f" (one of {_choices(self.type)})"
        return ""

    def default_value(self, check: Check) -> Any:
        value_kind = _kind_for(self.type)
        if value_kind is not None and value_kind.default is not None and self.default is not None:
            return value_kind.default(self.default, check)
        return self.default

    def convert_old(self, value: object, check: Check) -> Any:
        if self.info.was_unit == "ms":
            if isinstance(value, bool) or not isinstance(value, int):
                raise Invalid(f"expected an integer number of milliseconds, {got(value)}")
            low, high = self.info.low or Duration(1), self.info.high or DEFAULT_HIGH
            if not low.ms <= value <= high.ms:
                raise Invalid(f"must be between {low.ms} and {high.ms} (ms), got {value}")
            return Duration(value)
        return self.convert(value, check)

    def convert(self, value: object, check: Check) -> Any:
        t, info = self.type, self.info
        if info.parse is not None:
            return info.parse(value)
        value_kind = _kind_for(t)
        if value_kind is not None:
            return value_kind.parse(value, info, check)
        if isinstance(t, mi.StrType) and value == "":
            raise Invalid("must not be empty")
        if isinstance(t, mi.VarTupleType | mi.FrozenSetType | mi.ListType):
            self.check_items(value, t)
        if (
            isinstance(value, str)
            and info.pattern is not None
            and not info.pattern.fullmatch(value)
        ):
            raise Invalid(f"{show(value)} is not {info.invalid}" if info.invalid else "invalid")
        try:
            return msgspec.convert(value, self.annotation, strict=True)
        except msgspec.ValidationError:
            raise Invalid(_phrase(value, t, info.kind)) from None

    def check_items(
        self, value: object, t: mi.VarTupleType | mi.FrozenSetType | mi.ListType
    ) -> None:
        if not isinstance(value, list):
            raise Invalid(f"expected {_article(self.info.kind) or _describe(t)}, {got(value)}")
        for index, item in enumerate(value):
            if isinstance(t.item_type, mi.StrType) and item == "":
                raise Invalid("must not be empty", f"[{index}]")
            try:
                msgspec.convert(item, _item_annotation(self.annotation), strict=True)
            except msgspec.ValidationError:
                raise Invalid(_phrase(item, t.item_type), f"[{index}]") from None
        if t.max_length is not None and len(value) > t.max_length:
            raise Invalid(f"at most {t.max_length} {self.info.unit}, got {len(value)}")

    def secret(self, table: Mapping[str, object], prefix: str, check: Check) -> str:
        """The secret from ``name`` or ``name_env``; problems name the key, never the value."""
        name, env_name = self.name, f"{self.name}_env"
        value, env_value = table.get(name, ABSENT), table.get(env_name, ABSENT)
        if value is not ABSENT and env_value is not ABSENT:
            raise Invalid(f"give either {name} or {env_name}, not both")
        if value is not ABSENT:
            if not isinstance(value, str):
                raise Invalid(f"expected a string, got {kind_of(value)}")
            return self.secret_text(value, "")
        if env_value is ABSENT:
            if not self.required:  # an optional secret (its default, None)
                return self.default  # type: ignore[no-any-return]
            raise Invalid(f'missing (give {name} = "..." or {env_name} = "VARIABLE")')
        try:
            return self.env_secret(env_value, check.env)
        except Invalid as error:
            check.problem(dotted(prefix, env_name), error.text)
            raise _Reported from None

    def env_secret(self, variable: object, env: Mapping[str, str]) -> str:
        if not isinstance(variable, str):
            raise Invalid(f"expected an environment variable name, {got(variable)}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable):
            raise Invalid(f"{show(variable)} is not an environment variable name")
        secret = env.get(variable)
        if secret is None:
            raise Invalid(f"environment variable {variable!r} is not set")
        return self.secret_text(secret, f"environment variable {variable!r} ")

    def secret_text(self, secret: str, source: str) -> str:
        source = source or f"the {self.name.replace('_', ' ')} "
        if not secret:
            raise Invalid(f"{source}is empty")
        if self.info.pattern is not None and not self.info.pattern.fullmatch(secret):
            raise Invalid(f"{source}must hold {self.info.invalid}")
        return secret


def _kind_for(t: mi.Type) -> _Kind | None:
    """The registered kind of a custom value type (a class msgspec sees as custom or as a
    dataclass), or None."""
    cls = getattr(t, "cls", None)
    return _KINDS.get(cls) if isinstance(cls, type) else None


@functools.cache
def _keys(cls: type) -> tuple[_Key, ...]:
    """The keys ``cls`` declares, in field order. Only the keys' own types are inspected (not
    every type the class refers to): it keeps the first check of a table cheap."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [field for field in dataclasses.fields(cls) if _is_key(hints[field.name])]
    types = mi.multi_type_info([hints[field.name] for field in fields])
    keys = []
    for field, field_type in zip(fields, types, strict=True):
        t, meaning, key_info = _unwrap(field_type)
        assert key_info is not None
        required = field.default is dataclasses.MISSING
        required = required and field.default_factory is dataclasses.MISSING
        default = None if required else field.default
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        keys.append(_Key(field.name, hints[field.name], t, key_info, meaning, required, default))
    return tuple(keys)


def _is_key(annotation: Any) -> bool:
    """Whether a field's annotation carries a :func:`key` (possibly inside ``X | None``)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return any(
            isinstance(meta, msgspec.Meta) and "key" in (meta.extra or {})
            for meta in annotation.__metadata__
        )
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_key(member) for member in typing.get_args(annotation))
    return False


@functools.cache
def _allowed(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for spec in _keys(cls):
        names.append(spec.name)
        if spec.info.secret:
            names.append(f"{spec.name}_env")
    return tuple(names)


def _unwrap(t: mi.Type) -> tuple[mi.Type, str, KeyInfo | None]:
    """(the value's type, the key's meaning, its KeyInfo) of a field's type."""
    meaning, info = "", None
    if isinstance(t, mi.Metadata):
        meaning = (t.extra_json_schema or {}).get("description", "")
        info = (t.extra or {}).get("key")
        t = t.type
    if isinstance(t, mi.UnionType):
        others = [member for member in t.types if not isinstance(member, mi.NoneType)]
        if len(others) == 1:  # ``X | None``: TOML has no null, an absent key is the None
            return _unwrap(others[0]) if info is None else (_unwrap(others[0])[0], meaning, info)
    return t, meaning, info


def _item_annotation(annotation: Any) -> Any:
    """``str`` of ``Annotated[tuple[str, ...] | None, ...]``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return typing.get_args(annotation)[0]


# --- phrasing -----------------------------------------------------------------------------------


def dotted(prefix: str, name: str, part: str = "") -> str:
    """``meters[2]`` + ``name`` -> ``meters[2].name`` (a name that is not bare quoted)."""
    text = name if _BARE_KEY.fullmatch(name) else json.dumps(name)
    whole = f"{prefix}.{text}" if prefix else text
    if part and not part.startswith("["):
        part = f".{part}"
    return whole + part


def kind_of(value: object) -> str:
    """``a string``: what kind of TOML value ``value`` is."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime | date | time):
        return "a date/time"
    return type(value).__name__


def show(value: object) -> str:
    """A (non-secret) value as the user wrote it, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def got(value: object) -> str:
    """``got a string ('x')``: the kind of a (non-secret) value and the value itself."""
    if isinstance(value, dict | list):
        return f"got {kind_of(value)}"
    return f"got {kind_of(value)} ({show(value)})"


def suggest(name: str, choices: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _choices(t: mi.Type) -> str:
    if isinstance(t, mi.EnumType):
        return ", ".join(str(member.value) for member in t.cls)
    if isinstance(t, mi.LiteralType):
        return ", ".join(str(value) for value in t.values)
    return ""


def _describe(t: mi.Type) -> str:
    """What a value of type ``t`` is, after "expected"."""
    if isinstance(t, mi.IntType):
        return "an integer"
    if isinstance(t, mi.FloatType):
        return "a number"
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.StrType):
        return "a string"
    if isinstance(t, mi.EnumType | mi.LiteralType):
        return f"a string (one of {_choices(t)})"
    if isinstance(t, mi.VarTupleType | mi.FrozenSetType | mi.ListType):
        item = _describe(t.item_type).removeprefix("a ").removeprefix("an ")
        return f"an array of {item}s"
    if isinstance(t, mi.DictType):
        return "a table"
    return f"a {type(t).__name__.removesuffix('Type').lower()}"


def _same_kind(value: object, t: mi.Type) -> bool:
    if isinstance(t, mi.IntType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(t, mi.FloatType):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(t, mi.StrType | mi.EnumType | mi.LiteralType):
        return isinstance(value, str)
    return False


def _article(text: str) -> str:
    """``an integer``, ``a string``; ``""`` for ``""``."""
    if not text:
        return ""
    return f"{'an' if text[0] in 'aeiou' else 'a'} {text}"


def _phrase(value: object, t: mi.Type, kind: str = "") -> str:
    """Why msgspec refused ``value`` for type ``t`` (described as ``kind`` if given)."""
    if not _same_kind(value, t):
        return f"expected {_article(kind) or _describe(t)}, {got(value)}"
    if isinstance(t, mi.IntType | mi.FloatType):
        return f"must be {_range(t.ge, t.le)}, got {value}"
    if isinstance(t, mi.EnumType | mi.LiteralType):
        return f"{show(value)} is not one of {_choices(t)}"
    max_length = t.max_length if isinstance(t, mi.StrType) else None
    if isinstance(value, str) and max_length is not None and len(value) > max_length:
        return f"at most {max_length} characters, got {len(value)}"
    return f"invalid: {show(value)}"


def _range(low: object, high: object) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    if low is not None:
        return f"at least {low}"
    return f"at most {high}"


def _toml(value: object) -> str:
    """``value`` as it is written in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, tuple | list):
        return json.dumps([str(item) for item in value])
    return json.dumps(str(value))


# --- durations ----------------------------------------------------------------------------------

DEFAULT_HIGH: Final = Duration(3650 * DAY_MS)


@kind(Duration, "duration")
def _duration_kind(value: object, info: KeyInfo, check: Check) -> Duration:
    return _duration(value, info)


def _duration(value: object, info: KeyInfo) -> Duration:
    expected = "expected a duration like '35d', '12h', '90m', '30s', '100ms' or a number of seconds"
    if isinstance(value, bool):
        raise Invalid(f"{expected}, {got(value)}")
    if isinstance(value, int):
        ms = value * SECOND_MS
    elif isinstance(value, float):
        if not math.isfinite(value * SECOND_MS):
            raise Invalid(f"{expected}, {got(value)}")
        ms = round(value * SECOND_MS)
        if ms <= 0 < value:
            ms = 1  # a positive duration under a millisecond: keep it positive
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise Invalid(f"{expected}, got {show(value)}")
        ms = int(match[1]) * _UNITS[match[2]]
    else:
        raise Invalid(f"{expected}, {got(value)}")
    return _bounded(Duration(ms), value, info)


def _bounded(duration: Duration, written: object, info: KeyInfo) -> Duration:
    low, high = info.low, info.high or DEFAULT_HIGH
    if low is None:
        if duration.ms <= 0:
            raise Invalid(f"must be longer than 0, got {show(written)}")
        if duration > high:
            raise Invalid(f"must be at most {high}, got {show(written)}")
    elif not low <= duration <= high:
        raise Invalid(f"must be between {low} and {high}, got {show(written)}")
    return duration


# --- paths --------------------------------------------------------------------------------------


def _resolve(path: Path, check: Check) -> Path:
    return (check.base / path).resolve()


@kind(Path, "path", default=_resolve)
def _path_kind(value: object, info: KeyInfo, check: Check) -> Path:
    """A file path; a relative one is taken from the config file's directory."""
    if not isinstance(value, str):
        raise Invalid(f"expected a string, {got(value)}")
    if not value:
        raise Invalid("must not be empty")
    if "\x00" in value:
        raise Invalid("a path cannot contain a NUL character")
    try:
        return _resolve(Path(value), check)
    except (OSError, RuntimeError) as error:
        raise Invalid(f"cannot resolve the path {show(value)}: {error}") from None


# --- the reference ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One key in the reference table."""

    key: str
    value: str
    default: str
    meaning: str

    def markdown(self) -> str:
        return f"| {self.key} | {self.value} | {self.default} | {self.meaning} |"


def reference(cls: type, prefix: str) -> list[Row]:
    """The keys ``cls`` declares, as rows of the reference table (``prefix``: ``[ingest]``)."""
    rows = []
    for spec in _keys(cls):
        name = f"`{spec.name}`"
        if spec.info.secret:
            name += f" or `{spec.name}_env`"
        if spec.info.was:
            name += f" (was `{spec.info.was}`{', in ms' if spec.info.was_unit == 'ms' else ''})"
        rows.append(Row(f"{prefix}{name}", _value_text(spec), _default_text(spec), spec.meaning))
    return rows


def _value_text(spec: _Key) -> str:
    t, info = spec.type, spec.info
    if info.kind:
        text = info.kind
    elif (value_kind := _kind_for(t)) is not None:
        text = value_kind.name
    elif isinstance(t, mi.EnumType | mi.LiteralType):
        text = "one of " + ", ".join(f"`{choice}`" for choice in _choices(t).split(", "))
    elif info.invalid:
        text = info.invalid.removeprefix("a valid ").removeprefix("an ").removeprefix("a ")
    else:
        text = _describe(t).removeprefix("a ").removeprefix("an ")
    if info.secret:
        text = "secret string (or the name of an environment variable holding it)"
    if info.unit:
        text += f" ({info.unit})"
    low: object = info.low if info.low is not None else getattr(t, "ge", None)
    high: object = info.high if info.high is not None else getattr(t, "le", None)
    if low is not None or high is not None:
        text += f", {_range(_num(low), _num(high))}"
    max_length = getattr(t, "max_length", None)
    if max_length is not None and not isinstance(t, mi.StrType):
        text += f", at most {max_length}"
    return text


def _num(value: object) -> object:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value


def _default_text(spec: _Key) -> str:
    if spec.required:
        return "required"
    default = spec.default
    if default is None or default == ():
        return "none"
    if isinstance(default, Duration):
        return f'`"{default}"`'
    if hasattr(default, "value") and isinstance(spec.type, mi.EnumType):
        return f'`"{default.value}"`'
    if dataclasses.is_dataclass(default) or isinstance(default, Path):
        return f'`"{default}"`'
    return f"`{_toml(default)}`"
