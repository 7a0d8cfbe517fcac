"""Where the command's settings come from: flags > environment variables > YAML file > defaults.

Only the CLI resolves these sources (:func:`resolve`); library code and tests build
:class:`~processor.config.AppConfig` from explicit values and never read the environment.

Environment variables are read by pydantic-settings. The rule: a top-level setting ``name`` is
``BANDIT_NAME`` (``BANDIT_METRICS_PORT``, ``BANDIT_APP_ID``); a setting inside a section is
``BANDIT_SECTION__NAME`` with a double underscore (``BANDIT_SAFETY__MAX_CPA_MULTIPLIER``,
``BANDIT_ATTRIBUTION__WINDOW_MS``); lists and mappings are JSON
(``BANDIT_SAFETY__BLACKLISTED_AUDIENCES='["minors"]'``, ``BANDIT_KAFKA__COMMON='{"sasl.username":
"svc"}'``); ``null`` is null; names are case-insensitive and empty values are ignored.
``bootstrap_servers`` also reads ``KAFKA_BOOTSTRAP_SERVERS``. A ``BANDIT_`` variable that names
no top-level setting is not ours (``BANDIT_LOCK_DIR``, ``BANDIT_SCHEMA_DIR``) and is ignored; an
unknown name inside a section (``BANDIT_SAFETY__TYPO``) is an error like any unknown setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, Field, create_model
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from processor.config import AppConfig, config_from_dict, read_yaml

ENV_PREFIX = "BANDIT_"
NESTED_DELIMITER = "__"
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"

#: The variables ``--help`` names (every other setting follows the rule above).
ENV = {
    "bootstrap_servers": BOOTSTRAP_ENV,
    "app_id": "BANDIT_APP_ID",
    "instance_id": "BANDIT_INSTANCE_ID",
    "config": "BANDIT_CONFIG",
    "metrics_port": "BANDIT_METRICS_PORT",
    "processing_guarantee": "BANDIT_PROCESSING_GUARANTEE",
    "schema_registry_url": "BANDIT_SCHEMA_REGISTRY_URL",
    "log_level": "BANDIT_LOG_LEVEL",
    "log_format": "BANDIT_LOG_FORMAT",
}
#: Settings of the command itself, not of the stage (no YAML counterpart).
CLI_ONLY = ("config", "log_level", "log_format")


class _EnvBase(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        case_sensitive=False,
        env_ignore_empty=True,
        env_parse_none_str="null",
        validate_by_name=True,
    )


# pydantic dataclasses carry their fields here (not visible to mypy).
_FIELDS: dict[str, FieldInfo] = AppConfig.__pydantic_fields__  # type: ignore[attr-defined]


def _env_model() -> type[BaseSettings]:
    # The same fields as AppConfig (so nested sections and JSON values are recognised) plus the
    # command's own; every default None: only what the environment sets comes back.
    specs: dict[str, Any] = {}
    for name, info in _FIELDS.items():
        alias = (
            AliasChoices(f"{ENV_PREFIX}{name.upper()}", BOOTSTRAP_ENV)
            if name == "bootstrap_servers"
            else None
        )
        specs[name] = (info.annotation, Field(default=None, validation_alias=alias))
    for name in CLI_ONLY:
        specs[name] = (str | None, None)
    model: type[BaseSettings] = create_model("EnvironmentSettings", __base__=_EnvBase, **specs)
    return model


_ENV_MODEL = _env_model()


def environment_settings() -> dict[str, Any]:
    """The settings the environment gives (nested, unvalidated), read by pydantic-settings."""
    values = dict(EnvSettingsSource(_ENV_MODEL)())
    for key in list(values):
        if key.upper() == f"{ENV_PREFIX}BOOTSTRAP_SERVERS":
            values["bootstrap_servers"] = values.pop(key)
    return values


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _leaves(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for key, value in data.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and value:
            paths.extend(_leaves(value, path))
        else:
            paths.append(path)
    return paths


def _env_origins(environ: Mapping[str, str], env: Mapping[str, Any]) -> dict[tuple[str, ...], str]:
    """Setting path → ``from VARIABLE`` for the variables that gave ``env``."""
    out: dict[tuple[str, ...], str] = {}
    for key, value in environ.items():
        upper = key.upper()
        if not value:
            continue
        if upper == BOOTSTRAP_ENV:
            out.setdefault(("bootstrap_servers",), f"from {key}")  # BANDIT_... wins over it
        elif upper.startswith(ENV_PREFIX):
            path = tuple(upper[len(ENV_PREFIX) :].lower().split(NESTED_DELIMITER))
            if path[0] in env:
                out[path] = f"from {key}"
    return out


@dataclass(frozen=True)
class Resolved:
    """The effective configuration and where its settings came from.

    Attributes:
        config: The validated configuration.
        explicit: Top-level settings given by a flag, the environment or the YAML file (the rest
            are defaults); ``run`` lets ``metrics_port`` follow the instance slot only when it is
            not explicit.
        config_path: The YAML file read, if any.
        log_level: ``--log-level`` or ``BANDIT_LOG_LEVEL``, if given.
        log_format: ``--log-format`` or ``BANDIT_LOG_FORMAT``, if given.
    """

    config: AppConfig
    explicit: frozenset[str]
    config_path: str | None = None
    log_level: str | None = None
    log_format: str | None = None


def command_settings() -> dict[str, str]:
    """``config``, ``log_level`` and ``log_format`` from the environment (those that are set)."""
    env = environment_settings()
    return {name: str(env[name]) for name in CLI_ONLY if env.get(name) is not None}


def resolve(flags: Mapping[str, Any], config_path: str | None = None) -> Resolved:
    """Merge defaults < YAML file < environment < flags and validate once.

    Args:
        flags: Settings given as command-line flags (top-level names; ``None`` values are
            "not given").
        config_path: ``--config``; when ``None``, ``BANDIT_CONFIG`` is used if set.

    Raises:
        ConfigError: One line per bad setting, each naming where the value came from.
    """
    env = environment_settings()
    cli = {name: env.pop(name) for name in CLI_ONLY if name in env}
    path = config_path or cli.get("config")
    yaml_data = read_yaml(path) if path else {}
    given = {k: v for k, v in flags.items() if v is not None}
    origin: dict[tuple[str, ...], str] = {}
    for leaf in _leaves(yaml_data):
        origin[leaf] = f"in {path}"
    origin.update(_env_origins(os.environ, env))
    for name in given:
        origin[(name,)] = f"from --{name.replace('_', '-')}"

    def where(loc: Sequence[str]) -> str | None:
        for n in range(len(loc), 0, -1):
            if tuple(loc[:n]) in origin:
                return origin[tuple(loc[:n])]
        return None

    merged = _deep_merge(_deep_merge(yaml_data, env), given)
    config = config_from_dict(merged, origin=where)
    return Resolved(
        config=config,
        explicit=frozenset(merged),
        config_path=path,
        log_level=cli.get("log_level"),
        log_format=cli.get("log_format"),
    )
