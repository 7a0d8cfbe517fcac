"""Configuration: frozen dataclasses validated on construction, loaded from YAML.

Precedence (highest first): CLI flags, environment variables, the YAML file, defaults. Only the CLI
applies flags and environment variables (see :func:`processor.cli.build_config`); this module knows
YAML and plain mappings. librdkafka settings pass through unchanged in ``kafka.*`` mappings, and any
setting whose name looks like a secret is masked in ``repr`` and logs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from processor.errors import ConfigError
from processor.policy.bidding import BiddingConfig
from processor.policy.safety import SafetyConstraints

T = TypeVar("T")

GUARANTEES = ("exactly_once", "at_least_once")
STATE_FORMATS = ("packed", "json")
ENSEMBLE_MODES = ("family", "horizon", "family_horizon")
_SECRET_MARKERS = ("password", "secret", "token", "key.pem", "credentials", "private")


def is_secret(name: str) -> bool:
    """True for librdkafka / registry setting names that hold secrets."""
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def mask_secrets(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``settings`` with secret values replaced by ``***``."""
    return {k: ("***" if is_secret(k) else v) for k, v in settings.items()}


class _SecretDict(dict[str, str]):
    """A dict whose repr never shows secret values."""

    def __repr__(self) -> str:
        return repr(mask_secrets(self))


def _reject_unknown(cls: type[Any], data: Mapping[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        allowed = ", ".join(sorted(names))
        msg = f"unknown setting(s) in {where}: {', '.join(unknown)}; allowed: {allowed}"
        raise ConfigError(msg)


def _build(cls: type[T], data: Any, where: str) -> T:
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        msg = f"{where} must be a mapping, got {type(data).__name__}"
        raise ConfigError(msg)
    _reject_unknown(cls, data, where)
    try:
        return cls(**data)
    except TypeError as exc:
        msg = f"invalid {where}: {exc}"
        raise ConfigError(msg) from exc


@dataclass(frozen=True)
class TopicsConfig:
    """Topic names. The changelog is ``<app_id>-state-changelog`` and is not configurable."""

    bid_requests: str = "bid-requests"
    bid_outcomes: str = "bid-outcomes"
    trade_outcomes: str = "trade-outcomes"
    control: str = "bandit-control"
    bid_decisions: str = "bid-decisions"
    ensemble_weights: str = "ensemble-weights"
    dead_letters: str = "bandit-dead-letters"

    def __post_init__(self) -> None:
        names = dataclasses.astuple(self)
        if any(not isinstance(n, str) or not n for n in names):
            msg = "topics.*: every topic name must be a non-empty string"
            raise ConfigError(msg)
        if len(set(names)) != len(names):
            msg = f"topics.*: topic names must be distinct, got {names}"
            raise ConfigError(msg)

    @property
    def inputs(self) -> tuple[str, str, str, str]:
        """The four topics the stage consumes."""
        return (self.control, self.bid_outcomes, self.trade_outcomes, self.bid_requests)


@dataclass(frozen=True)
class EnsembleConfig:
    """Exp3-IX / Hedge ensemble weighting (DESIGN §3).

    ``eta_max`` caps the anytime rate of bandit-feedback (Exp3-IX) rounds only; Hedge
    (full information) uses ``sqrt(8 ln K / t)`` uncapped. ``share`` is the fixed-share α
    (Herbster–Warmuth; Exp3-SIX for bandit feedback) that lets the weights follow a best model
    that changes: 0 (default) is off, about 1 / (trades between changes) when it is on.
    """

    mode: str = "family"
    families: tuple[str, ...] = ("lightgbm", "xgboost", "ridge", "mlp", "lstm")
    horizons: tuple[str, ...] = ("5m", "15m", "60m")
    blend_alpha: float = 0.3
    warm_start_steps: int = 500
    base_weights: Mapping[str, float] | None = None
    gamma: float | None = None
    eta: float | None = None
    eta_max: float = 0.07
    reward_range: tuple[float, float] = (-100.0, 100.0)
    uniform_mix: float = 0.0
    unknown_arms: str = "dead_letter"
    share: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", tuple(self.families))
        object.__setattr__(self, "horizons", tuple(self.horizons))
        object.__setattr__(self, "reward_range", tuple(float(x) for x in self.reward_range))
        if self.mode not in ENSEMBLE_MODES:
            msg = f"ensemble.mode must be one of {ENSEMBLE_MODES}, got {self.mode!r}"
            raise ConfigError(msg)
        if not self.families or not self.horizons:
            msg = "ensemble.families and ensemble.horizons must not be empty"
            raise ConfigError(msg)
        if not 0.0 <= self.blend_alpha <= 1.0:
            msg = f"ensemble.blend_alpha must be in [0, 1], got {self.blend_alpha}"
            raise ConfigError(msg)
        if self.warm_start_steps < 0:
            msg = "ensemble.warm_start_steps must be >= 0"
            raise ConfigError(msg)
        lo, hi = self.reward_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            msg = f"ensemble.reward_range must be finite with lo < hi, got {self.reward_range}"
            raise ConfigError(msg)
        if not 0.0 <= self.uniform_mix < 1.0:
            msg = "ensemble.uniform_mix must be in [0, 1)"
            raise ConfigError(msg)
        for name, value in (("gamma", self.gamma), ("eta", self.eta)):
            if value is not None and not value > 0:
                msg = f"ensemble.{name} must be > 0 or null (anytime tuning)"
                raise ConfigError(msg)
        if self.unknown_arms not in ("dead_letter", "add"):
            msg = "ensemble.unknown_arms must be 'dead_letter' or 'add'"
            raise ConfigError(msg)
        if not (isinstance(self.share, int | float) and 0.0 <= self.share < 1.0):
            msg = f"ensemble.share must be in [0, 1) (0 = off), got {self.share!r}"
            raise ConfigError(msg)
        if not (math.isfinite(self.eta_max) and self.eta_max > 0):
            msg = f"ensemble.eta_max must be > 0, got {self.eta_max!r}"
            raise ConfigError(msg)
        if any(":" in h or "\x00" in h for h in self.horizons):
            msg = "ensemble.horizons must not contain ':' (arm names are family:horizon)"
            raise ConfigError(msg)
        if self.base_weights is not None:
            weights = {str(k): float(v) for k, v in self.base_weights.items()}
            if any(not math.isfinite(v) or v < 0 for v in weights.values()) or not any(
                v > 0 for v in weights.values()
            ):
                msg = "ensemble.base_weights must be finite, >= 0, and not all zero"
                raise ConfigError(msg)
            object.__setattr__(self, "base_weights", weights)

    @property
    def arm_names(self) -> tuple[str, ...]:
        """Arm names for the configured mode (family_horizon arms are ``family:horizon``)."""
        if self.mode == "family":
            return self.families
        if self.mode == "horizon":
            return self.horizons
        return tuple(f"{f}:{h}" for f in self.families for h in self.horizons)


@dataclass(frozen=True)
class KafkaConfig:
    """librdkafka settings passed through unchanged.

    ``common`` goes to every client (security settings: ``security.protocol``, ``sasl.*``,
    ``ssl.*``); ``consumer``, ``producer`` and ``admin`` only to that client.
    """

    common: Mapping[str, str] = field(default_factory=dict)
    consumer: Mapping[str, str] = field(default_factory=dict)
    producer: Mapping[str, str] = field(default_factory=dict)
    admin: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("common", "consumer", "producer", "admin"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                msg = f"kafka.{name} must be a mapping of librdkafka settings"
                raise ConfigError(msg)
            object.__setattr__(self, name, _SecretDict({str(k): str(v) for k, v in value.items()}))


@dataclass(frozen=True)
class LimitsConfig:
    """Input limits; anything beyond them is dead-lettered as ``oversize``."""

    max_message_bytes: int = 65536
    max_string_length: int = 256
    max_map_entries: int = 64

    def __post_init__(self) -> None:
        if min(self.max_message_bytes, self.max_string_length, self.max_map_entries) <= 0:
            msg = "limits.* must be positive"
            raise ConfigError(msg)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
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
    window_ms: int = 3_600_000
    grace_ms: int = 300_000
    max_entries: int | None = 5_000_000
    unknown: str = "accept"
    late: str = "drop"

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            msg = f"attribution.enabled must be true or false, got {self.enabled!r}"
            raise ConfigError(msg)
        if not _is_int(self.window_ms) or self.window_ms <= 0:
            msg = f"attribution.window_ms must be a positive integer, got {self.window_ms!r}"
            raise ConfigError(msg)
        if not _is_int(self.grace_ms) or self.grace_ms < 0:
            msg = f"attribution.grace_ms must be an integer >= 0, got {self.grace_ms!r}"
            raise ConfigError(msg)
        if self.max_entries is not None and (
            not _is_int(self.max_entries) or self.max_entries <= 0
        ):
            got = self.max_entries
            msg = f"attribution.max_entries must be a positive integer or null, got {got!r}"
            raise ConfigError(msg)
        if self.unknown not in ("accept", "dead_letter"):
            msg = f"attribution.unknown must be 'accept' or 'dead_letter', got {self.unknown!r}"
            raise ConfigError(msg)
        if self.late not in ("drop", "apply"):
            msg = f"attribution.late must be 'drop' or 'apply', got {self.late!r}"
            raise ConfigError(msg)


@dataclass(frozen=True)
class AppConfig:
    """Everything one stage instance needs. See README "Configuration" for each setting."""

    app_id: str = "bandit-processor"
    bootstrap_servers: str = "127.0.0.1:9092"
    instance_id: str | None = None
    processing_guarantee: str = "exactly_once"
    commit_interval_ms: int = 100
    commit_every_events: int = 20000
    max_batch_events: int = 5000
    poll_timeout_ms: int = 5
    transaction_timeout_ms: int = 10000
    state_format: str = "packed"
    operation_timeout_s: float = 30.0
    retry_budget_s: float = 60.0
    metrics_port: int | None = 9400
    schema_registry_url: str | None = None
    schema_registry: Mapping[str, str] = field(default_factory=dict)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    bidding: BiddingConfig = field(default_factory=BiddingConfig)
    safety: SafetyConstraints = field(default_factory=SafetyConstraints)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)

    def __post_init__(self) -> None:
        if not self.app_id or any(c.isspace() for c in self.app_id):
            msg = f"app_id must be a non-empty name without spaces, got {self.app_id!r}"
            raise ConfigError(msg)
        if not self.bootstrap_servers:
            msg = "bootstrap_servers is required (--bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS)"
            raise ConfigError(msg)
        if self.processing_guarantee not in GUARANTEES:
            got = self.processing_guarantee
            msg = f"processing_guarantee must be one of {GUARANTEES}, got {got!r}"
            raise ConfigError(msg)
        if self.state_format not in STATE_FORMATS:
            got = self.state_format
            msg = f"state_format must be one of {STATE_FORMATS}, got {got!r}"
            raise ConfigError(msg)
        positive = (
            "commit_interval_ms",
            "commit_every_events",
            "max_batch_events",
            "poll_timeout_ms",
            "transaction_timeout_ms",
        )
        for name in positive:
            if int(getattr(self, name)) <= 0:
                msg = f"{name} must be > 0"
                raise ConfigError(msg)
        if self.operation_timeout_s <= 0 or self.retry_budget_s <= 0:
            msg = "operation_timeout_s and retry_budget_s must be > 0"
            raise ConfigError(msg)
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            msg = f"metrics_port must be in 0..65535 or null, got {self.metrics_port}"
            raise ConfigError(msg)
        object.__setattr__(
            self,
            "schema_registry",
            _SecretDict({str(k): str(v) for k, v in self.schema_registry.items()}),
        )

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


_SECTIONS: dict[str, type[Any]] = {
    "topics": TopicsConfig,
    "safety": SafetyConstraints,
    "ensemble": EnsembleConfig,
    "kafka": KafkaConfig,
    "limits": LimitsConfig,
    "attribution": AttributionConfig,
}


def config_from_dict(data: Mapping[str, Any]) -> AppConfig:
    """Build an :class:`AppConfig` from nested plain data (as parsed from YAML)."""
    if not isinstance(data, Mapping):
        msg = "the configuration must be a mapping at the top level"
        raise ConfigError(msg)
    _reject_unknown(AppConfig, data, "the configuration")
    values: dict[str, Any] = dict(data)
    for name, cls in _SECTIONS.items():
        if name in values:
            values[name] = _build(cls, values[name], name)
    if "bidding" in values and not isinstance(values["bidding"], BiddingConfig):
        raw = values["bidding"]
        if not isinstance(raw, Mapping):
            msg = "bidding must be a mapping"
            raise ConfigError(msg)
        values["bidding"] = BiddingConfig.from_dict(raw)
    try:
        return AppConfig(**values)
    except TypeError as exc:
        msg = f"invalid configuration: {exc}"
        raise ConfigError(msg) from exc


def load_config(path: str | Path | None) -> AppConfig:
    """Load YAML from ``path`` (``None`` gives the defaults)."""
    if path is None:
        return AppConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read config file {path}: {exc.strerror}"
        raise ConfigError(msg) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = f"config file {path} is not valid YAML: {exc}"
        raise ConfigError(msg) from exc
    return config_from_dict(data or {})
