"""Run and workflow ids: version-4 UUIDs as text, each one new."""

from __future__ import annotations

import uuid

from perdure._ids import random_uuid


def test_random_uuid_is_a_version_4_uuid_as_str_uuid4_writes_it() -> None:
    for _ in range(2000):
        text = random_uuid()
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lowercase, hyphenated, 36 characters


def test_random_uuids_do_not_repeat() -> None:
    ids = [random_uuid() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    # every hex digit of the random part varies (none stuck, e.g. the variant's)
    for position in (0, 9, 15, 19, 35):
        assert len({text[position] for text in ids}) > 3
    assert {text[19] for text in ids} == set("89ab")
