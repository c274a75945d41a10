"""NVTabular workflows: history features, the fitted user/item/context graph, negatives.

The fitted workflow is saved with the preprocessing output; its ``user_features`` and
``item_features`` sub-workflows are what serving applies, so training and serving share
one transformation.
"""

USER_SUBGRAPH = "user_features"
ITEM_SUBGRAPH = "item_features"
CONTEXT_SUBGRAPH = "context_features"
TARGET = "purchased"
TIME = "timestamp"  # passed through as unix seconds (tagged TIME), e.g. for validation cut-offs
# Categorify's reserved indices (merlin 23.08): 0 padding, 1 null, 2 out of vocabulary.
PAD_INDEX, NULL_INDEX, OOV_INDEX = 0, 1, 2
