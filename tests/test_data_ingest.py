"""From `training_data_url` to fitted pairs: real archives built on the fly, end to end."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest

from fixtures_data import SMALL, TIME_GREY, dominant_hz, grey
from ltx_ray.config.schema import RequestConfig, StorageConfig
from ltx_ray.fetch import content_hash
from in_process_ingest import ingest
from ltx_ray.clips.ingest import ProbedPair, ReferenceFit, build_manifest, fit_pair, fit_reference, probe_pair
from ltx_ray.config.scaling import ReferenceScaling
from ltx_ray.clips.media import probe
from ltx_ray.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]


def _request(url, **overrides) -> RequestConfig:
    return RequestConfig(training_data_url=str(url), **{**SMALL, **overrides})


def _error(request, workdir) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        ingest(request, workdir)
    assert not workdir.exists() or list(workdir.iterdir()) == [], "temporary files are removed on failure"
    return info.value


def test_sample_archive_ingests_into_fitted_pairs(sample_dataset, tmp_path):
    report = ingest(_request(sample_dataset.archive, trigger_phrase="av_st9le"), tmp_path / "work")
    assert [p.name for p in report.accepted] == ["sample01", "sample02", "sample03"]
    pair = report.accepted[0]
    assert pair.target_video.shape == pair.reference_video.shape == (9, 288, 512, 3)
    assert pair.target_video.dtype == np.uint8
    assert pair.reference_audio.shape == pair.target_audio.shape == (2, 18000)
    assert pair.target_audio.dtype == np.float32
    assert (pair.sample_rate, pair.frame_rate) == (16000, 8.0)
    assert pair.caption.startswith("av_st9le an inverted red square")
    assert report.skipped == [] and any("Aim for at least 10 pairs" in w for w in report.warnings)
    assert report.archive_sha256 == content_hash(sample_dataset.archive)
    assert list((tmp_path / "work").iterdir()) == [], "extracted clips are removed"


def test_input_archive_is_not_modified(sample_dataset, tmp_path):
    before = (content_hash(sample_dataset.archive), sample_dataset.archive.stat().st_mtime_ns)
    build_manifest(_request(sample_dataset.archive), tmp_path)
    assert (content_hash(sample_dataset.archive), sample_dataset.archive.stat().st_mtime_ns) == before


def test_not_a_zip_fails_naming_the_url(tmp_path):
    fake = tmp_path / "data.zip"
    fake.write_text("not a zip")
    err = _error(_request(fake), tmp_path / "work")
    assert [p.where for p in err.problems] == [str(fake)] and "not a .zip" in str(err)


def test_archive_over_http_is_ingested(sample_dataset, http_server, tmp_path):
    http_server.files["/pairs.zip"] = sample_dataset.archive.read_bytes()
    manifest = build_manifest(_request(http_server.url("/pairs.zip")), tmp_path)
    assert len(manifest.pairs) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [manifest.root.name], "the download is removed"


def test_archive_on_s3_is_ingested(sample_dataset, s3_server, s3_bucket, tmp_path):
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").upload_file(
        str(sample_dataset.archive), s3_bucket, "data/pairs.zip"
    )
    request = _request(f"s3://{s3_bucket}/data/pairs.zip")
    manifest = build_manifest(request, tmp_path, StorageConfig(endpoint_override=s3_server))
    assert len(manifest.pairs) == 3


def test_silent_clip_is_rejected_naming_the_pair(make_clip, make_zip, tmp_path):
    archive = make_zip({"a_start.mp4": make_clip(audio=None), "a_end.mp4": make_clip()})
    err = _error(_request(archive), tmp_path / "work")
    assert [p.where for p in err.problems] == ["a"]
    assert "silent clips are rejected" in str(err) and "a_start.mp4" in str(err)


def test_unreadable_clip_is_rejected_naming_it(make_clip, make_zip, tmp_path):
    archive = make_zip({"b_start.mp4": make_clip(), "b_end.mp4": b"\x00garbage" * 100})
    err = _error(_request(archive), tmp_path / "work")
    assert [p.where for p in err.problems] == ["b_end.mp4"]


def test_unsupported_extension_in_archive_is_rejected(make_clip, make_zip, tmp_path):
    archive = make_zip({"a_start.flv": make_clip(), "a_end.mp4": make_clip()})
    err = _error(_request(archive), tmp_path / "work")
    assert err.problems[0].where == "a_start.flv" and "unsupported video format" in err.problems[0].message


def test_empty_archive_is_rejected(make_zip, tmp_path):
    archive = make_zip({"__MACOSX/._x": b"", "readme.md": b"hi"})
    err = _error(_request(archive), tmp_path / "work")
    assert "no <name>_start" in str(err)


def test_short_pairs_are_skipped_with_a_warning(make_clip, make_zip, tmp_path):
    long, short = make_clip(frames=32), make_clip(frames=8)
    archive = make_zip({"ok_start.mp4": long, "ok_end.mp4": long, "tiny_start.mp4": long, "tiny_end.mp4": short})
    report = ingest(_request(archive), tmp_path / "work")
    assert [p.name for p in report.accepted] == ["ok"]
    assert [s.name for s in report.skipped] == ["tiny"]
    assert "too short" in report.skipped[0].reason and "9 needed" in report.skipped[0].reason
    assert any(w.startswith("tiny: skipped") for w in report.warnings)


def test_all_pairs_too_short_fails(make_clip, make_zip, tmp_path):
    short = make_clip(frames=8)
    err = _error(_request(make_zip({"a_start.mp4": short, "a_end.mp4": short})), tmp_path / "work")
    assert [p.where for p in err.problems] == ["training_data_url"]
    assert "auto_scale_input" in str(err)


def test_auto_scale_input_fits_short_and_long_clips_to_exact_frames(make_clip, make_zip, tmp_path):
    short, long = make_clip(frames=8), make_clip(frames=32)  # 0.5 s and 2 s at 16 fps
    archive = make_zip({"s_start.mp4": short, "s_end.mp4": short, "l_start.mp4": long, "l_end.mp4": long})
    report = ingest(_request(archive, auto_scale_input=True), tmp_path / "work")
    fitted = {p.name: p for p in report.accepted}
    assert sorted(fitted) == ["l", "s"]
    for pair in fitted.values():
        assert pair.target_video.shape[0] == 9 and pair.target_audio.shape == (2, 18000)
    # Frame 8 of 9 shows 8/9 of the clip's duration: the whole clip is resampled in time.
    assert grey(fitted["l"].target_video)[-1] == pytest.approx(2.0 * 8 / 9 * TIME_GREY, abs=7)
    assert grey(fitted["s"].target_video)[-1] == pytest.approx(0.5 * 8 / 9 * TIME_GREY, abs=7)
    assert dominant_hz(fitted["l"].target_audio) == pytest.approx(440, rel=0.02)
    assert dominant_hz(fitted["s"].target_audio) == pytest.approx(440, rel=0.02)


def test_reference_and_target_stay_aligned(make_clip, make_zip, tmp_path):
    # Different containers, frame rates and sizes; nested folders: the fitted frames show the same instants.
    start = make_clip(frames=40, fps=16, width=160, height=90, ext=".mp4")
    end = make_clip(frames=60, fps=24, width=320, height=240, ext=".mkv")
    archive = make_zip({"refs/x_start.mp4": start, "targets/deep/x_end.mkv": end})
    pair = ingest(_request(archive, number_of_frames=17, frame_rate=8), tmp_path / "work").accepted[0]
    assert pair.reference_video.shape == pair.target_video.shape == (17, 288, 512, 3)
    np.testing.assert_allclose(grey(pair.reference_video), grey(pair.target_video), atol=3)
    np.testing.assert_allclose(grey(pair.target_video), np.arange(17) / 8 * TIME_GREY, atol=3)


def test_reference_is_downscaled_and_keeps_frames_0_1_then_every_kth(make_clip, make_zip, tmp_path):
    clip = make_clip()
    archive = make_zip({"a_start.mp4": clip, "a_end.mp4": clip})
    request = _request(archive, reference_downscale_factor=2, reference_temporal_scale_factor=4)
    pair = ingest(request, tmp_path / "work").accepted[0]
    assert pair.target_video.shape == (9, 288, 512, 3)
    assert pair.reference_video.shape == (3, 144, 256, 3)  # frames 0, 1, 5 at half size (the official indices)
    np.testing.assert_allclose(grey(pair.reference_video), grey(pair.target_video)[[0, 1, 5]], atol=1)
    assert pair.reference_audio.shape == (2, 18000), "audio has no spatial or temporal knob"


def test_debug_dataset_writes_reencoded_pairs_with_audio(make_clip, make_zip, tmp_path):
    clip = make_clip()
    archive = make_zip({"a_start.mp4": clip, "a_end.mp4": clip, "a.txt": b"a grey fade"})
    request = _request(archive, debug_dataset=True, trigger_phrase="tok", reference_temporal_scale_factor=2)
    report = ingest(request, tmp_path / "work")
    assert report.debug_archive == tmp_path / "work" / "debug_dataset.zip"
    with zipfile.ZipFile(report.debug_archive) as zf:
        assert sorted(zf.namelist()) == ["a.txt", "a_end.mp4", "a_start.mp4"]
        assert zf.read("a.txt").decode().strip() == "tok a grey fade"
        zf.extractall(tmp_path / "debug")
    end, start = probe(tmp_path / "debug" / "a_end.mp4"), probe(tmp_path / "debug" / "a_start.mp4")
    assert (end.width, end.height, end.frames, end.has_audio) == (512, 288, 9, True)
    assert (start.frames, start.fps) == (5, 4.0)
    with av.open(str(tmp_path / "debug" / "a_end.mp4")) as c:
        assert (c.streams.audio[0].codec_context.name, c.streams.audio[0].rate) == ("aac", 16000)


def test_manifest_is_built_without_decoding_and_fits_later(sample_dataset, tmp_path):
    request = _request(sample_dataset.archive, trigger_phrase="tok")
    manifest = build_manifest(request, tmp_path)
    first = manifest.pairs[0]
    assert isinstance(first, ProbedPair) and first.start_member == "sample01_start.mp4"
    assert first.start.frames == 32 and first.files.start.is_file() and first.caption.startswith("tok ")
    pair = fit_pair(first, request)
    assert pair.target_video.shape == (9, 288, 512, 3) and pair.caption == first.caption


def test_a_probed_pair_takes_a_final_caption(make_clip, tmp_path):
    from ltx_ray.clips.pairs import PairFiles

    clip = make_clip()
    pair = fit_pair(probe_pair(PairFiles("z", clip, clip), _request("unused"), caption="given caption"),
                    _request("unused"))
    assert pair.caption == "given caption"


@pytest.mark.parametrize("factors", [(1, 1), (2, 4)])
def test_fit_pair_fills_given_arrays_exactly_as_it_fits_new_ones(make_clip, factors):
    from ltx_ray.clips.ingest import fitted_shapes
    from ltx_ray.clips.pairs import PairFiles

    start, end = make_clip(frames=40, fps=16), make_clip(frames=60, fps=24, width=320, height=240)
    request = _request("unused", reference_downscale_factor=factors[0], reference_temporal_scale_factor=factors[1])
    fresh = fit_pair(probe_pair(PairFiles("p", start, end), request), request)
    out = {field: np.full(shape, 7, dtype) for field, (shape, dtype) in fitted_shapes(request).items()}
    filled = fit_pair(probe_pair(PairFiles("p", start, end), request), request, out=out)
    for field, array in out.items():
        assert getattr(filled, field) is array, f"{field} is fitted into the given array"
        np.testing.assert_array_equal(array, getattr(fresh, field), err_msg=field)


def test_fit_reference_for_validation(sample_dataset):
    fit = ReferenceFit(width=512, height=288, frames=9, frame_rate=8)
    clip = fit_reference(sample_dataset.validation_ref, None, fit, ReferenceScaling(downscale=2, temporal=8, frame_rate=8))
    assert clip.video.shape == (2, 144, 256, 3) and clip.audio.shape == (2, 18000)
    assert dominant_hz(clip.audio) == pytest.approx(330, rel=0.02)


def test_fit_reference_takes_a_separate_audio_file(make_clip):
    silent = make_clip(audio=None)
    with pytest.raises(DatasetError) as info:
        fit_reference(silent, None, ReferenceFit(width=64, height=64, frames=9, frame_rate=8))
    assert "no audio track" in str(info.value)
    clip = fit_reference(silent, make_clip(freq=1000), ReferenceFit(width=64, height=64, frames=9, frame_rate=8))
    assert dominant_hz(clip.audio) == pytest.approx(1000, rel=0.02)


def test_make_sample_dataset_script_writes_archive_and_validation_ref(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_sample_dataset.py"), "--out", str(tmp_path),
         "--pairs", "2", "--fps", "8", "--seconds", "1.5"],
        capture_output=True, text=True, check=True,
    )
    assert "av2av_pairs.zip" in out.stdout
    with zipfile.ZipFile(tmp_path / "av2av_pairs.zip") as zf:
        assert sorted(zf.namelist()) == sorted(
            f"sample0{i}{s}" for i in (1, 2) for s in ("_start.mp4", "_end.mp4", ".txt")
        )
    ref = probe(tmp_path / "validation_ref.mp4")
    assert ref.has_audio and ref.frames == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["av2av_pairs.zip", "validation_ref.mp4"]

