"""Notification gating: the last stage after the funnel picks an item, deciding whether to push it.

- :mod:`funnel.notify.simulator`: users from the synthetic generator (their true tastes) receiving
  at most one push a day; opens, fatigue, visits, disabling and churn with known ground truth.
- :mod:`funnel.notify.history`: what production can observe about a user (recent pushes, opens,
  active days), the features every policy and model reads.
- :mod:`funnel.notify.response`: user-response models (open, disable, active day) fitted on an
  exploration log.
- :mod:`funnel.notify.policies`: ``always``, ``threshold``, ``cap``, ``random`` (exploration) and
  ``model`` (planning over a horizon of days with the response models).
- :mod:`funnel.notify.decision_log`: decisions and outcomes in parquet, the same format from the
  simulator and from ``funnel notify decide``.
- :mod:`funnel.notify.evaluation`: off-policy estimates of every policy from an exploration log,
  and their simulated truth.
"""
