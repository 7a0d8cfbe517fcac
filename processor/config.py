"""Configuration: frozen, typed dataclasses (pydantic v2) validated when built, loaded from YAML.

Precedence (highest first): CLI flags, environment variables, the YAML file, defaults. Only the CLI
applies flags and environment variables (see :mod:`processor.cli.settings`); this module knows
YAML and plain mappings, so constructing :class:`AppConfig` never reads the environment. Every
invalid setting is a :class:`~processor.errors.ConfigError` with one line per bad setting, naming
it by its dotted path. librdkafka settings pass through unchanged in ``kafka.*`` mappings, and
any setting whose name looks like a secret is masked in ``repr`` and logs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from processor.config_types import (
    MODEL_CONFIG,
    FiniteFloat,
    Fraction,
    NonNegativeInt,
    Origin,
    PositiveFloat,
    PositiveInt,
    SecretDict,
    SecretMap,
    UnitInterval,
    Url,
    config_error,
    config_errors,
    is_secret,
    mask_secrets,
    mask_url,
)
from processor.errors import ConfigError
from processor.policy.bidding import BiddingConfig
from processor.policy.safety import SafetyConstraints

Guarantee = Literal["exactly_once", "at_least_once"]
StateFormat = Literal["packed", "json"]
EnsembleMode = Literal["family", "horizon", "family_horizon"]
GUARANTEES: tuple[str, ...] = get_args(Guarantee)
STATE_FORMATS: tuple[str, ...] = get_args(StateFormat)
ENSEMBLE_MODES: tuple[str, ...] = get_args(EnsembleMode)
#: The metrics port when none is set; ``bandit-processor run`` adds the instance slot to it.
DEFAULT_METRICS_PORT = 9400

# Kept importable from here (other modules and users import them from processor.config).
_SecretDict = SecretDict
__all__ = [
    "DEFAULT_METRICS_PORT",
    "AppConfig",
    "AttributionConfig",
    "EnsembleConfig",
    "KafkaConfig",
    "LimitsConfig",
    "TopicsConfig",
    "config_from_dict",
    "config_json_schema",
    "config_to_dict",
    "is_secret",
    "load_config",
    "mask_secrets",
]


def _name(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        msg = "should be a non-empty name without spaces"
        raise ValueError(msg)
    return value


def _horizons(value: tuple[str, ...]) -> tuple[str, ...]:
    if any(":" in h or "\x00" in h for h in value):
        msg = "should not contain ':' (arm names are family:horizon)"
        raise ValueError(msg)
    return value


def _base_weights(value: dict[str, float] | None) -> dict[str, float] | None:
    if value is not None and not any(v > 0 for v in value.values()):
        msg = "should not be all zero"
        raise ValueError(msg)
    return value


def _reward_range(value: tuple[float, float]) -> tuple[float, float]:
    if not value[0] < value[1]:
        msg = "should be [lo, hi] with lo < hi"
        raise ValueError(msg)
    return value


def _port(value: int | None) -> int | None:
    return None if value == -1 else value


NonEmpty = Annotated[str, Field(min_length=1)]
#: A TCP port; 0 picks a free one; -1 (or null) disables.
Port = Annotated[int, Field(ge=-1, le=65535), AfterValidator(_port)]


@config_errors("topics")
@dataclass(frozen=True, config=MODEL_CONFIG)
class TopicsConfig:
    """Topic names. The changelog is ``<app_id>-state-changelog`` and is not configurable."""

    bid_requests: NonEmpty = "bid-requests"
    bid_outcomes: NonEmpty = "bid-outcomes"
    trade_outcomes: NonEmpty = "trade-outcomes"
    control: NonEmpty = "bandit-control"
    bid_decisions: NonEmpty = "bid-decisions"
    ensemble_weights: NonEmpty = "ensemble-weights"
    dead_letters: NonEmpty = "bandit-dead-letters"

    @model_validator(mode="after")
    def _distinct(self) -> TopicsConfig:
        names = dataclasses.astuple(self)
        if len(set(names)) != len(names):
            msg = f"topic names must be distinct, got {names}"
            raise ValueError(msg)
        return self

    @property
    def inputs(self) -> tuple[str, str, str, str]:
        """The four topics the stage consumes."""
        return (self.control, self.bid_outcomes, self.trade_outcomes, self.bid_requests)


@config_errors("ensemble")
@dataclass(frozen=True, config=MODEL_CONFIG)
class EnsembleConfig:
    """Exp3-IX / Hedge ensemble weighting (DESIGN §3).

    ``eta_max`` caps the anytime rate of bandit-feedback (Exp3-IX) rounds only; Hedge
    (full information) uses ``sqrt(8 ln K / t)`` uncapped. ``share`` is the fixed-share α
    (Herbster–Warmuth; Exp3-SIX for bandit feedback) that lets the weights follow a best model
    that changes: 0 (default) is off, about 1 / (trades between changes) when it is on.
    """

    mode: EnsembleMode = "family"
    families: Annotated[tuple[NonEmpty, ...], Field(min_length=1)] = (
        "lightgbm",
        "xgboost",
        "ridge",
        "mlp",
        "lstm",
    )
    horizons: Annotated[tuple[NonEmpty, ...], Field(min_length=1), AfterValidator(_horizons)] = (
        "5m",
        "15m",
        "60m",
    )
    blend_alpha: UnitInterval = 0.3
    warm_start_steps: NonNegativeInt = 500
    base_weights: Annotated[
        dict[str, Annotated[FiniteFloat, Field(ge=0)]] | None, AfterValidator(_base_weights)
    ] = None
    gamma: PositiveFloat | None = None
    eta: PositiveFloat | None = None
    eta_max: PositiveFloat = 0.07
    reward_range: Annotated[tuple[FiniteFloat, FiniteFloat], AfterValidator(_reward_range)] = (
        -100.0,
        100.0,
    )
    uniform_mix: Fraction = 0.0
    unknown_arms: Literal["dead_letter", "add"] = "dead_letter"
    share: Fraction = 0.0

    @property
    def arm_names(self) -> tuple[str, ...]:
        """Arm names for the configured mode (family_horizon arms are ``family:horizon``)."""
        if self.mode == "family":
            return self.families
        if self.mode == "horizon":
            return self.horizons
        return tuple(f"{f}:{h}" for f in self.families for h in self.horizons)


@config_errors("kafka")
@dataclass(frozen=True, config=MODEL_CONFIG)
class KafkaConfig:
    """librdkafka settings passed through unchanged.

    ``common`` goes to every client (security settings: ``security.protocol``, ``sasl.*``,
    ``ssl.*``); ``consumer``, ``producer`` and ``admin`` only to that client. Numbers and booleans
    become strings (librdkafka takes strings); secret values are masked in ``repr``.
    """

    common: SecretMap = field(default_factory=SecretDict)
    consumer: SecretMap = field(default_factory=SecretDict)
    producer: SecretMap = field(default_factory=SecretDict)
    admin: SecretMap = field(default_factory=SecretDict)


@config_errors("limits")
@dataclass(frozen=True, config=MODEL_CONFIG)
class LimitsConfig:
    """Input limits; anything beyond them is dead-lettered as ``oversize``."""

    max_message_bytes: PositiveInt = 65536
    max_string_length: PositiveInt = 256
    max_map_entries: PositiveInt = 64


@config_errors("attribution")
@dataclass(frozen=True, config=MODEL_CONFIG)
class AttributionConfig:
    """The reward join (DESIGN §3b, README "Reward join"): each decision's reward counts once.

    ``window_ms``: an outcome counts for its decision when its event time is at most this much
    after the decision's. ``grace_ms``: how far an outcome may trail the partition's watermark
    (the largest outcome event time seen) and still be joined; the log keeps a decision for
    ``window_ms + grace_ms`` of event time. ``max_entries``: cap per input partition (oldest
    evicted first; null: none). ``unknown``: outcomes of requests this stage never decided are
    ``accept``-ed (and de-duplicated) or dead-lettered. ``late``: outcomes past the window are
    dropped or applied, counted either way. ``enabled: false`` trusts every outcome as 0.2.0 did.
    """

    enabled: bool = True
    window_ms: PositiveInt = 3_600_000
    grace_ms: NonNegativeInt = 300_000
    max_entries: PositiveInt | None = 5_000_000
    unknown: Literal["accept", "dead_letter"] = "accept"
    late: Literal["drop", "apply"] = "drop"


@config_errors("")
@dataclass(frozen=True, config=MODEL_CONFIG)
class AppConfig:
    """Everything one stage instance needs. See README "Configuration" for each setting."""

    app_id: Annotated[str, AfterValidator(_name)] = "bandit-processor"
    bootstrap_servers: NonEmpty = "127.0.0.1:9092"
    instance_id: str | None = None
    processing_guarantee: Guarantee = "exactly_once"
    commit_interval_ms: PositiveInt = 100
    commit_every_events: PositiveInt = 20000
    max_batch_events: PositiveInt = 5000
    poll_timeout_ms: PositiveInt = 5
    transaction_timeout_ms: PositiveInt = 10000
    state_format: StateFormat = "packed"
    operation_timeout_s: PositiveFloat = 30.0
    retry_budget_s: PositiveFloat = 60.0
    metrics_port: Port | None = DEFAULT_METRICS_PORT
    schema_registry_url: Url | None = None
    schema_registry: SecretMap = field(default_factory=SecretDict)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    bidding: BiddingConfig = field(default_factory=BiddingConfig)
    safety: SafetyConstraints = field(default_factory=SafetyConstraints)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)

    @property
    def exactly_once(self) -> bool:
        """True when outputs, state and offsets commit in one Kafka transaction."""
        return self.processing_guarantee == "exactly_once"

    @property
    def changelog_topic(self) -> str:
        """The compacted state changelog topic of this application."""
        return f"{self.app_id}-state-changelog"

    def replace(self, **changes: Any) -> AppConfig:
        """Copy with some top-level settings changed (validated again)."""
        return dataclasses.replace(self, **changes)


_ADAPTER: TypeAdapter[AppConfig] = TypeAdapter(AppConfig)


def config_from_dict(data: Mapping[str, Any], *, origin: Origin | None = None) -> AppConfig:
    """Build an :class:`AppConfig` from nested plain data (as parsed from YAML).

    Args:
        data: The settings.
        origin: Says where the value of a setting came from, for the error lines.

    Raises:
        ConfigError: One line per unknown or invalid setting.
    """
    if not isinstance(data, Mapping):
        msg = "the configuration must be a mapping at the top level"
        raise ConfigError(msg)
    try:
        return _ADAPTER.validate_python({str(k): v for k, v in data.items()})
    except ValidationError as exc:
        raise config_error(exc, AppConfig, origin=origin) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in the YAML file at ``path`` (empty file: ``{}``).

    Raises:
        ConfigError: The file cannot be read, is not YAML or not a mapping.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read config file {path}: {exc.strerror}"
        raise ConfigError(msg) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        msg = f"config file {path} is not valid YAML: {detail}"
        raise ConfigError(msg) from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        msg = f"config file {path} must hold a mapping of settings, got {type(data).__name__}"
        raise ConfigError(msg)
    return {str(k): v for k, v in data.items()}


def load_config(path: str | Path | None) -> AppConfig:
    """Load YAML from ``path`` (``None`` gives the defaults). The environment is not read."""
    if path is None:
        return AppConfig()
    return config_from_dict(read_yaml(path))


def config_to_dict(config: AppConfig, *, masked: bool = True) -> dict[str, Any]:
    """Plain data (JSON types) of ``config``; secret values ``***`` unless ``masked=False``.

    ``config_from_dict(config_to_dict(c, masked=False)) == c``.
    """
    data: dict[str, Any] = _ADAPTER.dump_python(config, mode="json")
    if not masked:
        return data
    if data.get("schema_registry_url"):
        data["schema_registry_url"] = mask_url(data["schema_registry_url"])
    return mask_secrets(data)


def config_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the YAML configuration file, for editors."""
    schema: dict[str, Any] = _ADAPTER.json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bandit-processor configuration"
    return schema
