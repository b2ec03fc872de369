"""The job's typed configuration: one tree, one source of truth for every default.

`RequestConfig` is the public contract of SPEC-endpoint.md, field for field,
with the spec's names and defaults. The other sections are what a cluster job
needs beside it. Every field says what it is beside it, and a field with a range
or a closed set of values declares it there (`between`, `one_of`); `RULES` and
`ENUMS`, read off the fields, are what `ltx_ray.config.load.check_rules` enforces
with the rules that span fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from omegaconf import MISSING



def between(default: Any, lo: Any, hi: Any) -> Any:
    """A field whose value must lie in [lo, hi] (inclusive)."""
    return field(default=default, metadata={"range": (lo, hi)})


def one_of(default: Any, *choices: Any) -> Any:
    """A field whose value must be one of `choices`."""
    return field(default=default, metadata={"choices": choices})


DEFAULT_NEGATIVE_PROMPT = (
    "worst quality, low quality, blurry, out of focus, jittery, inconsistent motion, "
    "flickering, distorted, deformed, disfigured, morphing, warped faces, extra limbs, "
    "watermark, text, logo, subtitles, compression artifacts, static frame, "
    "muffled audio, distorted audio, clipping, noise, hiss, off-sync sound"
)


@dataclass
class ValidationSample:
    """One validation preview: a prompt and the reference clip (and optional audio) to transform."""

    prompt: str = ""
    reference_video_url: str = MISSING
    reference_audio_url: Optional[str] = None


@dataclass
class RequestConfig:
    """The training request, exactly as SPEC-endpoint.md names and defaults it."""

    # URL of the .zip of <name>_start / <name>_end clip pairs (with audio) and optional <name>.txt captions.
    training_data_url: str = MISSING
    # Prepended to every caption in training; include it at inference.
    trigger_phrase: str = ""
    # LoRA rank: the adapter's capacity.
    rank: int = one_of(32, 8, 16, 32, 64, 128)
    # Optimizer steps.
    number_of_steps: int = between(2000, 100, 20000)
    # AdamW's step size; in (0, 1] (checked in `check_rules`).
    learning_rate: float = 0.0002
    # Spatial downscale of the reference video before encoding (1: none). Width and height must divide by
    # it and give multiples of 32, at the training and the validation resolution (`check_rules`).
    reference_downscale_factor: int = between(1, 1, 8)
    # Temporal subsampling of the reference video (1: none). (frames - 1) must divide by it, leaving a
    # multiple of 8, for both frame counts (`check_rules`).
    reference_temporal_scale_factor: int = between(1, 1, 8)
    # Frames per training clip, 8k+1 (other values are snapped down).
    number_of_frames: int = between(89, 9, 121)
    # Frames per second the clips are fitted to.
    frame_rate: int = between(24, 8, 60)
    # The training resolution bucket, with `aspect_ratio` (`ltx_ray.config.resolution`).
    resolution: str = one_of("medium", "low", "medium", "high")
    aspect_ratio: str = one_of("1:1", "16:9", "1:1", "9:16")
    # Resample clips shorter than `number_of_frames` instead of skipping their pair.
    auto_scale_input: bool = False
    # Refused for av2av: scene splitting would desync a pair. Kept for the spec's field set.
    split_input_into_scenes: bool = False
    split_input_duration_threshold: float = between(30.0, 1.0, 60.0)
    # Peak-normalize each clip's audio.
    audio_normalize: bool = True
    # Keep the pitch when audio is stretched to the video's duration.
    audio_preserve_pitch: bool = True
    # At most two previews (`ValidationSample`), sampled every `train.validation_every` steps.
    validation: List[ValidationSample] = field(default_factory=list)
    validation_negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    # The previews' length, rate and bucket (8k+1 frames, snapped down like `number_of_frames`).
    validation_number_of_frames: int = between(89, 9, 121)
    validation_frame_rate: int = between(24, 8, 60)
    validation_resolution: str = one_of("high", "low", "medium", "high")
    validation_aspect_ratio: str = one_of("1:1", "16:9", "1:1", "9:16")
    # Spatio-temporal guidance strength of the previews (both modalities).
    stg_scale: float = between(1.0, 0.0, 3.0)
    # Also return the fitted clips as a zip (outputs/debug_dataset.zip).
    debug_dataset: bool = False


@dataclass
class ModelConfig:
    """Where the base model lives: an LTX-2.3 single-file checkpoint and a Gemma-3 directory."""

    # The LTX-2.3 single-file checkpoint (local path or URL): transformer, VAEs, vocoder, connectors.
    checkpoint: str = "ltx-2.3-22b-dev.safetensors"
    # The Gemma-3 directory (local path or URL) ltx-core's text encoder runs on.
    text_encoder: str = "gemma-3-12b-it"
    # The attentions whose to_q/to_k/to_v/to_out.0 get a LoRA, in every block. Default: all six,
    # audio<->video cross-attention included, as the official av2av recipe trains them
    # (ltx-trainer configs/av2av_ic_lora.yaml); a shorter list narrows it.
    lora_targets: List[str] = field(
        default_factory=lambda: [
            "attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn",
        ]
    )
    # Also the feed-forward layers (not in the official recipe).
    lora_include_feed_forward: bool = False


@dataclass
class ClusterConfig:
    """How the work is spread: Ray Train workers and DeepSpeed ZeRO."""

    # Ray Train workers (ranks, one GPU each): an int, or `[min, max]` for an elastic run. Elastic, Ray
    # Train starts once `min` workers can be placed, restarts with fewer after a node is lost and grows
    # back towards `max` when capacity returns; each (re)start resumes from the latest checkpoint.
    num_workers: Any = 8
    # Train on GPUs (NCCL, the CUDA accelerator); false trains on CPUs (gloo), as the tests and the demo do.
    use_gpu: bool = True
    # Ray resources each training worker books (CPU, GPU and any custom ones, e.g. a node label).
    resources_per_worker: Dict[str, float] = field(
        default_factory=lambda: {"CPU": 8.0, "GPU": 1.0}
    )
    # DeepSpeed ZeRO stage: 2 shards optimizer state and gradients; 3 also the base model's weights,
    # loaded partitioned (`ltx_ray.train.zero3`), for models one GPU cannot hold.
    zero_stage: int = one_of(2, 2, 3)
    # ltx-trainer av2av_ic_lora.yaml `enable_gradient_checkpointing: true` (each block recomputed in backward).
    gradient_checkpointing: bool = True
    # Samples per rank per micro-step.
    micro_batch_size: int = between(1, 1, 64)
    # Ray Train workers one node holds (its GPUs; 1 for mixed or CPU nodes). An elastic run gains and
    # loses whole nodes, so its world sizes are the multiples of this in [min, max]: those are the
    # sizes `global_batch_size` must split over. min and max must be multiples of it.
    workers_per_node: int = between(1, 1, 64)
    # Used only for the default of `global_batch_size`: the accumulation of a run at `max` workers.
    gradient_accumulation_steps: int = between(1, 1, 1024)
    # Samples per optimizer step, a property of the run, not of the cluster (default: micro_batch_size x
    # gradient_accumulation_steps x max workers). At every (re)start the accumulation is set so that
    # micro_batch_size x accumulation x world size equals it: every world size in [min, max] must divide
    # global_batch_size / micro_batch_size.
    global_batch_size: Optional[int] = None
    # Training precision of the base model, the LoRA and the encoders (fp32 for CPU tests).
    precision: str = one_of("bf16", "bf16", "fp32")
    # Ray Data workers that decode clips, and encoder actors that turn them into latents.
    decode_workers: int = between(4, 1, 1024)
    encode_actors: int = between(1, 1, 1024)
    # Restarts after worker failures (a crash, a node lost without notice); -1 = unlimited.
    max_failures: int = between(3, -1, 1000)
    # Restarts after node preemptions (a drain notice with a deadline, e.g. a spot reclaim), counted apart
    # from max_failures; -1 = unlimited. Each one costs at most the steps since the notice: the workers
    # write a just-in-time checkpoint when they learn of it.
    max_preemption_failures: int = between(-1, -1, 1000)
    # How long the surviving workers may run past a preemption's deadline to finish that checkpoint.
    preemption_grace_s: float = between(0.0, 0.0, 3600.0)
    # Memory of one GPU, GiB, for `ltx-ray train`'s pre-flight estimate (unset: the driver's own GPU when it
    # has one, else no check). The estimate warns, before any GPU is booked, when a run will not fit.
    # Positive (checked in `check_rules`).
    gpu_memory_gb: Optional[float] = None

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


@dataclass
class TrainConfig:
    """The optimisation schedule beyond the request's steps and learning rate.

    Where the spec is silent, the defaults are the official av2av recipe's: Lightricks'
    ltx-trainer `configs/av2av_ic_lora.yaml` (cited below as "av2av.yaml") and its trainer.
    """

    # av2av.yaml `scheduler_type: linear`: torch's LinearLR from 1.0 to 0.1 of the learning rate
    # over the run (ltx-trainer's default end factor). "cosine" decays to 0; "constant" holds.
    lr_scheduler: str = one_of("linear", "constant", "linear", "cosine")
    # The official recipe has no warmup; steps of linear ramp from 0 before the schedule.
    warmup_steps: int = between(0, 0, 20000)
    # ltx-trainer builds `torch.optim.AdamW(params, lr=lr)`: torch's default weight decay.
    weight_decay: float = 0.01
    # av2av.yaml `max_grad_norm: 1.0`.
    max_grad_norm: float = 1.0
    # av2av.yaml checkpoints `interval: 250`, `keep_last_n: 3`.
    checkpoint_every: int = between(250, 1, 20000)
    num_checkpoints_to_keep: int = between(3, 1, 100)
    # av2av.yaml validation `interval: 100`, `inference_steps: 30`.
    validation_every: int = between(100, 1, 20000)
    validation_inference_steps: int = between(30, 1, 200)
    # How previews and `ltx-ray generate` guide, as the official validation does (av2av.yaml, with
    # ltx-core's MultiModalGuider per modality, in x0 space): classifier-free guidance against
    # `request.validation_negative_prompt` (`video_cfg_scale: 3.0`, `audio_cfg_scale: 7.0`); STG on
    # `stg_blocks: [28]` of the 48-block model (scaled to the model's depth) at `request.stg_scale`
    # for both modalities; `guidance_rescale: 0.7`; modality guidance against a pass with the
    # audio<->video cross-attention skipped (`video/audio_modality_guidance_scale: 3.0`).
    validation_video_cfg_scale: float = between(3.0, 1.0, 20.0)
    validation_audio_cfg_scale: float = between(7.0, 1.0, 20.0)
    validation_stg_block: int = between(28, 0, 47)
    validation_guidance_rescale: float = between(0.7, 0.0, 1.0)
    validation_video_modality_scale: float = between(3.0, 1.0, 20.0)
    validation_audio_modality_scale: float = between(3.0, 1.0, 20.0)
    # Run the guidance passes of a step as one batch (faster; that many times the activations): in ZeRO-3
    # previews and `ltx-ray generate`. ZeRO-2 previews spread the passes over the ranks, one forward each.
    validation_batch_guidance: bool = True
    # Test hook: after this step, kill the last rank's process (SIGKILL, as a crashed node), once, in an
    # attempt that started from step 0 (0 = never).
    fail_at_step: int = 0


@dataclass
class StorageConfig:
    """Where checkpoints, latents and outputs land: a local folder, s3:// or gs://."""

    # The root of every run's folder: a local path, s3://bucket/prefix or gs://bucket/prefix.
    storage_path: str = "./runs"
    # Empty: derived from the request, so re-running the same command resumes the same run.
    run_name: str = ""
    # For S3-compatible stores (MinIO, moto, R2): their endpoint URL and region; credentials come from
    # the environment (AWS_ACCESS_KEY_ID, ...), never from the config.
    endpoint_override: Optional[str] = None
    region: Optional[str] = None
    # How long a read or write of the job's files retries transient errors (connection refused/reset,
    # timeouts, 5xx, throttling) before the job stops; permanent errors stop it at once.
    retry_timeout_s: float = between(120.0, 0.0, 86400.0)
    # A driver holds its run with a lease (`<run>/_LEASE.json`) whose heartbeat it renews every quarter of
    # this; a lease not renewed for this long belongs to a driver that died, and the next one takes it over.
    lease_timeout_s: float = between(60.0, 5.0, 86400.0)


@dataclass
class TrackingConfig:
    """Weights & Biases reporting from rank 0."""

    # The W&B project and entity (team or user; unset: the API key's default).
    project: str = "ltx-ray"
    entity: Optional[str] = None
    # auto: online when WANDB_API_KEY is set, offline otherwise.
    mode: str = one_of("auto", "auto", "online", "offline", "disabled")


@dataclass
class JobConfig:
    """The whole job: the request plus model, cluster, training, storage and tracking."""

    request: RequestConfig = field(default_factory=RequestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # Seeds the LoRA's initialisation, the batch order and every sample's noise and sigma.
    seed: int = 42


def _declared(cls: type, key: str, prefix: str = "") -> Dict[str, Any]:
    """Each field's `key` metadata under `cls`, by dotted path, sections included."""
    out: Dict[str, Any] = {}
    for f in fields(cls):
        if key in f.metadata:
            out[prefix + f.name] = f.metadata[key]
        if f.default_factory is not dataclasses.MISSING and is_dataclass(f.default_factory):
            out.update(_declared(f.default_factory, key, f"{prefix}{f.name}."))
    return out

# Closed ranges (inclusive) and closed sets of values, keyed by field path: read off the fields above.
RULES: Dict[str, tuple[Any, Any]] = _declared(JobConfig, "range")
ENUMS: Dict[str, tuple] = _declared(JobConfig, "choices")

MAX_VALIDATION_SAMPLES = 2
