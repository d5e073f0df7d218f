"""Event types are plain strings: what the history stores, and cheap on the hot path.

An enum's members would be ``str`` subclasses: ``sqlite3`` binds those by its slow
adaptation path, and in Python 3.11 each ``EventType.X`` of an enum goes through its
metaclass's ``__getattr__`` hook (session 14's callgrind counts: ~10 a step).
"""

from __future__ import annotations

from perdure._history import COMMAND_EVENTS, TERMINAL_EVENTS, EventType


def _members() -> dict[str, object]:
    return {name: value for name, value in vars(EventType).items() if name.isupper()}


def test_every_event_type_is_an_exact_str_named_after_its_text() -> None:
    members = _members()
    assert len(members) == 23
    for name, value in members.items():
        assert type(value) is str, name
        assert value == name.lower()


def test_command_and_terminal_events_are_event_types() -> None:
    values = set(_members().values())
    assert values >= COMMAND_EVENTS
    assert values >= TERMINAL_EVENTS
