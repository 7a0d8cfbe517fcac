"""The 0.2 bidding policy, kept as the baseline of ``make bench-policy``.

Verbatim copies of ``processor/policy/{bidding,safety,monitor}.py`` at commit 65714dd (0.2.0):
sign-of-profit Beta-Bernoulli Thompson sampling (``success = reward > 0``), the EWMA monitor,
emergency after ``safety_violation_limit`` consecutive violations, and a CPA bid cap of
``max_cpa_multiplier × target_cpa``. Only the imports between the three files were changed.
The stage never imports this package.
"""
