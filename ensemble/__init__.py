"""The retrieve -> filter -> rank serving graph (merlin-systems operators). Built in issue 4."""
