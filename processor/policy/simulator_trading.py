"""Trading side of the market simulator: hidden P&L of the trading models, as TradeOutcome dicts.

Models are families × horizons with hidden normal P&L distributions in basis points (under the
``"regime_switch"`` scenario the model means are reversed at ``switch_ms``). Trades are emitted
with bandit (one arm and its propensity), full-information (every arm's reward, or with
``report_prob`` only the models that report that trade) or contribution (family shares)
feedback. :meth:`TradingMarket.set_trading_truth` replaces the hidden means and spreads — e.g. a
steady edge for one model, or a best model that changes at a given time (non-stationary case).

:class:`TradingMarket` is a mixin of :class:`processor.policy.simulator.MarketSimulator`, which
draws the hidden parameters; import the simulator from there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.errors import ConfigError

F64 = npt.NDArray[np.float64]

DEFAULT_FAMILIES = ("lightgbm", "xgboost", "ridge", "mlp", "lstm")
DEFAULT_HORIZONS = ("5m", "15m", "60m")
FEEDBACK_KINDS = ("bandit", "full", "contributions")
ARM_MODES = ("family", "horizon", "family_horizon")


class TradingMarket:
    """Trading-model methods of :class:`~processor.policy.simulator.MarketSimulator`.

    The attributes below are set by ``MarketSimulator.__init__`` (from its seed) and read here.
    """

    seed: int
    scenario: str
    switch_ms: int
    families: tuple[str, ...]
    horizons: tuple[str, ...]
    model_arms: tuple[str, ...]
    model_mean_bps: F64
    model_sd_bps: F64
    _trade_counter: int
    _trade_switch: tuple[int, F64] | None = None  # (time, means from then on)

    def set_trading_truth(
        self,
        mean_bps: Mapping[str, float],
        sd_bps: float = 30.0,
        *,
        switch_ms: int | None = None,
        mean_after_bps: Mapping[str, float] | None = None,
    ) -> None:
        """Set the hidden P&L of the models (``family:horizon``, or a family for all of its
        horizons); models not named get 0 bps. With ``switch_ms`` the means become
        ``mean_after_bps`` at that event time (a best model that changes mid-run).

        Raises:
            ConfigError: an unknown model or family, a spread not > 0, or a switch without means.
        """
        if not sd_bps > 0:
            msg = f"sd_bps must be > 0, got {sd_bps}"
            raise ConfigError(msg)
        self.model_mean_bps = self._means_of(mean_bps)
        self.model_sd_bps = np.full(len(self.model_arms), float(sd_bps))
        if switch_ms is None:
            self._trade_switch = None
            return
        if mean_after_bps is None:
            msg = "switch_ms needs mean_after_bps"
            raise ConfigError(msg)
        self._trade_switch = (int(switch_ms), self._means_of(mean_after_bps))

    def _means_of(self, means: Mapping[str, float]) -> F64:
        out = np.zeros(len(self.model_arms))
        fam = [a.split(":")[0] for a in self.model_arms]
        for name, value in means.items():
            hit = [i for i, a in enumerate(self.model_arms) if name in (a, fam[i])]
            if not hit:
                msg = f"unknown model or family {name!r}; models: {', '.join(self.model_arms)}"
                raise ConfigError(msg)
            out[hit] = float(value)
        return out

    def trade_arms(self, arm_mode: str = "family_horizon") -> tuple[str, ...]:
        """Arm names of the trading bandit in ``arm_mode``."""
        if arm_mode == "family":
            return self.families
        if arm_mode == "horizon":
            return self.horizons
        if arm_mode == "family_horizon":
            return self.model_arms
        msg = f"arm_mode must be one of {ARM_MODES}, got {arm_mode!r}"
        raise ConfigError(msg)

    def trade_means(self, arm_mode: str = "family_horizon", at_ms: int = 0) -> dict[str, float]:
        """Hidden mean net P&L (bps) per arm; families / horizons average their models."""
        mu = self._model_means(at_ms)
        fam = np.array([a.split(":")[0] for a in self.model_arms])
        hor = np.array([a.split(":")[1] for a in self.model_arms])
        if arm_mode == "family":
            return {f: float(mu[fam == f].mean()) for f in self.families}
        if arm_mode == "horizon":
            return {h: float(mu[hor == h].mean()) for h in self.horizons}
        return {a: float(m) for a, m in zip(self.model_arms, mu, strict=True)}

    def _model_means(self, at_ms: int) -> F64:
        if self._trade_switch is not None:
            switch_ms, after = self._trade_switch
            return after if at_ms >= switch_ms else self.model_mean_bps
        if self.scenario == "regime_switch" and at_ms >= self.switch_ms:
            return self.model_mean_bps[::-1].copy()
        return self.model_mean_bps

    def trade_outcomes(
        self,
        n: int,
        start_ms: int = 0,
        rate_per_s: float = 10.0,
        *,
        feedback: str = "bandit",
        arm_mode: str = "family_horizon",
        probabilities: Mapping[str, float] | Sequence[float] | None = None,
        ensemble_id: str = "ens-0",
        report_prob: Mapping[str, float] | None = None,
    ) -> list[dict[str, Any]]:
        """Generate ``n`` TradeOutcome dicts.

        Args:
            n: Number of trades.
            start_ms: First event time.
            rate_per_s: Trades per second.
            feedback: ``"bandit"`` (arm + propensity drawn from ``probabilities``), ``"full"``
                (``model_rewards`` for every arm) or ``"contributions"`` (family shares).
            arm_mode: ``"family"``, ``"horizon"`` or ``"family_horizon"`` (``"family:horizon"``).
            probabilities: Arm probabilities (mapping or sequence in :meth:`trade_arms` order);
                uniform by default.
            ensemble_id: Ensemble id of every trade.
            report_prob: Full information only: the probability that an arm reports a trade
                (arm name → probability, 1 for arms not named). Partial reports; when no arm
                reports, the arm most likely to report does (a trade needs one report).
        """
        if feedback not in FEEDBACK_KINDS:
            msg = f"feedback must be one of {FEEDBACK_KINDS}, got {feedback!r}"
            raise ConfigError(msg)
        arms = self.trade_arms(arm_mode)
        p = self._probs(arms, probabilities)
        unknown = set(report_prob or {}) - set(arms)
        if unknown:
            msg = f"report_prob names unknown arms {sorted(unknown)}; arms: {', '.join(arms)}"
            raise ConfigError(msg)
        reports = np.array([float((report_prob or {}).get(a, 1.0)) for a in arms])
        if np.any((reports < 0) | (reports > 1)) or reports.max() <= 0:
            msg = "report_prob must be in [0, 1], and some arm must report"
            raise ConfigError(msg)
        rng = np.random.default_rng([self.seed, 3, self._trade_counter])
        times = start_ms + (np.arange(n) * (1000.0 / rate_per_s)).astype(np.int64)
        out = []
        for j in range(n):
            t = int(times[j])
            mu = self._model_means(t)
            draws = rng.normal(mu, self.model_sd_bps)
            arm_r = self._arm_rewards(draws, arm_mode)
            rec: dict[str, Any] = {"family": None, "arm": None, "propensity": None}
            rec["model_rewards"] = rec["model_contributions"] = None
            horizon = str(rng.choice(np.array(self.horizons)))
            if feedback == "bandit":
                a = int(rng.choice(len(arms), p=p))
                net = arm_r[arms[a]]
                rec.update(arm=arms[a], propensity=float(p[a]))
                if arm_mode != "horizon":
                    rec["family"] = arms[a].split(":")[0]
                if arm_mode != "family":
                    horizon = arms[a].split(":")[-1]
            elif feedback == "full":
                net = float(sum(p[i] * arm_r[a] for i, a in enumerate(arms)))
                if report_prob is not None:
                    told = rng.random(len(arms)) < reports
                    told[int(np.argmax(reports))] |= not told.any()
                    arm_r = {a: r for a, r, t in zip(arms, arm_r.values(), told, strict=True) if t}
                rec["model_rewards"] = arm_r
            else:
                fam_r = self._arm_rewards(draws, "family")
                fam_p = self._family_shares(arms, p)
                rec["model_contributions"] = fam_p
                net = float(sum(fam_p[f] * fam_r[f] for f in self.families))
            out.append(self._trade_record(j, t, horizon, net, rng, ensemble_id, rec))
        self._trade_counter += n
        return out

    def _probs(
        self, arms: Sequence[str], probabilities: Mapping[str, float] | Sequence[float] | None
    ) -> F64:
        if probabilities is None:
            return np.full(len(arms), 1.0 / len(arms))
        if isinstance(probabilities, Mapping):
            p = np.array([float(probabilities.get(a, 0.0)) for a in arms])
        else:
            p = np.asarray(probabilities, dtype=np.float64)
        if p.shape != (len(arms),) or np.any(p < 0) or p.sum() <= 0:
            msg = "probabilities must be non-negative, one per arm, not all zero"
            raise ConfigError(msg)
        return np.asarray(p / p.sum(), dtype=np.float64)

    def _arm_rewards(self, draws: F64, arm_mode: str) -> dict[str, float]:
        if arm_mode == "family_horizon":
            return {a: float(r) for a, r in zip(self.model_arms, draws, strict=True)}
        idx = 0 if arm_mode == "family" else 1
        names = self.families if arm_mode == "family" else self.horizons
        parts = [a.split(":")[idx] for a in self.model_arms]
        return {
            nm: float(np.mean([d for d, pt in zip(draws, parts, strict=True) if pt == nm]))
            for nm in names
        }

    def _family_shares(self, arms: Sequence[str], p: F64) -> dict[str, float]:
        shares = dict.fromkeys(self.families, 0.0)
        for a, pa in zip(arms, p, strict=True):
            if a.split(":")[0] in shares:
                shares[a.split(":")[0]] += float(pa)
        total = sum(shares.values()) or 1.0
        if total == 0 or all(v == 0 for v in shares.values()):
            return dict.fromkeys(self.families, 1.0 / len(self.families))
        return {f: v / total for f, v in shares.items()}

    def _trade_record(
        self,
        j: int,
        t: int,
        horizon: str,
        net_bps: float,
        rng: np.random.Generator,
        ensemble_id: str,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        side = 1 if rng.random() < 0.5 else -1
        entry = float(rng.uniform(20.0, 500.0))
        qty = float(rng.integers(1, 200))
        notional = entry * qty
        fees = notional * 0.5e-4
        slippage = notional * float(rng.uniform(0.0, 1.0e-4))
        # Choose the exit so that the net P&L in bps is exactly net_bps.
        exit_price = entry + side * (net_bps / 1e4 * notional + fees + slippage) / qty
        return {
            "trade_id": f"trd-{self.seed}-{self._trade_counter + j}",
            "ensemble_id": ensemble_id,
            "symbol": str(rng.choice(np.array(["AAPL", "MSFT", "SPY", "NVDA", "EURUSD"]))),
            "horizon": horizon,
            "side": side,
            "entry_price": entry,
            "exit_price": float(exit_price),
            "quantity": qty,
            "fees": float(fees),
            "slippage": float(slippage),
            "event_time": t,
            **extra,
        }
