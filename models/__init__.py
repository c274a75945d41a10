"""Model training (two-tower retriever, DLRM ranker) with merlin-models. Built in issue 3."""
