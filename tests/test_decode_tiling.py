"""Video decoding tile by tile (ltx-core's `VideoDecoder.tiled_decode`) on the tiny bundle's decoder.

Tiled and whole-clip decodes are not the same pixels: each tile's convolutions see only that tile
and overlapping tiles are blended. On the tiny bundle's random decoder, whose tiles are mostly
border at these sizes, they differ a lot (mean ~10 of 255 at 512x512), so these tests check that
the tiled path is taken and put together as ltx-core gives it, not that it matches one call.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from ltx_core.model.video_vae import SpatialTilingConfig, TemporalTilingConfig, TilingConfig

from ltx_ray.model import loader
from ltx_ray.model.vae import latents_to_video, validation_tiling


@pytest.fixture(scope="module")
def decoder(tiny_bundle):
    return loader.load_video_decoder(tiny_bundle.checkpoint).eval()


@contextmanager
def _decoder_runs(decoder):
    """The decoder's runs (one per tile) while inside: `tiled_decode` calls `forward` itself, so count `conv_in`'s."""
    runs = []
    handle = decoder.conv_in.register_forward_hook(lambda *_: runs.append(1))
    try:
        yield runs
    finally:
        handle.remove()


def _uint8(pixels: torch.Tensor) -> torch.Tensor:
    """ltx-core's decoder output `[B, 3, F, H, W]` in [-1, 1] as our frames `[B, F, H, W, 3]`."""
    return ((pixels.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1)


def test_validation_tiling_is_the_official_validations():
    tiling = validation_tiling()
    assert (tiling.spatial_config.tile_size_in_pixels, tiling.spatial_config.tile_overlap_in_pixels) == (192, 64)
    assert (tiling.temporal_config.tile_size_in_frames, tiling.temporal_config.tile_overlap_in_frames) == (48, 24)


def test_a_clip_larger_than_one_tile_is_decoded_tile_by_tile_as_ltx_core_blends_them(decoder):
    latents = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))  # 256x256 px, 9 frames
    with _decoder_runs(decoder) as runs:
        frames = latents_to_video(decoder, latents)
    # 192 px tiles overlapping by 64 px: 6 latents with a stride of 4, so 2 x 2 tiles over 8 x 8.
    assert len(runs) == 4
    with torch.inference_mode():
        tiled = torch.cat(list(decoder.tiled_decode(latents, validation_tiling())), dim=2)
        whole = decoder(latents)
    assert frames.shape == (1, 9, 256, 256, 3) and frames.dtype == torch.uint8
    assert torch.equal(frames, _uint8(tiled))
    assert not torch.equal(frames, _uint8(whole))


def test_temporal_tiles_come_back_in_frame_order(decoder):
    latents = torch.randn(1, 16, 5, 2, 2, generator=torch.Generator().manual_seed(1))  # 33 frames
    tiling = TilingConfig(temporal_config=TemporalTilingConfig(tile_size_in_frames=16, tile_overlap_in_frames=8))
    with _decoder_runs(decoder) as runs:
        frames = latents_to_video(decoder, latents, tiling=tiling)
    assert len(runs) > 1
    with torch.inference_mode():
        chunks = list(decoder.tiled_decode(latents, tiling))
    assert len(chunks) > 1
    assert frames.shape == (1, 33, 64, 64, 3)
    assert torch.equal(frames, _uint8(torch.cat(chunks, dim=2)))


def test_a_clip_within_one_tile_is_decoded_in_one_call(decoder):
    latents = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(2))  # 192 px wide: one tile
    with _decoder_runs(decoder) as runs:
        frames = latents_to_video(decoder, latents)
    assert len(runs) == 1
    with torch.inference_mode():
        assert torch.equal(frames, _uint8(decoder(latents)))


def test_an_empty_tiling_config_decodes_in_one_call(decoder):
    latents = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    with _decoder_runs(decoder) as runs:
        frames = latents_to_video(decoder, latents, tiling=TilingConfig())
    assert len(runs) == 1
    with torch.inference_mode():
        assert torch.equal(frames, _uint8(decoder(latents)))


def test_a_wide_clip_is_tiled_when_its_longer_side_exceeds_a_tile(decoder):
    """256x64 px: the width is cut in two 192 px tiles; the 64 px height alone would fit in one."""
    latents = torch.randn(1, 16, 2, 2, 8, generator=torch.Generator().manual_seed(4))
    with _decoder_runs(decoder) as runs:
        frames = latents_to_video(decoder, latents, tiling=TilingConfig(spatial_config=SpatialTilingConfig(192, 64)))
    assert len(runs) == 2
    assert frames.shape == (1, 9, 64, 256, 3)
