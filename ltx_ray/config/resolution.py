"""The resolution buckets of SPEC-endpoint.md and the frame-count arithmetic.

This is the only copy of the table: data fitting, validation sampling and the
config rules all ask it.
"""

from __future__ import annotations

# (resolution, aspect_ratio) -> (width, height) in pixels.
RESOLUTION_BUCKETS: dict[tuple[str, str], tuple[int, int]] = {
    ("low", "16:9"): (512, 288),
    ("low", "1:1"): (512, 512),
    ("low", "9:16"): (288, 512),
    ("medium", "16:9"): (768, 448),
    ("medium", "1:1"): (768, 768),
    ("medium", "9:16"): (448, 768),
    ("high", "16:9"): (960, 544),
    ("high", "1:1"): (960, 960),
    ("high", "9:16"): (544, 960),
}

# The video VAE compresses 32x in space and 8x in time (plus the first frame).
SPATIAL_COMPRESSION = 32
TEMPORAL_COMPRESSION = 8


def bucket_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """Width and height of a (resolution, aspect_ratio) bucket."""
    return RESOLUTION_BUCKETS[(resolution, aspect_ratio)]


def snap_frames(frames: int) -> int:
    """The largest valid frame count (8k+1) not above `frames`."""
    return ((frames - 1) // TEMPORAL_COMPRESSION) * TEMPORAL_COMPRESSION + 1


def reference_size(width: int, height: int, downscale_factor: int) -> tuple[int, int]:
    """Pixel size of the reference video after spatial downscaling."""
    return width // downscale_factor, height // downscale_factor


def reference_frames(frames: int, temporal_factor: int) -> int:
    """Frame count of the reference after keeping frame 0, then frame 1 and every k-th frame after it."""
    return (frames - 1) // temporal_factor + 1
