"""Media as pure functions over files and arrays: probe a clip, decode and fit its video and audio, write one.

    probe.py   what a clip holds, measured from its packets (`probe`, `ClipInfo`)
    video.py   a clip's frames fitted to the bucket and frame grid; the reference's scaling
    audio.py   a clip's sound fitted to the target's span (16 kHz stereo)
    write.py   frames and sound to an mp4/webm/avi (`write_clip`)

Conventions: video is uint8 `[F, H, W, 3]` (frames, rows, columns, RGB),
channels last. Audio is float32 `[2, S]` (stereo, channels first) at
`AUDIO_SAMPLE_RATE`. Time zero of a clip is the timestamp of its first video
frame; audio is cut against the same clock so picture and sound stay in sync.
"""

from ltx_ray.clips.media.audio import (
    AUDIO_CHANNELS,
    AUDIO_SAMPLE_RATE,
    NORMALIZE_PEAK,
    audio_samples,
    decode_audio,
    peak_normalize,
    stretch_audio,
)
from ltx_ray.clips.media.probe import ClipInfo, has_audio, probe, upright_turn
from ltx_ray.clips.media.video import (
    decode_video,
    downscale_video,
    fit_crop,
    set_decode_threads,
    source_times,
    subsample_frames,
)
from ltx_ray.clips.media.write import write_clip

__all__ = [
    "AUDIO_CHANNELS", "AUDIO_SAMPLE_RATE", "NORMALIZE_PEAK", "ClipInfo", "audio_samples", "decode_audio",
    "decode_video", "downscale_video", "write_clip", "fit_crop", "has_audio", "peak_normalize", "probe",
    "set_decode_threads", "source_times", "stretch_audio", "subsample_frames", "upright_turn",
]
