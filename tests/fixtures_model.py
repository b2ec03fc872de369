"""Fixtures of the model stage: the tiny LTX-2.3 bundle."""

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TinyBundle:
    """Paths of the tiny single-file checkpoint and the tiny Gemma-3 directory."""

    checkpoint: Path
    gemma_dir: Path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> TinyBundle:
    """The tiny bundle, written once per test session by the same code as `scripts/make_tiny_bundle.py`."""
    from ltx_ray.model.tiny import write_tiny_bundle

    checkpoint, gemma_dir = write_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"), seed=0)
    return TinyBundle(checkpoint, gemma_dir)
