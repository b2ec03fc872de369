"""From `training_data_url` to fitted training pairs: fetch, extract, pair, probe, fit.

`build_manifest` (or `manifest_from_archive` for an archive already on disk)
does everything that needs no decoding (fetch, safe extraction, pairing,
captions, probing, the length rule) and raises every user error before
cluster time is spent. The Ray Data pipeline then calls `fit_pair` on each
pair in parallel (and `write_debug_archive` with `debug_dataset`).

`fit_reference` fits one reference clip (a validation sample, `ltx-ray
generate`'s) the same way.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ltx_ray.config.display import redact_url
from ltx_ray.config.resolution import bucket_size, reference_frames, reference_size
from ltx_ray.config.scaling import ReferenceScaling
from ltx_ray.config.schema import RequestConfig, StorageConfig
from ltx_ray.clips.archive import extract_archive
from ltx_ray.fetch import content_hash, fetch
from ltx_ray.clips.media import (
    AUDIO_CHANNELS,
    AUDIO_SAMPLE_RATE,
    ClipInfo,
    audio_samples,
    decode_audio,
    decode_video,
    downscale_video,
    write_clip,
    probe,
    subsample_frames,
)
from ltx_ray.clips.pairs import PairFiles, match_pairs, read_caption
from ltx_ray.errors import DatasetError, Problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbedPair:
    """A pair that passed every check, with its caption and both clips' probe results."""

    files: PairFiles
    caption: str
    start: ClipInfo
    end: ClipInfo
    # Entry names inside the archive, for readers that open the zip directly (Ray workers).
    start_member: str = ""
    end_member: str = ""

    @property
    def name(self) -> str:
        """The pair's name (`<name>` of `<name>_start.<ext>`)."""
        return self.files.name


@dataclass(frozen=True)
class SkippedPair:
    """A pair left out of training, and why."""

    name: str
    reason: str


@dataclass
class Manifest:
    """The paired and probed dataset, before any decoding.

    `root` is the folder holding the extracted clips (inside the caller's
    workdir); `archive_sha256` identifies the archive for cache keys.
    """

    pairs: list[ProbedPair]
    skipped: list[SkippedPair]
    warnings: list[str]
    root: Path
    archive_sha256: str


@dataclass
class FittedPair:
    """One training pair ready for the encoders.

    Video is uint8 `[F, H, W, 3]` (channels last); the reference is
    `[F_ref, H_ref, W_ref, 3]` after its downscale / temporal subsampling.
    Audio is float32 `[2, S]` at `sample_rate` covering the target's
    `F / frame_rate` seconds, for the reference as for the target.
    """

    name: str
    caption: str
    reference_video: np.ndarray
    target_video: np.ndarray
    reference_audio: np.ndarray
    target_audio: np.ndarray
    sample_rate: int
    frame_rate: float


@dataclass
class FittedClip:
    """One fitted clip (a validation reference): uint8 `[F, H, W, 3]` video and float32 `[2, S]` audio."""

    video: np.ndarray
    audio: np.ndarray
    sample_rate: int
    frame_rate: float


def build_manifest(request: RequestConfig, workdir: Path, storage: StorageConfig | None = None) -> Manifest:
    """Fetch `request.training_data_url` and run `manifest_from_archive` on it inside `workdir`.

    A downloaded archive is deleted once extracted; a local one is only read.
    Raises `DatasetError` (unreachable URL, not a zip, bad entries, bad
    pairs, unreadable or silent clips, no pair long enough).
    """
    url = request.training_data_url
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    download_dir = Path(tempfile.mkdtemp(prefix="download-", dir=workdir))
    try:
        archive = fetch(url, download_dir, storage=storage)
        return manifest_from_archive(archive, request, workdir, label=redact_url(url))
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)


def manifest_from_archive(
    archive: Path, request: RequestConfig, workdir: Path, *, label: str | None = None
) -> Manifest:
    """Safely extract a local zip into a new folder of `workdir`, then pair, caption and probe.

    Applies the length rule (with `auto_scale_input` off, a pair with a clip
    shorter than `number_of_frames` at `frame_rate` is skipped with a
    warning). `label` names the archive in errors (the user's URL). Raises
    `DatasetError` with every problem found; on failure the extracted
    folder is removed. The archive itself is only read.
    """
    url = label or str(archive)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    clips_dir = Path(tempfile.mkdtemp(prefix="clips-", dir=workdir))
    try:
        if not zipfile.is_zipfile(archive):
            raise DatasetError(Problem(url, "is not a .zip archive"))
        digest = content_hash(archive)
        extracted = extract_archive(archive, clips_dir, label=url)
        warnings = [f"{name}: ignored (macOS metadata or hidden file)" for name in extracted.ignored]
        pairs, pair_warnings = match_pairs(extracted.files, label=url)
        warnings += pair_warnings
        members = {path: extracted.members[name] for name, path in extracted.files.items()}
        probed, skipped, more = _probe_pairs(pairs, request, members)
        warnings += more
        if not probed:
            raise DatasetError(
                Problem(
                    "training_data_url",
                    f"no pair has at least {request.number_of_frames} frames at {request.frame_rate} fps "
                    f"({request.number_of_frames / request.frame_rate:.2f} s) in both clips; "
                    "provide longer clips or set auto_scale_input=true",
                )
            )
        for warning in warnings:
            log.warning("dataset: %s", warning)
        return Manifest(probed, skipped, warnings, clips_dir, digest)
    except BaseException:
        shutil.rmtree(clips_dir, ignore_errors=True)
        raise


def _probe_pairs(
    pairs: list[PairFiles], request: RequestConfig, members: dict[Path, str]
) -> tuple[list[ProbedPair], list[SkippedPair], list[str]]:
    problems: list[Problem] = []
    probed: list[ProbedPair] = []
    skipped: list[SkippedPair] = []
    warnings: list[str] = []
    for pair in pairs:
        try:
            start, end = probe(pair.start), probe(pair.end)
            caption, warning = read_caption(pair, request.trigger_phrase)
        except DatasetError as err:
            problems += err.problems
            continue
        silent = _silence(pair.name, (start, end))
        if silent:
            problems.append(silent)
            continue
        if warning:
            warnings.append(warning)
        short = _shortfall((start, end), request)
        if short:
            reason = f"too short: {short} (auto_scale_input=false)"
            skipped.append(SkippedPair(pair.name, reason))
            warnings.append(f"{pair.name}: skipped, {reason}")
            continue
        probed.append(ProbedPair(pair, caption, start, end, members.get(pair.start, ""), members.get(pair.end, "")))
    if problems:
        raise DatasetError(problems)
    return probed, skipped, warnings


def pair_span(start: ClipInfo, end: ClipInfo, request: RequestConfig) -> float:
    """Seconds of source taken from both clips: the target duration, or with auto-scale the shorter clip."""
    if request.auto_scale_input:
        # One span for both clips keeps them on the same time grid, hence aligned.
        return min(start.duration, end.duration)
    return request.number_of_frames / request.frame_rate


def probe_pair(pair: PairFiles, request: RequestConfig, *, caption: str | None = None) -> ProbedPair:
    """Probe, caption and check one pair on its own (a Ray worker's copy of it): the checks of
    `build_manifest`, where a pair that fails one is an error rather than a skip.

    `caption`, when given, is the final caption (trigger phrase included) instead of the caption file's.
    """
    start, end = probe(pair.start), probe(pair.end)
    silent = _silence(pair.name, (start, end))
    if silent:
        raise DatasetError(silent)
    short = _shortfall((start, end), request)
    if short:
        raise DatasetError(Problem(pair.name, f"too short: {short} (auto_scale_input=false)"))
    if caption is None:
        caption, _ = read_caption(pair, request.trigger_phrase)
    return ProbedPair(pair, caption, start, end)


def fit_pair(pair: ProbedPair, request: RequestConfig, *, out: dict[str, np.ndarray] | None = None) -> FittedPair:
    """Decode and fit one checked pair: both clips to the bucket and frame grid, then scale the reference.

    Both clips get the same geometry and the same source timestamps, so
    frame i of the reference and of the target show the same instant. The
    reference video is then downscaled by `reference_downscale_factor` and
    temporally subsampled by `reference_temporal_scale_factor`. Each clip's
    own audio is fitted to the target's duration. `out` may hold arrays to
    fit into, by `FittedPair` field name (see `fitted_shapes`): the target's
    frames, and an unscaled reference's, are decoded straight into them,
    with no copy of the clips.
    """
    out = out or {}
    width, height = bucket_size(request.resolution, request.aspect_ratio)
    grid = _Grid(width, height, request.number_of_frames, request.frame_rate, pair_span(pair.start, pair.end, request),
                 request.audio_normalize, request.audio_preserve_pitch)
    scaling = ReferenceScaling.from_request(request)
    scaled = (scaling.downscale, scaling.temporal) != (1, 1)
    ref = _fit_clip(pair.start, grid, video_out=None if scaled else out.get("reference_video"))
    tgt = _fit_clip(pair.end, grid, video_out=out.get("target_video"))
    ref_video = _scale_reference(ref.video, scaling.downscale, scaling.temporal)
    return FittedPair(
        name=pair.name,
        caption=pair.caption,
        reference_video=_into(out.get("reference_video"), ref_video),
        target_video=_into(out.get("target_video"), tgt.video),
        reference_audio=_into(out.get("reference_audio"), ref.audio),
        target_audio=_into(out.get("target_audio"), tgt.audio),
        sample_rate=AUDIO_SAMPLE_RATE,
        frame_rate=float(request.frame_rate),
    )


@dataclass(frozen=True)
class ReferenceFit:
    """What `fit_reference` fits a clip to: the size and frame grid, the length rule and the audio options."""

    width: int
    height: int
    frames: int
    frame_rate: float
    auto_scale: bool = False  # resample the whole clip in time rather than refuse a short one
    audio_normalize: bool = True
    audio_preserve_pitch: bool = True

    @classmethod
    def validation(cls, request: RequestConfig) -> "ReferenceFit":
        """The request's validation clip: `validation_resolution`/`_aspect_ratio`/`_number_of_frames`/`_frame_rate`,
        with the training's `auto_scale_input` and audio options."""
        width, height = bucket_size(request.validation_resolution, request.validation_aspect_ratio)
        return cls(width, height, request.validation_number_of_frames, float(request.validation_frame_rate),
                   request.auto_scale_input, request.audio_normalize, request.audio_preserve_pitch)


def fit_reference(video_path: Path, audio_path: Path | None, fit: ReferenceFit,
                  scaling: ReferenceScaling | None = None) -> FittedClip:
    """Fit one reference clip (a validation sample, `ltx-ray generate`'s) exactly as training fits a pair's
    reference: to `fit`, then scaled by `scaling`'s factors (None: unscaled, as the reel shows it).

    Video comes from `video_path`; audio from `audio_path` when given, else
    from the video's own track (which must then exist). Without
    `fit.auto_scale`, a clip shorter than `frames / frame_rate` is a
    `DatasetError`; with it, the whole clip is resampled in time.
    """
    info = probe(video_path)
    if audio_path is None and not info.has_audio:
        silent = "the reference video has no audio track and no reference audio was given"
        raise DatasetError(Problem(Path(video_path).name, silent))
    short = "" if fit.auto_scale else _shortfall((info,), frames=fit.frames, frame_rate=fit.frame_rate)
    if short:
        raise DatasetError(Problem(Path(video_path).name, short))
    span = info.duration if fit.auto_scale else fit.frames / fit.frame_rate
    grid = _Grid(fit.width, fit.height, fit.frames, fit.frame_rate, span, fit.audio_normalize, fit.audio_preserve_pitch)
    fitted = _fit_clip(info, grid, audio_path=audio_path)
    if scaling is not None:
        fitted.video = _scale_reference(fitted.video, scaling.downscale, scaling.temporal)
    return fitted


def fitted_shapes(request: RequestConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array `fit_pair` returns for this request, by `FittedPair` field name."""
    width, height = bucket_size(request.resolution, request.aspect_ratio)
    frames, scaling = request.number_of_frames, ReferenceScaling.from_request(request)
    ref_w, ref_h = scaling.size(width, height)
    audio = ((AUDIO_CHANNELS, audio_samples(frames, request.frame_rate)), np.dtype(np.float32))
    return {
        "reference_video": ((scaling.frames(frames), ref_h, ref_w, 3), np.dtype(np.uint8)),
        "target_video": ((frames, height, width, 3), np.dtype(np.uint8)),
        "reference_audio": audio,
        "target_audio": audio,
    }


def _into(dest: np.ndarray | None, value: np.ndarray) -> np.ndarray:
    """`value`, copied into `dest` unless it already is `dest` (or there is none)."""
    if dest is None or value is dest:
        return value
    np.copyto(dest, value)
    return dest


@dataclass(frozen=True)
class _Grid:
    """What a clip is fitted to: the bucket, the frame grid, the source span and the audio options."""

    width: int
    height: int
    frames: int
    frame_rate: float
    span: float  # seconds of source mapped onto the `frames / frame_rate` of the output
    normalize: bool
    preserve_pitch: bool


def _fit_clip(info: ClipInfo, grid: _Grid, *, audio_path: Path | None = None,
              video_out: np.ndarray | None = None) -> FittedClip:
    """One clip's video and audio on the grid (audio from `audio_path` when given, else its own track)."""
    video = decode_video(
        info.path, width=grid.width, height=grid.height, frames=grid.frames, frame_rate=grid.frame_rate,
        time_scale=grid.span / (grid.frames / grid.frame_rate), out=video_out,
    )
    audio = decode_audio(
        audio_path or info.path,
        # A separate audio file has its own clock: take it from its start.
        start=None if audio_path else info.start_time,
        span=grid.span,
        out_samples=audio_samples(grid.frames, grid.frame_rate),
        preserve_pitch=grid.preserve_pitch,
        normalize=grid.normalize,
    )
    return FittedClip(video=video, audio=audio, sample_rate=AUDIO_SAMPLE_RATE, frame_rate=float(grid.frame_rate))


def _silence(name: str, clips: tuple[ClipInfo, ...]) -> Problem | None:
    """The rejection of a pair with a clip that has no audio track (both must carry audio), if it has one."""
    silent = [c.path.name for c in clips if not c.has_audio]
    if not silent:
        return None
    return Problem(name, f"silent clips are rejected: {' and '.join(silent)} has no audio track "
                         "(both the _start and the _end clip of a pair must carry audio)")


def _shortfall(clips: tuple[ClipInfo, ...], request: RequestConfig | None = None, *, frames: int = 0,
               frame_rate: float = 0.0) -> str:
    """Which clips have fewer than the needed frames at the frame rate ("" when none, or with auto-scale)."""
    if request is not None:
        if request.auto_scale_input:
            return ""
        frames, frame_rate = request.number_of_frames, request.frame_rate
    short = [f"{c.path.name} has {c.frames_at(frame_rate)}" for c in clips if c.frames_at(frame_rate) < frames]
    return f"{', '.join(short)} frames at {frame_rate:g} fps, {frames} needed" if short else ""


def _scale_reference(video: np.ndarray, downscale: int, temporal: int) -> np.ndarray:
    f, h, w, _ = video.shape
    out = subsample_frames(downscale_video(video, downscale), temporal)
    # The config rules guarantee these; a mismatch here is a bug, not a user error.
    assert out.shape[1:3] == reference_size(w, h, downscale)[::-1] and out.shape[0] == reference_frames(f, temporal)
    return out


def write_debug_archive(pairs: list[FittedPair], out_path: Path, request: RequestConfig | None = None) -> Path:
    """Zip the preprocessed pairs for inspection: `<name>_start.mp4`, `<name>_end.mp4` (H.264 + AAC) and `<name>.txt`.

    The reference is written at its own size and, after temporal
    subsampling, at `frame_rate / k` so it lasts as long as the target.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    k = request.reference_temporal_scale_factor if request else 1
    tmp = Path(tempfile.mkdtemp(prefix="debug-", dir=out_path.parent))
    part = out_path.with_name(out_path.name + ".part")
    try:
        # Stored, not deflated: mp4 does not compress further.
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_STORED) as zf:
            for p in pairs:
                ref_rate = Fraction(p.frame_rate).limit_denominator(1001) / k
                for suffix, video, audio, rate in (
                    ("_start", p.reference_video, p.reference_audio, ref_rate),
                    ("_end", p.target_video, p.target_audio, Fraction(p.frame_rate).limit_denominator(1001)),
                ):
                    clip = write_clip(tmp / f"{p.name}{suffix}.mp4", video, rate, audio, p.sample_rate)
                    zf.write(clip, clip.name)
                    clip.unlink()
                zf.writestr(f"{p.name}.txt", p.caption + "\n")
        part.replace(out_path)
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return out_path
