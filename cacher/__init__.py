"""cacher package."""
