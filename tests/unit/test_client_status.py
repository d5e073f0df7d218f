"""Status text read from a run's row or close becomes a ``WorkflowStatus``."""

from __future__ import annotations

import pytest

from perdure import WorkflowStatus
from perdure._client import _status


def test_every_status_text_maps_to_its_member() -> None:
    for member in WorkflowStatus:
        assert _status(member.value) is member
        assert _status(str(member)) is member


def test_an_unknown_status_names_itself() -> None:
    with pytest.raises(ValueError, match="'paused_by_hand'"):
        _status("paused_by_hand")
