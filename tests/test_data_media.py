"""Probing, video fitting and audio fitting on real files written and read with PyAV."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fixtures_data import TIME_GREY, dominant_hz, grey
from ltx_ray.clips.media import (
    AUDIO_SAMPLE_RATE,
    NORMALIZE_PEAK,
    decode_audio,
    decode_video,
    downscale_video,
    write_clip,
    fit_crop,
    has_audio,
    probe,
    subsample_frames,
)
from synthetic import tone
from ltx_ray.errors import DatasetError


@pytest.mark.parametrize("ext", [".webm", ".mkv", ".avi", ".mov"])
def test_probe_measures_frames_and_duration_from_the_streams(make_clip, ext):
    info = probe(make_clip(frames=20, fps=10, ext=ext))
    assert info.frames == 20
    assert info.duration == pytest.approx(2.0, abs=0.01)
    assert info.fps == pytest.approx(10)
    assert (info.width, info.height, info.has_audio) == (160, 90, True)
    assert info.frames_at(8) == 16 and info.frames_at(24) == 48


def test_unreadable_clip_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "bad_start.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DatasetError) as info:
        probe(bad)
    assert info.value.problems[0].where == "bad_start.mp4"
    assert "cannot be read" in str(info.value)


def test_truncated_clip_is_an_error_naming_it(make_clip, tmp_path):
    cut = tmp_path / "cut_end.mp4"
    cut.write_bytes(make_clip().read_bytes()[:2000])
    with pytest.raises(DatasetError) as info:
        probe(cut)
    assert info.value.problems[0].where == "cut_end.mp4"


def test_has_audio_tells_silent_clips_apart(make_clip):
    assert has_audio(make_clip()) is True
    assert has_audio(make_clip(audio=None)) is False


def test_fit_crop_fills_the_bucket_and_centres():
    assert fit_crop(160, 120, 512, 288) == (160, 90, 0, 15)  # 4:3 into 16:9: rows cut
    assert fit_crop(320, 180, 512, 512) == (180, 180, 70, 0)  # 16:9 into 1:1: columns cut
    assert fit_crop(320, 180, 512, 288) == (320, 180, 0, 0)


def test_video_is_resized_to_fill_and_centre_cropped(tmp_path):
    # 4:3 source: red top band and blue bottom band fall outside a 16:9 crop; the green left edge stays.
    frame = np.full((120, 160, 3), 128, np.uint8)
    frame[:12] = (255, 0, 0)
    frame[-12:] = (0, 0, 255)
    frame[:, :16] = (0, 255, 0)
    path = write_clip(tmp_path / "bands.mp4", np.stack([frame] * 4), 8, tone(440, 0.5))
    video = decode_video(path, width=512, height=288, frames=2, frame_rate=8)
    assert video.shape == (2, 288, 512, 3) and video.dtype == np.uint8
    rows = video[0, [0, 287], 256].astype(int)
    assert np.all(np.abs(rows - 128) < 12), "red and blue bands are cropped away"
    assert video[0, 144, 10, 1] > 200 and video[0, 144, 10, 0] < 60, "the full width is kept"


def test_frames_are_resampled_by_timestamp(make_clip):
    video = decode_video(make_clip(frames=30, fps=30), width=64, height=64, frames=9, frame_rate=10)
    expected = np.arange(9) / 10 * TIME_GREY  # frame i shows source time i/10 s, not source frame i
    assert np.all(np.abs(grey(video) - expected) < 3)


def test_lower_source_frame_rate_holds_the_nearest_frame(make_clip):
    video = decode_video(make_clip(frames=8, fps=8), width=64, height=64, frames=12, frame_rate=24)
    nearest = np.floor(np.arange(12) / 24 * 8 + 0.5 - 1e-9) / 8 * TIME_GREY
    assert np.all(np.abs(grey(video) - nearest) < 3)


def test_time_scale_squeezes_a_long_clip(make_clip):
    # 2 s at 16 fps into 9 frames at 8 fps (1.125 s): every output frame steps 2/1.125 x further.
    video = decode_video(make_clip(), width=64, height=64, frames=9, frame_rate=8, time_scale=2.0 / 1.125)
    assert abs(grey(video)[-1] - 8 / 8 * 2.0 / 1.125 * TIME_GREY) < 8


def test_downscale_is_an_exact_box_average():
    video = np.zeros((2, 4, 4, 3), np.uint8)
    video[:, :2, :2] = 200
    out = downscale_video(video, 2)
    assert out.shape == (2, 2, 2, 3)
    assert out[0, 0, 0, 0] == 200 and out[0, 1, 1, 0] == 0


def test_temporal_subsampling_keeps_frame_0_then_1_then_every_kth():
    video = np.arange(17)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    assert subsample_frames(video, 4)[:, 0, 0, 0].tolist() == [0, 1, 5, 9, 13]
    assert subsample_frames(video, 2)[:, 0, 0, 0].tolist() == [0, 1, 3, 5, 7, 9, 11, 13, 15]
    assert subsample_frames(video, 1) is video


def test_temporal_subsampling_keeps_the_frame_count_the_config_rules_expect():
    from ltx_ray.config.resolution import reference_frames

    for frames, factor in ((9, 2), (17, 2), (17, 4), (33, 4), (65, 8), (89, 1)):
        video = np.zeros((frames, 1, 1, 3), np.uint8)
        assert subsample_frames(video, factor).shape[0] == reference_frames(frames, factor)


def _audio(path, span=2.0, out=32000, **kw):
    return decode_audio(path, start=probe(path).start_time, span=span, out_samples=out, **kw)


def test_audio_is_resampled_to_16k_stereo(make_clip):
    audio = _audio(make_clip(freq=1000, sample_rate=44100), normalize=False)
    assert audio.shape == (2, 32000) and audio.dtype == np.float32
    assert dominant_hz(audio) == pytest.approx(1000, rel=0.01)
    assert np.abs(audio).max() == pytest.approx(0.4, abs=0.03)


def test_mono_audio_is_duplicated_to_both_channels(make_clip):
    audio = _audio(make_clip(channels=1), normalize=False)
    np.testing.assert_array_equal(audio[0], audio[1])
    assert np.abs(audio).max() == pytest.approx(0.4, abs=0.03), "duplicated at full level, not -3 dB"


def test_surround_audio_is_downmixed_to_stereo(make_clip):
    audio = _audio(make_clip(channels=6, sample_rate=48000), normalize=False)
    assert audio.shape == (2, 32000)
    assert np.abs(audio[0]).max() > 0.1 and np.abs(audio[1]).max() > 0.1
    assert dominant_hz(audio) == pytest.approx(440, rel=0.01)


def test_audio_normalize_scales_the_peak(make_clip):
    path = make_clip(amplitude=0.1)
    assert np.abs(_audio(path, normalize=True)).max() == pytest.approx(NORMALIZE_PEAK, abs=1e-4)
    assert np.abs(_audio(path, normalize=False)).max() == pytest.approx(0.1, abs=0.01)


def test_longer_audio_is_trimmed_to_the_video_span(make_clip):
    audio = _audio(make_clip(audio_seconds=3.0), span=2.0, out=32000, normalize=False)
    assert audio.shape == (2, 32000)
    assert np.abs(audio[:, -1600:]).max() > 0.3, "sound runs to the end of the span"


def test_shorter_audio_is_padded_with_silence(make_clip):
    audio = _audio(make_clip(audio_seconds=1.0), span=2.0, out=32000, normalize=False)
    assert audio.shape == (2, 32000)
    assert np.abs(audio[:, 1000:15000]).max() > 0.3
    assert np.abs(audio[:, 17600:]).max() < 0.01


def test_audio_stays_in_sync_with_the_first_video_frame(tmp_path):
    sr = 44100
    sound = tone(440, 2.0, sr)
    sound[:, : sr // 2] = 0  # the tone starts at 0.5 s
    path = write_clip(tmp_path / "onset.mp4", np.zeros((32, 64, 64, 3), np.uint8), 16, sound, sr)
    audio = _audio(path, normalize=False)
    onset = np.argmax(np.abs(audio[0]) > 0.2) / AUDIO_SAMPLE_RATE
    assert onset == pytest.approx(0.5, abs=0.02)


def test_stretched_tone_keeps_its_pitch(make_clip):
    path = make_clip(freq=440)
    faster = _audio(path, span=2.0, out=18000, preserve_pitch=True)  # 2 s into 1.125 s
    slower = _audio(path, span=1.0, out=32000, preserve_pitch=True)  # 1 s into 2 s
    assert faster.shape == (2, 18000) and slower.shape == (2, 32000)
    assert dominant_hz(faster) == pytest.approx(440, rel=0.02)
    assert dominant_hz(slower) == pytest.approx(440, rel=0.02)


def test_stretch_without_pitch_preservation_moves_the_pitch(make_clip):
    faster = _audio(make_clip(freq=440), span=2.0, out=18000, preserve_pitch=False)
    assert dominant_hz(faster) == pytest.approx(440 * 2.0 / 1.125, rel=0.02)


def test_phone_clip_rotation_is_applied_before_fitting(tmp_path):
    # A landscape picture stored with a "rotate 90 clockwise" display matrix, as phones write portrait clips.
    frame = np.full((90, 160, 3), 60, np.uint8)
    frame[:12] = (255, 0, 0)  # red band along the stored top edge
    path = write_clip(tmp_path / "phone.mp4", np.stack([frame] * 4), 8, tone(440, 0.5))
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") + 44  # the video track header's 3x3 matrix (16.16 / 2.30 fixed point)
    data[at : at + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))
    assert probe(path).rotation == 90
    video = decode_video(path, width=288, height=512, frames=1, frame_rate=8)
    assert video.shape == (1, 512, 288, 3)
    assert video[0, 256, -5, 0] > 200, "the stored top edge is now on the right"
    assert video[0, 256, 5, 0] < 100 and video[0, 5, 144, 0] < 100
