"""The job's typed configuration: one tree, one source of truth for every default.

`RequestConfig` is the public contract of SPEC-endpoint.md, field for field,
with the spec's names and defaults. The other sections are what a cluster job
needs beside it. Ranges and enums live in `RULES` / `ENUMS` below and are
enforced by `ltx_ray.config.load.check_rules`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

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

    training_data_url: str = MISSING
    trigger_phrase: str = ""
    rank: int = 32
    number_of_steps: int = 2000
    learning_rate: float = 0.0002
    reference_downscale_factor: int = 1
    reference_temporal_scale_factor: int = 1
    number_of_frames: int = 89
    frame_rate: int = 24
    resolution: str = "medium"
    aspect_ratio: str = "1:1"
    auto_scale_input: bool = False
    split_input_into_scenes: bool = False
    split_input_duration_threshold: float = 30.0
    audio_normalize: bool = True
    audio_preserve_pitch: bool = True
    validation: List[ValidationSample] = field(default_factory=list)
    validation_negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    validation_number_of_frames: int = 89
    validation_frame_rate: int = 24
    validation_resolution: str = "high"
    validation_aspect_ratio: str = "1:1"
    stg_scale: float = 1.0
    debug_dataset: bool = False


@dataclass
class ModelConfig:
    """Where the base model lives: an LTX-2.3 single-file checkpoint and a Gemma-3 directory."""

    checkpoint: str = "ltx-2.3-22b-dev.safetensors"
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
    use_gpu: bool = True
    resources_per_worker: Dict[str, float] = field(
        default_factory=lambda: {"CPU": 8.0, "GPU": 1.0}
    )
    zero_stage: int = 2
    # ltx-trainer av2av_ic_lora.yaml `enable_gradient_checkpointing: true` (each block recomputed in backward).
    gradient_checkpointing: bool = True
    micro_batch_size: int = 1
    # Ray Train workers one node holds (its GPUs; 1 for mixed or CPU nodes). An elastic run gains and
    # loses whole nodes, so its world sizes are the multiples of this in [min, max]: those are the
    # sizes `global_batch_size` must split over. min and max must be multiples of it.
    workers_per_node: int = 1
    # Used only for the default of `global_batch_size`: the accumulation of a run at `max` workers.
    gradient_accumulation_steps: int = 1
    # Samples per optimizer step, a property of the run, not of the cluster (default: micro_batch_size x
    # gradient_accumulation_steps x max workers). At every (re)start the accumulation is set so that
    # micro_batch_size x accumulation x world size equals it: every world size in [min, max] must divide
    # global_batch_size / micro_batch_size.
    global_batch_size: Optional[int] = None
    precision: str = "bf16"
    # Ray Data workers that decode clips, and encoder actors that turn them into latents.
    decode_workers: int = 4
    encode_actors: int = 1
    # Restarts after worker failures (a crash, a node lost without notice); -1 = unlimited.
    max_failures: int = 3
    # Restarts after node preemptions (a drain notice with a deadline, e.g. a spot reclaim), counted apart
    # from max_failures; -1 = unlimited. Each one costs at most the steps since the notice: the workers
    # write a just-in-time checkpoint when they learn of it.
    max_preemption_failures: int = -1
    # How long the surviving workers may run past a preemption's deadline to finish that checkpoint.
    preemption_grace_s: float = 0.0
    # Memory of one GPU, GiB, for `ltx-ray train`'s pre-flight estimate (unset: the driver's own GPU when it
    # has one, else no check). The estimate warns, before any GPU is booked, when a run will not fit.
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
    lr_scheduler: str = "linear"
    # The official recipe has no warmup; steps of linear ramp from 0 before the schedule.
    warmup_steps: int = 0
    # ltx-trainer builds `torch.optim.AdamW(params, lr=lr)`: torch's default weight decay.
    weight_decay: float = 0.01
    # av2av.yaml `max_grad_norm: 1.0`.
    max_grad_norm: float = 1.0
    # av2av.yaml checkpoints `interval: 250`, `keep_last_n: 3`.
    checkpoint_every: int = 250
    num_checkpoints_to_keep: int = 3
    # av2av.yaml validation `interval: 100`, `inference_steps: 30`.
    validation_every: int = 100
    validation_inference_steps: int = 30
    # How previews and `ltx-ray generate` guide, as the official validation does (av2av.yaml, with
    # ltx-core's MultiModalGuider per modality, in x0 space): classifier-free guidance against
    # `request.validation_negative_prompt` (`video_cfg_scale: 3.0`, `audio_cfg_scale: 7.0`); STG on
    # `stg_blocks: [28]` of the 48-block model (scaled to the model's depth) at `request.stg_scale`
    # for both modalities; `guidance_rescale: 0.7`; modality guidance against a pass with the
    # audio<->video cross-attention skipped (`video/audio_modality_guidance_scale: 3.0`).
    validation_video_cfg_scale: float = 3.0
    validation_audio_cfg_scale: float = 7.0
    validation_stg_block: int = 28
    validation_guidance_rescale: float = 0.7
    validation_video_modality_scale: float = 3.0
    validation_audio_modality_scale: float = 3.0
    # Run the guidance passes of a step as one batch (faster; that many times the activations).
    validation_batch_guidance: bool = True
    # Test hook: raise inside the worker loop once, at this step (0 = never).
    fail_at_step: int = 0


@dataclass
class StorageConfig:
    """Where checkpoints, latents and outputs land: a local folder, s3:// or gs://."""

    storage_path: str = "./runs"
    # Empty: derived from the request, so re-running the same command resumes the same run.
    run_name: str = ""
    # For S3-compatible stores (MinIO, moto, R2); credentials come from the environment.
    endpoint_override: Optional[str] = None
    region: Optional[str] = None
    # How long a read or write of the job's files retries transient errors (connection refused/reset,
    # timeouts, 5xx, throttling) before the job stops; permanent errors stop it at once.
    retry_timeout_s: float = 120.0
    # A driver holds its run with a lease (`<run>/_LEASE.json`) whose heartbeat it renews every quarter of
    # this; a lease not renewed for this long belongs to a driver that died, and the next one takes it over.
    lease_timeout_s: float = 60.0


@dataclass
class TrackingConfig:
    """Weights & Biases reporting from rank 0."""

    project: str = "ltx-ray"
    entity: Optional[str] = None
    # auto: online when WANDB_API_KEY is set, offline otherwise.
    mode: str = "auto"


@dataclass
class JobConfig:
    """The whole job: the request plus model, cluster, training, storage and tracking."""

    request: RequestConfig = field(default_factory=RequestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 42


# Closed ranges, inclusive, keyed by field path.
RULES: Dict[str, tuple[Any, Any]] = {
    "request.number_of_steps": (100, 20000),
    "request.reference_downscale_factor": (1, 8),
    "request.reference_temporal_scale_factor": (1, 8),
    "request.number_of_frames": (9, 121),
    "request.frame_rate": (8, 60),
    "request.split_input_duration_threshold": (1.0, 60.0),
    "request.validation_number_of_frames": (9, 121),
    "request.validation_frame_rate": (8, 60),
    "request.stg_scale": (0.0, 3.0),
    "cluster.micro_batch_size": (1, 64),
    "cluster.workers_per_node": (1, 64),
    "cluster.gradient_accumulation_steps": (1, 1024),
    "cluster.decode_workers": (1, 1024),
    "cluster.encode_actors": (1, 1024),
    "cluster.max_failures": (-1, 1000),
    "cluster.max_preemption_failures": (-1, 1000),
    "cluster.preemption_grace_s": (0.0, 3600.0),
    "train.warmup_steps": (0, 20000),
    "train.checkpoint_every": (1, 20000),
    "train.num_checkpoints_to_keep": (1, 100),
    "train.validation_every": (1, 20000),
    "train.validation_inference_steps": (1, 200),
    "train.validation_video_cfg_scale": (1.0, 20.0),
    "train.validation_audio_cfg_scale": (1.0, 20.0),
    "train.validation_stg_block": (0, 47),
    "train.validation_guidance_rescale": (0.0, 1.0),
    "train.validation_video_modality_scale": (1.0, 20.0),
    "train.validation_audio_modality_scale": (1.0, 20.0),
    "storage.retry_timeout_s": (0.0, 86400.0),
    "storage.lease_timeout_s": (5.0, 86400.0),
}

ENUMS: Dict[str, tuple] = {
    "request.rank": (8, 16, 32, 64, 128),
    "request.resolution": ("low", "medium", "high"),
    "request.aspect_ratio": ("16:9", "1:1", "9:16"),
    "request.validation_resolution": ("low", "medium", "high"),
    "request.validation_aspect_ratio": ("16:9", "1:1", "9:16"),
    "cluster.zero_stage": (2, 3),
    "cluster.precision": ("bf16", "fp32"),
    "train.lr_scheduler": ("constant", "linear", "cosine"),
    "tracking.mode": ("auto", "online", "offline", "disabled"),
}

MAX_VALIDATION_SAMPLES = 2
