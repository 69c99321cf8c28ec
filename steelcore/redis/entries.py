"""Decoding stream entries as redis-py returns them (bytes unless the client decodes responses)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def text(value: bytes | str) -> str:
    """A reply value as text; bytes that are not UTF-8 are replaced, not raised on."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def decode_fields(fields: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in fields.items()}


def decode_entries(raw: Iterable[tuple[Any, Mapping[Any, Any]]]) -> list[tuple[str, dict[str, str]]]:
    """XRANGE / XREVRANGE replies as (entry id, fields), in the reply's order."""
    return [(text(entry_id), decode_fields(fields)) for entry_id, fields in raw]


def newest_entries(client: Any, stream: str, count: int) -> list[tuple[str, dict[str, str]]]:
    """Up to ``count`` entries, newest first (XREVRANGE: the one read the dashboard's user may make)."""
    return decode_entries(client.xrevrange(stream, count=count))


def all_entries(client: Any, stream: str) -> list[tuple[str, dict[str, str]]]:
    """Every entry of ``stream``, oldest first."""
    return decode_entries(client.xrange(stream))
