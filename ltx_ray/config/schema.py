"""The job's typed configuration: one tree, one source of truth for every default.

`RequestConfig` is the public contract of SPEC-endpoint.md, field for field, with the spec's names
and defaults. The other sections are what a cluster job needs beside it.

Each field says what it is in the docstring under it (`ltx-ray validate --explain` prints its first
paragraph), and a field with a rule of its own declares it there (`between`, `one_of`, `within`,
`must`: `ltx_ray.config.fields`). A section's `check()` holds the rules that span its fields and
returns the problems; it never changes a value. `resolve()`, run once the checks pass, snaps and
fills what the rules allow (frame counts to 8k+1, the global batch, absolute local paths).
"""

from __future__ import annotations

import os
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from ltx_ray.config.fields import between, checked, declared, field_problems, fine, must, one_of, within
from ltx_ray.config.resolution import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION, bucket_size, snap_frames
from ltx_ray.errors import Problem

DEFAULT_NEGATIVE_PROMPT = (
    "worst quality, low quality, blurry, out of focus, jittery, inconsistent motion, "
    "flickering, distorted, deformed, disfigured, morphing, warped faces, extra limbs, "
    "watermark, text, logo, subtitles, compression artifacts, static frame, "
    "muffled audio, distorted audio, clipping, noise, hiss, off-sync sound"
)

MAX_VALIDATION_SAMPLES = 2
MAX_WORKERS = 4096
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# The latent cache's folder under storage_path when storage.latent_cache_path is empty: no run may be named so.
DEFAULT_LATENT_CACHE = "latents"


@dataclass
class ValidationSample:
    """One validation preview: a prompt and the reference clip (and optional audio) to transform."""

    prompt: str = ""
    """The preview's caption (with the trigger phrase)."""
    reference_video_url: str = must(MISSING, lambda v: str(v).strip(), "is required")
    """The reference clip the preview transforms (path or URL)."""
    reference_audio_url: Optional[str] = None
    """The reference's sound, when the clip has none (path or URL)."""


@dataclass
class RequestConfig:
    """The training request, exactly as SPEC-endpoint.md names and defaults it."""

    training_data_url: str = MISSING
    """URL of the .zip of <name>_start / <name>_end clip pairs (with audio) and optional <name>.txt captions."""
    trigger_phrase: str = ""
    """Prepended to every caption in training; include it at inference."""
    rank: int = one_of(32, 8, 16, 32, 64, 128)
    """LoRA rank: the adapter's capacity."""
    number_of_steps: int = between(2000, 100, 20000)
    """Optimizer steps."""
    learning_rate: float = within(0.0002, "(0, 1]")
    """AdamW's step size."""
    reference_downscale_factor: int = between(1, 1, 8)
    """Spatial downscale of the reference video before encoding (1: none).

    Width and height must divide by it and give multiples of 32, at the training and the validation
    resolution (`check`).
    """
    reference_temporal_scale_factor: int = between(1, 1, 8)
    """Temporal subsampling of the reference video (1: none).

    (frames - 1) must divide by it, leaving a multiple of 8, for both frame counts (`check`).
    """
    number_of_frames: int = between(89, 9, 121)
    """Frames per training clip, 8k+1 (other values are snapped down)."""
    frame_rate: int = between(24, 8, 60)
    """Frames per second the clips are fitted to."""
    resolution: str = one_of("medium", "low", "medium", "high")
    """The training resolution bucket, with `aspect_ratio` (`ltx_ray.config.resolution`)."""
    aspect_ratio: str = one_of("1:1", "16:9", "1:1", "9:16")
    """The training clips' aspect ratio, with `resolution`."""
    auto_scale_input: bool = False
    """Resample clips shorter than `number_of_frames` instead of skipping their pair."""
    split_input_into_scenes: bool = must(
        False, lambda v: not v,
        "is not available for av2av: scene splitting would desync the reference/target pair. "
        "Provide pre-split clips instead.",
    )
    """Refused for av2av: scene splitting would desync a pair. Kept for the spec's field set."""
    split_input_duration_threshold: float = between(30.0, 1.0, 60.0)
    """Seconds above which a clip would be split into scenes (unused: splitting is refused)."""
    audio_normalize: bool = True
    """Peak-normalize each clip's audio."""
    audio_preserve_pitch: bool = True
    """Keep the pitch when audio is stretched to the video's duration."""
    validation: List[ValidationSample] = must(
        list, lambda v: len(v) <= MAX_VALIDATION_SAMPLES,
        lambda v: f"at most {MAX_VALIDATION_SAMPLES} validation samples are allowed, got {len(v)}",
    )
    """At most two previews (`ValidationSample`), sampled every `preview.every` steps."""
    validation_negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    """What the previews' classifier-free guidance steers away from."""
    validation_number_of_frames: int = between(89, 9, 121)
    """The previews' length, 8k+1 frames (snapped down like `number_of_frames`)."""
    validation_frame_rate: int = between(24, 8, 60)
    """The previews' frames per second."""
    validation_resolution: str = one_of("high", "low", "medium", "high")
    """The previews' resolution bucket, with `validation_aspect_ratio`."""
    validation_aspect_ratio: str = one_of("1:1", "16:9", "1:1", "9:16")
    """The previews' aspect ratio, with `validation_resolution`."""
    stg_scale: float = between(1.0, 0.0, 3.0)
    """Spatio-temporal guidance strength of the previews (both modalities)."""
    debug_dataset: bool = False
    """Also return the fitted clips as a zip (outputs/debug_dataset.zip)."""

    def check(self, *, training: bool = True) -> list[Problem]:
        """The rules across the request's fields: the reference's scaling against both clip sizes (on the
        frame counts as `resolve` snaps them), and training data when training."""
        problems = []
        if training and not str(self.training_data_url).strip():
            problems.append(Problem("request.training_data_url", "is required"))
        problems += downscale_problems("request.reference_downscale_factor", self.reference_downscale_factor, {
            "training": (self.resolution, self.aspect_ratio),
            "validation": (self.validation_resolution, self.validation_aspect_ratio),
        })
        problems += temporal_problems("request.reference_temporal_scale_factor", self.reference_temporal_scale_factor, {
            name: self._snapped(name) for name in ("number_of_frames", "validation_number_of_frames")
        })
        return problems

    def resolve(self) -> list[str]:
        """Snap both frame counts down to 8k+1; the warnings saying so."""
        warnings = []
        for name in ("number_of_frames", "validation_number_of_frames"):
            frames, snapped = getattr(self, name), self._snapped(name)
            if snapped != frames:
                warnings.append(f"request.{name}: {frames} is not of the form 8k+1; snapped down to {snapped}")
                setattr(self, name, snapped)
        return warnings

    def _snapped(self, name: str) -> int:
        """Frame count `name` as `resolve` leaves it (out of range: as it is, already reported)."""
        frames = getattr(self, name)
        return snap_frames(frames) if fine(self, name) else frames


def downscale_problems(where: str, f: int, buckets: dict[str, tuple[str, str]]) -> list[Problem]:
    """Why reference downscale factor `f` does not fit the (resolution, aspect ratio) `buckets`, by label."""
    problems: list[Problem] = []
    lo, hi = declared(RequestConfig, "reference_downscale_factor", "range")
    if not lo <= f <= hi:
        return problems  # reported as out of range
    for label, (res, ar) in buckets.items():
        try:
            w, h = bucket_size(res, ar)
        except KeyError:
            continue  # already reported as an enum error
        if w % f or h % f:
            problems.append(Problem(where, f"{f} does not divide the {label} resolution {w}x{h} ({res}, {ar})"))
        elif (w // f) % SPATIAL_COMPRESSION or (h // f) % SPATIAL_COMPRESSION:
            problems.append(
                Problem(
                    where,
                    f"{f} turns the {label} resolution {w}x{h} ({res}, {ar}) into "
                    f"{w // f}x{h // f}, which is not divisible by {SPATIAL_COMPRESSION}",
                )
            )
    return problems


def temporal_problems(where: str, k: int, frame_counts: dict[str, int]) -> list[Problem]:
    """Why reference temporal factor `k` does not fit the frame counts, by field name."""
    problems: list[Problem] = []
    lo, hi = declared(RequestConfig, "reference_temporal_scale_factor", "range")
    if not lo <= k <= hi:
        return problems  # reported as out of range
    fewest, most = declared(RequestConfig, "number_of_frames", "range")  # the validation count's too
    for name, frames in frame_counts.items():
        if not fewest <= frames <= most:
            continue
        span = frames - 1
        if span % k:
            problems.append(Problem(where, f"{k} does not divide ({name} - 1) = {span}"))
        elif (span // k) % TEMPORAL_COMPRESSION:
            problems.append(
                Problem(
                    where,
                    f"with {name}={frames}, ({frames} - 1) / {k} = {span // k} is not a multiple of "
                    f"{TEMPORAL_COMPRESSION}",
                )
            )
    return problems


@dataclass
class ModelConfig:
    """Where the base model lives: LTX-2.3's single file and a Gemma-3 directory, or LTX-2.5's files.

    The generation (2.3 or 2.5) is read from the transformer file's metadata (`ltx_ray.model.files`).
    """

    checkpoint: str = "ltx-2.3-22b-dev.safetensors"
    """The transformer (local path or URL): LTX-2.3's single file (transformer, VAEs, vocoder, connectors) or
    LTX-2.5's transformer file (ltx-2.5-22b-dev-transformer-bf16.safetensors, with the text connectors)."""
    video_vae: str = ""
    """LTX-2.5: the video VAE's file, with the convolutional decoder (ltx-2.5-video-vae-conv-bf16.safetensors). Empty for
    LTX-2.3 (in its single file)."""
    audio_vae: str = ""
    """LTX-2.5: the audio VAE and vocoder's file (ltx-2.5-audio-vae-bf16.safetensors). Empty for LTX-2.3."""
    text_encoder: str = "gemma-3-12b-it"
    """The text encoder (local path or URL): LTX-2.3's Gemma-3 directory, or LTX-2.5's Gemma-4 packed with its
    feature projection in one file (gemma4-12b-with-proj-ltx-2.5-bf16.safetensors)."""
    lora_targets: List[str] = field(
        default_factory=lambda: [
            "attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn",
        ]
    )
    """The attentions whose to_q/to_k/to_v/to_out.0 get a LoRA, in every block.

    Default: all six, audio<->video cross-attention included, as the official av2av recipe trains them
    (ltx-trainer configs/av2av_ic_lora.yaml); a shorter list narrows it.
    """
    lora_include_feed_forward: bool = False
    """Also give the feed-forward layers a LoRA (not in the official recipe)."""


def _worker_count(n: Any) -> str | None:
    """What is wrong with `cluster.num_workers`: an int, or [min, max] with 1 <= min <= max <= MAX_WORKERS."""
    if isinstance(n, (list, tuple)) and len(n) == 2 and all(type(x) is int for x in n):
        lo, hi = int(n[0]), int(n[1])
        if not 1 <= lo <= hi <= MAX_WORKERS:
            return f"[min, max] must have 1 <= min <= max <= {MAX_WORKERS}, got [{lo}, {hi}]"
        return None
    if type(n) is int:
        return None if 1 <= n <= MAX_WORKERS else f"must be between 1 and {MAX_WORKERS}, got {n}"
    return f"must be a number of workers or [min, max], got {n!r}"


@dataclass
class ClusterConfig:
    """How the work is spread: Ray Train workers and DeepSpeed ZeRO."""

    num_workers: Any = checked(8, _worker_count)
    """Ray Train workers (ranks, one GPU each): an int, or `[min, max]` for an elastic run.

    Elastic, Ray Train starts once `min` workers can be placed, restarts with fewer after a node is lost
    and grows back towards `max` when capacity returns; each (re)start resumes from the latest checkpoint.
    """
    use_gpu: bool = True
    """Train on GPUs (NCCL, the CUDA accelerator); false trains on CPUs (gloo), as the tests and the demo do."""
    resources_per_worker: Dict[str, float] = field(default_factory=lambda: {"CPU": 8.0, "GPU": 1.0})
    """Ray resources each training worker books (CPU, GPU and any custom ones, e.g. a node label)."""
    zero_stage: int = one_of(2, 2, 3)
    """DeepSpeed ZeRO stage: 2 shards optimizer state and gradients; 3 also the base model's weights.

    Under 3 the model is loaded partitioned (`ltx_ray.train.zero3`), for models one GPU cannot hold.
    """
    gradient_checkpointing: bool = True
    """Recompute each transformer block in backward instead of keeping its activations.

    ltx-trainer av2av_ic_lora.yaml `enable_gradient_checkpointing: true`.
    """
    micro_batch_size: int = between(1, 1, 64)
    """Samples per rank per micro-step."""
    workers_per_node: int = between(1, 1, 64)
    """Ray Train workers one node holds (its GPUs; 1 for mixed or CPU nodes).

    An elastic run gains and loses whole nodes, so its world sizes are the multiples of this in [min, max]:
    those are the sizes `global_batch_size` must split over. min and max must be multiples of it.
    """
    gradient_accumulation_steps: int = between(1, 1, 1024)
    """Used only for the default of `global_batch_size`: the accumulation of a run at `max` workers."""
    global_batch_size: Optional[int] = None
    """Samples per optimizer step (default: micro_batch_size x gradient_accumulation_steps x max workers).

    A property of the run, not of the cluster. At every (re)start the accumulation is set so that
    micro_batch_size x accumulation x world size equals it: every world size in [min, max] must divide
    global_batch_size / micro_batch_size.
    """
    precision: str = one_of("bf16", "bf16", "fp32")
    """Training precision of the base model, the LoRA and the encoders (fp32 for CPU tests)."""
    decode_workers: int = between(4, 1, 1024)
    """Ray Data workers that decode clips."""
    encode_actors: int = between(1, 1, 1024)
    """Encoder actors that turn decoded clips into latents."""
    max_failures: int = between(3, -1, 1000)
    """Restarts after worker failures (a crash, a node lost without notice); -1 = unlimited."""
    max_preemption_failures: int = between(-1, -1, 1000)
    """Restarts after node preemptions (a drain notice with a deadline, e.g. a spot reclaim); -1 = unlimited.

    Counted apart from max_failures. Each one costs at most the steps since the notice: the workers write
    a just-in-time checkpoint when they learn of it.
    """
    preemption_grace_s: float = between(0.0, 0.0, 3600.0)
    """How long the surviving workers may run past a preemption's deadline to finish that checkpoint."""
    gpu_memory_gb: Optional[float] = must(None, lambda v: 0 < v <= 100_000,
                                          "must be a positive number of GiB, got {value}")
    """Memory of one GPU, GiB, for `ltx-ray train`'s pre-flight estimate (unset: the driver's GPU, if any).

    The estimate warns, before any GPU is booked, when a run will not fit.
    """

    @property
    def min_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else int(self.num_workers[0])

    @property
    def max_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else int(self.num_workers[1])

    @property
    def elastic(self) -> bool:
        return self.min_workers != self.max_workers

    def world_sizes(self) -> list[int]:
        """The world sizes a run may (re)start with: the multiples of `workers_per_node` in [min, max]."""
        step = self.workers_per_node
        return [w for w in range(self.min_workers, self.max_workers + 1) if w % step == 0]

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-steps per optimizer step at `world_size`, so that every step trains on `global_batch_size`."""
        per_micro_step = self.micro_batch_size * world_size
        if self.global_batch_size is None or self.global_batch_size % per_micro_step:
            raise ValueError(f"Ray Train started {world_size} workers, over which cluster.global_batch_size="
                             f"{self.global_batch_size} cannot be split (micro-batch {self.micro_batch_size}); "
                             f"the run expects whole nodes of cluster.workers_per_node={self.workers_per_node}: "
                             f"{self.world_sizes()}")
        return self.global_batch_size // per_micro_step

    def check(self) -> list[Problem]:
        """The rules across the cluster's fields: whole nodes, a global batch every world size splits, GPUs
        booked when training on them."""
        problems = []
        if self.use_gpu and self.resources_per_worker.get("GPU", 1) <= 0:
            problems.append(Problem("cluster.resources_per_worker.GPU", "must be > 0 when use_gpu is true"))
        if not fine(self, "num_workers", "micro_batch_size", "gradient_accumulation_steps", "workers_per_node"):
            return problems  # reported by the fields' own rules
        per_node = self.workers_per_node
        if self.min_workers % per_node or self.max_workers % per_node:
            problems.append(Problem("cluster.num_workers", f"{_workers_text(self.num_workers)} must be whole "
                                                           f"nodes: multiples of cluster.workers_per_node={per_node}"))
            return problems
        batch, micro, sizes = self._global_batch(), self.micro_batch_size, self.world_sizes()
        bad = [w for w in sizes if batch % (micro * w)]
        if batch < 1 or bad:
            fits = [w for w in sizes if batch >= 1 and not batch % (micro * w)]
            step = micro * math.lcm(*sizes)
            problems.append(Problem(
                "cluster.global_batch_size",
                f"{batch} samples per step cannot be split evenly over "
                f"{', '.join(map(str, bad[:8]))}{' ...' if len(bad) > 8 else ''} worker(s) of micro-batch "
                f"{micro}, and cluster.num_workers={_workers_text(self.num_workers)} lets Ray Train run "
                f"on {'any count' if per_node == 1 else f'any multiple of cluster.workers_per_node={per_node}'} in "
                f"that range. Worker counts that divide it: {', '.join(map(str, fits)) or 'none'}; global batch "
                f"sizes that work for every count: multiples of {step} ({step}, {2 * step}, ...)",
            ))
        return problems

    def resolve(self) -> None:
        """`num_workers` as an int or a true [min, max] range; the global batch filled in."""
        self.num_workers = self.min_workers if not self.elastic else [self.min_workers, self.max_workers]
        self.global_batch_size = self._global_batch()

    def _global_batch(self) -> int:
        """`global_batch_size`, or its default when unset."""
        if self.global_batch_size is not None:
            return self.global_batch_size
        return self.micro_batch_size * self.gradient_accumulation_steps * self.max_workers


def _workers_text(n: Any) -> str:
    return f"[{n[0]}, {n[1]}]" if isinstance(n, (list, tuple)) else str(n)


# Where the spec is silent, the defaults of the next three sections are the official av2av recipe's:
# Lightricks' ltx-trainer `configs/av2av_ic_lora.yaml` (cited below as "av2av.yaml") and its trainer.


@dataclass
class OptimizerConfig:
    """AdamW and its schedule, beyond the request's steps and learning rate."""

    lr_scheduler: str = one_of("linear", "constant", "linear", "cosine")
    """The learning rate's schedule: "linear" decays to a tenth over the run, "cosine" to 0, "constant" holds.

    av2av.yaml `scheduler_type: linear`: torch's LinearLR from 1.0 to 0.1 of the learning rate over the
    run (ltx-trainer's default end factor).
    """
    warmup_steps: int = between(0, 0, 20000)
    """Steps of linear ramp from 0 before the schedule (the official recipe has none)."""
    weight_decay: float = 0.01
    """AdamW's weight decay.

    ltx-trainer builds `torch.optim.AdamW(params, lr=lr)`: torch's default weight decay.
    """
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm. av2av.yaml `max_grad_norm: 1.0`."""


@dataclass
class CheckpointConfig:
    """How often the run is checkpointed, and how many checkpoints it keeps."""

    every: int = between(250, 1, 20000)
    """Steps between checkpoints (one is also written after the last step). av2av.yaml `interval: 250`."""
    keep: int = between(3, 1, 100)
    """The newest checkpoints kept; older ones are deleted. av2av.yaml `keep_last_n: 3`."""


@dataclass
class PreviewConfig:
    """The validation previews during training, and how they and `ltx-ray generate` sample.

    They guide as the official validation does (av2av.yaml, with ltx-core's MultiModalGuider per
    modality, in x0 space): classifier-free guidance against `request.validation_negative_prompt`
    (`video_cfg_scale: 3.0`, `audio_cfg_scale: 7.0`); STG on `stg_blocks: [28]` of the 48-block model
    (scaled to the model's depth) at `request.stg_scale` for both modalities; `guidance_rescale: 0.7`;
    modality guidance against a pass with the audio<->video cross-attention skipped
    (`video/audio_modality_guidance_scale: 3.0`).
    """

    every: int = between(100, 1, 20000)
    """Steps between previews (one is also sampled after the last step). av2av.yaml `interval: 100`."""
    inference_steps: int = between(30, 1, 200)
    """Denoising steps of a preview and of `ltx-ray generate`. av2av.yaml `inference_steps: 30`."""
    video_cfg_scale: float = between(3.0, 1.0, 20.0)
    """Classifier-free guidance of the video against the negative prompt (1: none)."""
    audio_cfg_scale: float = between(7.0, 1.0, 20.0)
    """Classifier-free guidance of the audio against the negative prompt (1: none)."""
    stg_block: int = between(28, 0, 47)
    """The transformer block STG perturbs, counted in the 48-block model (placed at the model's depth)."""
    guidance_rescale: float = between(0.7, 0.0, 1.0)
    """How far the guided prediction's scale is pulled back to the conditional one's (0: not at all)."""
    video_modality_scale: float = between(3.0, 1.0, 20.0)
    """Video guidance against a pass with the audio<->video cross-attention skipped (1: none)."""
    audio_modality_scale: float = between(3.0, 1.0, 20.0)
    """Audio guidance against a pass with the audio<->video cross-attention skipped (1: none)."""
    batch_guidance: bool = True
    """Run a step's guidance passes as one batch (faster; that many times the activations).

    Applies in ZeRO-3 previews and `ltx-ray generate`; ZeRO-2 previews spread the passes over the ranks,
    one forward each.
    """


@dataclass
class TrainConfig:
    """Held-out pairs and the evaluation that tells whether the LoRA learns and uses its reference.

    With `holdout_pairs` > 0 the run evaluates at step 0, every `eval_every` steps and after the last:
    the av2av loss per modality at a fixed ladder of sigmas with fixed noise, on the held-out pairs and
    on as many training pairs, and again with each pair's reference swapped for another pair's
    (`eval/<split>/reference_gain_<modality>`). The checkpoint with the lowest held-out loss is kept and
    published as `ic_lora_av2av.best.safetensors`.
    """

    holdout_pairs: int = between(0, 0, 100)
    """Pairs cached with the others but never trained on, chosen by a stable hash of their names.

    The same archive always holds out the same pairs, whatever their order in the zip. 0: no held-out
    pair and no evaluation. At least one pair must be left to train on. Every rank holds the held-out
    pairs and as many training pairs in memory for the run.
    """
    eval_every: Optional[int] = must(None, lambda v: v is None or 1 <= v <= 20000, "must be between 1 and 20000, got {value}")
    """Steps between evaluations (one also runs at step 0 and after the last step). Unset: `preview.every`."""

    def evaluation_interval(self, preview_every: int) -> int:
        return self.eval_every if self.eval_every is not None else preview_every


@dataclass
class StorageConfig:
    """Where checkpoints, latents and outputs land: a local folder, s3:// or gs://."""

    storage_path: str = "./runs"
    """The root of every run's folder: a local path, s3://bucket/prefix or gs://bucket/prefix."""
    run_name: str = must("", lambda v: not v or (RUN_NAME.fullmatch(v) and v != DEFAULT_LATENT_CACHE),
                         lambda v: f"'{DEFAULT_LATENT_CACHE}' is the folder of the storage's latent cache: "
                                   "choose another name" if v == DEFAULT_LATENT_CACHE else
                                   "may contain only letters, digits, '.', '_' and '-' (max 128)")
    """The run's folder under storage_path. Empty: derived from the request, so re-running the same
    command resumes the same run."""
    latent_cache_path: str = ""
    """The latent cache the runs of this storage share (local path, s3:// or gs://; empty:
    <storage_path>/latents).

    Keyed by content: archive, model and preprocessing settings.
    """
    endpoint_override: Optional[str] = None
    """For S3-compatible stores (MinIO, moto, R2): their endpoint URL.

    Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from the config.
    """
    region: Optional[str] = None
    """The S3 region (for S3-compatible stores: theirs)."""
    retry_timeout_s: float = between(120.0, 0.0, 86400.0)
    """How long a read or write of the job's files retries transient errors before the job stops.

    Transient: connection refused/reset, timeouts, 5xx, throttling. Permanent errors stop it at once.
    """
    lease_timeout_s: float = between(60.0, 5.0, 86400.0)
    """After this long without a heartbeat a run's lease is taken over: its driver died.

    A driver holds its run with a lease (`<run>/_LEASE.json`) whose heartbeat it renews every quarter of
    this (taken over at once when that driver ran on the same machine and its process is gone).
    """


@dataclass
class TrackingConfig:
    """Weights & Biases reporting from rank 0."""

    project: str = "ltx-ray"
    """The W&B project."""
    entity: Optional[str] = None
    """The W&B entity, a team or user (unset: the API key's default)."""
    mode: str = one_of("auto", "auto", "online", "offline", "disabled")
    """auto: online when WANDB_API_KEY is set, offline otherwise."""


@dataclass
class JobConfig:
    """The whole job: the request plus model, cluster, optimizer, checkpoints, previews, evaluation, storage and
    tracking.

    A section's description is its class's docstring.
    """

    request: RequestConfig = field(default_factory=RequestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 42
    """Seeds the LoRA's initialisation, the batch order and every sample's noise and sigma."""

    def check(self, *, training: bool = True) -> list[Problem]:
        """Every problem of the job: each field's own rule, then each section's cross-field rules.

        Changes nothing. With `training=False` (`ltx-ray generate`, `estimate`) no training data is needed.
        """
        return [*field_problems(self), *self.request.check(training=training), *self.cluster.check()]

    def resolve(self) -> list[str]:
        """Snap and fill, on a job whose `check` found nothing; the warnings (snapped frame counts).

        Relative local paths become absolute against the directory the command runs in: Ray workers
        run in other directories (and on other nodes).
        """
        warnings = self.request.resolve()
        self.cluster.resolve()
        r = self.request
        r.training_data_url = _absolute(r.training_data_url)
        for sample in r.validation:
            sample.reference_video_url = _absolute(sample.reference_video_url)
            sample.reference_audio_url = _absolute(sample.reference_audio_url)
        self.model.checkpoint = _absolute(self.model.checkpoint)
        self.model.text_encoder = _absolute(self.model.text_encoder)
        self.model.video_vae = _absolute(self.model.video_vae)
        self.model.audio_vae = _absolute(self.model.audio_vae)
        self.storage.storage_path = _absolute(self.storage.storage_path)
        self.storage.latent_cache_path = _absolute(self.storage.latent_cache_path)
        return warnings


def _absolute(value: str | None) -> str | None:
    """A relative local path made absolute; URIs, absolute paths and empty values as they are."""
    if not value or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", value) or os.path.isabs(value):
        return value
    return os.path.abspath(os.path.expanduser(value))
