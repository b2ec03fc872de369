"""The resolution buckets of SPEC-endpoint.md, the latent geometry and the reference's scaling arithmetic.

This is the only copy of each: data fitting, the model's token positions,
validation sampling, the memory estimate and the config rules all ask it
(`ltx_ray.model.av2av` names them for the model side; the reference's scaling as one value is
`ltx_ray.config.scaling.ReferenceScaling`).
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
# The audio VAE works on 16 kHz stereo: log-mel frames every 160 samples, compressed 4x in time,
# so 25 latent frames per second.
AUDIO_SAMPLE_RATE = 16000
AUDIO_HOP_LENGTH = 160
AUDIO_LATENT_DOWNSAMPLE = 4
AUDIO_LATENTS_PER_SECOND = AUDIO_SAMPLE_RATE / (AUDIO_HOP_LENGTH * AUDIO_LATENT_DOWNSAMPLE)


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


def audio_latent_frames(frames: int, frame_rate: float) -> int:
    """Audio latent frames of `frames` video frames: mel frames (one per hop, one more) / 4, rounded up."""
    samples = round(frames / frame_rate * AUDIO_SAMPLE_RATE)
    return -(-(samples // AUDIO_HOP_LENGTH + 1) // AUDIO_LATENT_DOWNSAMPLE)
