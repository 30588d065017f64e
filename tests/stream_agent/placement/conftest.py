"""The end-to-end fixtures (tiny model, clips) for the placement tests."""

from tests.stream_agent.e2e.conftest import (  # noqa: F401
    e2e_clips,
    long_clip,
    shared_clip,
    short_clip,
    tiny_llava,
)
