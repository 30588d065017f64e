"""Fixtures shared by the whole test suite.

``tiny_model_dir(family)`` builds a tiny random checkpoint of a model family once per test run
(cached in a session temp folder) and returns its folder; tests load it with
``stream_agent.models.load_model`` exactly like a real model. The model runtime (torch,
transformers) is imported only when a test asks for a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

TINY_MODEL_SEED = 0


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: ``tiny_model_dir("llava_onevision") -> Path`` of a saved tiny checkpoint."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            from stream_agent.models.testing import make_test_model

            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            built[family] = make_test_model(family, folder, seed=TINY_MODEL_SEED, overwrite=True)
        return built[family]

    return get
