"""Fixtures of the replay tests."""

from __future__ import annotations

import pytest

from tests.unit.replay.closed_loop import Loop, closed_loop


@pytest.fixture(scope="session")
def loop() -> Loop:
    """One closed-loop run shared by the tests (they never modify it)."""
    return closed_loop()
