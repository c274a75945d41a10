"""Serving operators (merlin-systems' operator contract): user features -> retrieve -> filter -> rank -> order.

Composed NVTabular-style, ``request >> UserFeatures(...) >> RetrieveCandidates(...) >> ...``,
into a ``merlin.systems.dag.Ensemble`` by :mod:`ensemble.build`. Every operator works on a
whole batch of users: candidate columns are ``(users, width)`` arrays, ``-1``-padded.
"""

from ensemble.ops.features import UserFeatures
from ensemble.ops.filter import FilterCandidates
from ensemble.ops.order import OrderItems
from ensemble.ops.rank import RankCandidates
from ensemble.ops.retrieve import RetrieveCandidates

__all__ = ["UserFeatures", "RetrieveCandidates", "FilterCandidates", "RankCandidates", "OrderItems"]
