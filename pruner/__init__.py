"""pruner package."""
