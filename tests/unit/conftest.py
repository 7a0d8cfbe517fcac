"""Unit tests never see the user's configuration variables (``BANDIT_APP_ID``, ...)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from processor.cli.settings import BOOTSTRAP_ENV, CLI_ONLY, ENV_PREFIX, NESTED_DELIMITER
from processor.config import AppConfig

_SETTINGS = {f.name for f in dataclasses.fields(AppConfig)} | set(CLI_ONLY)


def _is_setting(name: str) -> bool:
    upper = name.upper()
    if upper == BOOTSTRAP_ENV:
        return True
    if not upper.startswith(ENV_PREFIX):
        return False
    return upper[len(ENV_PREFIX) :].split(NESTED_DELIMITER)[0].lower() in _SETTINGS


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads the environment (processor.cli.settings): a shell variable such as
    # BANDIT_SAFETY__MIN_ROAS must not change what a test builds. BANDIT_KAFKA_CACHE and other
    # variables that are not settings stay.
    for name in list(os.environ):
        if _is_setting(name):
            monkeypatch.delenv(name)
