"""Operator control commands (bandit-control topic): validated, applied, audited.

A command that cannot be applied returns a reason and changes nothing; the stage dead-letters it.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from processor.errors import StateError

if TYPE_CHECKING:
    from processor.engine.core import PartitionEngine

logger = logging.getLogger(__name__)
audit = logging.getLogger("processor.audit")

_CAMPAIGN_COMMANDS = {"add_arm", "remove_arm", "set_emergency", "clear_emergency", "reset"}
_ENSEMBLE_COMMANDS = {"add_arm", "remove_arm", "set_base_weights", "reset"}
_CREATES_KEY = {"add_arm", "set_emergency", "set_base_weights"}


def apply_control(engine: PartitionEngine, cmd: dict[str, Any]) -> str | None:
    """Apply one ControlCommand record; return ``None`` or the reason it was rejected."""
    target, action, key = cmd["target"], cmd["command"], cmd["key"]
    arm = cmd.get("arm")
    allowed = _CAMPAIGN_COMMANDS if target == "campaign" else _ENSEMBLE_COMMANDS
    if action not in allowed:
        return f"{action} does not apply to a {target}"
    if action in ("add_arm", "remove_arm") and not arm:
        return f"{action} needs an arm"
    if target == "campaign":
        reason = _campaign(engine, action, key, arm)
    else:
        reason = _ensemble(engine, action, key, arm, cmd.get("weights"))
    if reason is None:
        audit.info(
            "control applied: %s %s %s arm=%s by=%s reason=%s id=%s",
            target,
            key,
            action,
            arm,
            cmd.get("issued_by", ""),
            cmd.get("reason", ""),
            cmd["command_id"],
        )
    return reason


def _campaign(engine: PartitionEngine, action: str, key: str, arm: str | None) -> str | None:
    state = engine.campaigns
    exists = state.thompson.row_of(key) is not None
    if not exists and action not in _CREATES_KEY:
        return f"unknown campaign {key!r}: no state to {action}"
    try:
        if action == "add_arm":
            assert arm is not None
            if arm not in engine.config.bidding.arms:
                known = ", ".join(engine.config.bidding.arms)
                return f"arm {arm!r} has no bid/budget multipliers in bidding.arms ({known})"
            state.rows([key])
            state.thompson.add_arm(arm, key=key)
        elif action == "remove_arm":
            assert arm is not None
            if arm not in state.thompson.arm_names:
                return f"unknown arm {arm!r}"
            state.thompson.remove_arm(arm, key=key)
        elif action == "set_emergency":
            state.rows([key])
            state.set_emergency(key, True)
        elif action == "clear_emergency":
            state.set_emergency(key, False)
        elif action == "reset":
            state.reset_key(key)
    except StateError as exc:
        return str(exc)
    engine.dirty_campaigns.add(key)
    return None


def _ensemble(
    engine: PartitionEngine, action: str, key: str, arm: str | None, weights: Any
) -> str | None:
    table = engine.ensembles
    if not table.has_key(key) and action not in _CREATES_KEY:
        return f"unknown ensemble {key!r}: no state to {action}"
    try:
        if action == "add_arm":
            assert arm is not None
            table.add_arm(key, arm)
        elif action == "remove_arm":
            assert arm is not None
            if arm not in table.bandit.arm_names:
                return f"unknown arm {arm!r}"
            table.remove_arm(key, arm)
        elif action == "set_base_weights":
            if not weights:
                return "set_base_weights needs weights"
            if any(not math.isfinite(v) or v < 0 for v in weights.values()):
                return "base weights must be finite and >= 0"
            if not any(v > 0 for v in weights.values()):
                return "base weights must not all be zero"
            unknown = sorted(set(weights) - set(table.bandit.arm_names))
            if unknown:
                return f"base weights name unknown arm(s): {', '.join(unknown)}"
            table.set_base_weights(key, weights)
        elif action == "reset":
            table.reset(key)
    except StateError as exc:
        return str(exc)
    engine.dirty_ensembles.add(key)
    return None
