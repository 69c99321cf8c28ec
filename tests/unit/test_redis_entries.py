"""steelcore.redis.entries: the one decoder of stream entries (alarm stream, inspection feed, demo, bench)."""

from __future__ import annotations

from steelcore.redis.entries import decode_entries, text


def test_entries_decode_bytes_and_pass_text_through() -> None:
    raw = [(b"1-0", {b"camera": b"L1/cam2", b"state": b"raised"}), ("2-0", {"state": "cleared"})]
    assert decode_entries(raw) == [
        ("1-0", {"camera": "L1/cam2", "state": "raised"}),
        ("2-0", {"state": "cleared"}),
    ]


def test_bytes_that_are_not_utf8_are_replaced_not_raised_on() -> None:
    assert text(b"\xff ok") == "\ufffd ok"
