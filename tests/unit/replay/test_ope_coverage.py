"""Coverage of the 95% intervals on simulated logs with a known truth (a CI-sized version of
``make bench-ensemble``, which uses 300 logs per scenario)."""

from __future__ import annotations

from tests.perf.ope_coverage import coverage


def test_mild_logs_are_covered_about_95_percent() -> None:
    # 80 logs: a binomial sd of 0.024 around 0.95; the bench's 300 logs give 0.93-0.96.
    got = coverage("mild", logs=80, seed=21)
    for name, value in got["coverage"].items():
        assert 0.88 <= value <= 1.0, (name, value)
    assert got["n_boot"] == 2000


def test_extreme_logs_drop_degenerate_snips_resamples() -> None:
    # The target plays arms logged 2% of the time: now and then a resample has none of them.
    # Those resamples are dropped and counted (0.2 scored them 0, pulling intervals to 0).
    now = coverage("extreme_bernoulli", logs=40, seed=5)
    assert now["snips_dropped_per_log"] > 0.5
    # SNIPS is the estimator that holds up best here (bench, 300 logs: 0.67 vs IPS 0.52)
    assert now["coverage"]["snips"] > now["coverage"]["ips"]
