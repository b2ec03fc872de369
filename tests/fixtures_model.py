"""Fixtures of the model stage: the tiny LTX-2.3 bundle and the tiny LTX-2.5 one."""

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TinyBundle:
    """Paths of the tiny single-file checkpoint and the tiny Gemma-3 directory."""

    checkpoint: Path
    gemma_dir: Path

    @property
    def files(self):
        """The bundle as `ltx_ray.model.files.ModelFiles` (the single file for every component)."""
        from ltx_ray.config.schema import ModelConfig
        from ltx_ray.model.files import model_files

        return model_files(ModelConfig(checkpoint=str(self.checkpoint), text_encoder=str(self.gemma_dir)))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> TinyBundle:
    """The tiny bundle, written once per test session by the same code as `scripts/make_tiny_bundle.py`."""
    from ltx_ray.model.tiny import write_tiny_bundle

    checkpoint, gemma_dir = write_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"), seed=0)
    return TinyBundle(checkpoint, gemma_dir)


@dataclass(frozen=True)
class TinyBundle25:
    """Paths of the tiny LTX-2.5 bundle's four files."""

    transformer: Path
    video_vae: Path
    audio_vae: Path
    text_encoder: Path

    @property
    def overrides(self) -> list[str]:
        """The `model.*` overrides that point a job at this bundle."""
        return [f"model.checkpoint={self.transformer}", f"model.video_vae={self.video_vae}",
                f"model.audio_vae={self.audio_vae}", f"model.text_encoder={self.text_encoder}"]

    def model_config(self, **changes):
        """A `ModelConfig` naming this bundle's files, with `changes` (field=value) made to it."""
        from ltx_ray.config.schema import ModelConfig

        return ModelConfig(**{"checkpoint": str(self.transformer), "video_vae": str(self.video_vae),
                              "audio_vae": str(self.audio_vae), "text_encoder": str(self.text_encoder), **changes})

    @property
    def files(self):
        """The bundle as `ltx_ray.model.files.ModelFiles`."""
        from ltx_ray.model.files import model_files

        return model_files(self.model_config())


@pytest.fixture(scope="session")
def tiny_bundle_25(tmp_path_factory) -> TinyBundle25:
    """The tiny LTX-2.5 bundle (split files, a packed Gemma-4), written once per test session."""
    from ltx_ray.model.tiny import write_tiny_bundle_25

    f = write_tiny_bundle_25(tmp_path_factory.mktemp("tiny-bundle-25"), seed=0)
    return TinyBundle25(f.transformer, f.video_vae, f.audio_vae, f.text_encoder)
