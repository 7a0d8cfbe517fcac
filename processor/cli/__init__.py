"""The ``bandit-processor`` command: every subcommand lives here.

* :mod:`~processor.cli.main` — the parser, ``--help``, exit codes, and dispatch;
* :mod:`~processor.cli.settings` — where flags, environment variables and ``--config`` YAML
  become one :class:`~processor.config.AppConfig` (pydantic-settings);
* :mod:`~processor.cli.commands` — ``run``, ``topics create``, ``state show``, ``config``;
* :mod:`~processor.cli.replay` — ``replay`` (backtests) and ``export``;
* :mod:`~processor.cli.simulate` — ``simulate``: the closed-loop market against a live stage;
* :mod:`~processor.cli.demo` — ``python -m processor.cli.demo`` (``make demo``).

Subcommands import their modules lazily, so ``--help`` stays fast.
"""

from __future__ import annotations

from processor.cli.main import main

__all__ = ["main"]
