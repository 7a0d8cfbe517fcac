"""``bandit-processor replay`` and ``export`` (implemented by the replay issue)."""

from __future__ import annotations

import argparse

from processor.config import AppConfig
from processor.errors import ProcessorError


def cmd_replay(config: AppConfig, args: argparse.Namespace) -> int:
    """Replay a time range through ``config`` and write a report."""
    msg = "replay is not implemented yet"
    raise ProcessorError(msg)


def cmd_export(config: AppConfig, args: argparse.Namespace) -> int:
    """Export topic ranges to an Avro container file."""
    msg = "export is not implemented yet"
    raise ProcessorError(msg)
