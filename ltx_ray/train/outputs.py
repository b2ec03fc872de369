"""The job's outputs in `<storage_path>/<run>/outputs/`: the LoRA, its config file, the W&B run.

The four output names follow SPEC-endpoint.md: `lora_file`, `config_file`,
`video` (the validation reel) and `debug_dataset`. A run with held-out pairs
(`train.holdout_pairs`) adds `best_lora_file` (the LoRA of the checkpoint with the
lowest held-out loss, `ic_lora_av2av.best.safetensors`, described by `best.json`)
and `best_step`; `lora_file` stays the final step's.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ltx_ray.config.schema import JobConfig
from ltx_ray.model.lora import TRAINING_TYPE, LoraMetadata
from ltx_ray.run_store import RunStore
from ltx_ray.storage import join

log = logging.getLogger(__name__)

LORA_NAME = "ic_lora_av2av.safetensors"
BEST_LORA_NAME = "ic_lora_av2av.best.safetensors"
BEST_NAME = "best.json"
CONFIG_NAME = "config.json"
DEBUG_NAME = "debug_dataset.zip"


def config_file_content(job: JobConfig) -> dict[str, Any]:
    """The `config_file` output: what a user needs to run the LoRA at inference (the LoRA file's metadata, typed,
    and the clips it was trained on)."""
    r, meta = job.request, LoraMetadata.from_job(job)
    return {
        "training_type": TRAINING_TYPE,
        "trigger_phrase": meta.trigger_phrase,
        "rank": meta.rank,
        "alpha": meta.rank,
        "reference_downscale_factor": meta.reference_downscale_factor,
        "reference_temporal_scale_factor": meta.reference_temporal_scale_factor,
        "number_of_frames": r.number_of_frames,
        "frame_rate": r.frame_rate,
        "resolution": r.resolution,
        "aspect_ratio": r.aspect_ratio,
        "base_model": meta.base_model,
        "number_of_steps": r.number_of_steps,
        "learning_rate": r.learning_rate,
    }


def local_wandb_dir(run: str) -> str:
    """A node-local folder for the W&B run files of rank 0 (uploaded to outputs at the end)."""
    return os.path.join(tempfile.gettempdir(), "ltx-ray-wandb", run)


def publish(job: JobConfig, store: RunStore, checkpoint) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Copy the final LoRA out of the last checkpoint, and the best one with held-out pairs, and write the config
    file; returns the output URIs and the last held-out evaluation's summary (None without one).

    The LoRA file is the one `ltx_ray.model.lora.export_lora` wrote into the final checkpoint
    (`CheckpointWriter.submit`), copied byte for byte: the output is the checkpointed LoRA. The final
    checkpoint's progress says which checkpoint holds the best (`ltx_ray.train.checkpoint.prune` keeps it).
    """
    from ltx_ray.train.checkpoint import LORA_FILE, STATE_FILE

    result: dict[str, Any] = {"lora_file": None, "config_file": None, "video": None, "debug_dataset": None}
    target = store.output(LORA_NAME)
    store.copy(checkpoint.file_uri(LORA_FILE), target)
    result["lora_file"] = target
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / CONFIG_NAME
        cfg.write_text(json.dumps(config_file_content(job), indent=2))
        result["config_file"] = store.upload(cfg, store.output(CONFIG_NAME))
    from ltx_ray.sample.preview import REEL_NAME

    for key, name in (("video", REEL_NAME), ("debug_dataset", DEBUG_NAME)):
        if store.is_file(store.output(name)):
            result[key] = store.output(name)
    state = json.loads(store.read(checkpoint.file_uri(STATE_FILE)))
    result.update(_publish_best(store, state.get("best"), state.get("holdout") or []))
    return result, state.get("evaluation")


def _publish_best(store: RunStore, best: dict[str, Any] | None, held_out: list[str]) -> dict[str, Any]:
    """`best_lora_file` and `best_step`: the best checkpoint's LoRA copied out, with `best.json` beside it (its
    step, losses, checkpoint, and the held-out pairs it was judged on)."""
    from ltx_ray.train.checkpoint import LORA_FILE, step_uri

    if not best:
        return {"best_lora_file": None, "best_step": None}
    folder = step_uri(store, int(best["step"]))
    source = join(folder, LORA_FILE)
    if not store.is_file(source):
        # Pruning keeps it; only a resume from an older checkpoint (a newer one damaged) can name one pruned since.
        log.warning("the best checkpoint (step %s) is no longer in storage: no best LoRA is published", best["step"])
        for name in (BEST_LORA_NAME, BEST_NAME):  # an earlier publication's would name another step
            store.delete(store.output(name))
        return {"best_lora_file": None, "best_step": None}
    target = store.output(BEST_LORA_NAME)
    store.copy(source, target)
    store.write(store.output(BEST_NAME), json.dumps({**best, "checkpoint": folder,
                                                     "lora_file": target, "held_out_pairs": held_out},
                                                    indent=2).encode())
    return {"best_lora_file": target, "best_step": int(best["step"])}


def evaluation_summary(evaluation: dict[str, Any] | None, result: dict[str, Any]) -> list[str]:
    """The end-of-run lines about the held-out evaluation: its last figures, the best step, and a sentence per
    modality that barely depends on its reference."""
    from ltx_ray.train.evaluation import MODALITIES, reference_warnings

    if not evaluation:
        return []

    def figures(key: str) -> str:
        return ", ".join(f"{m} {evaluation[f'eval/holdout/{key}_{m}']:.4g}" for m in MODALITIES)

    lines = [f"Held-out evaluation at step {evaluation['step']}: loss {figures('loss')}; reference gain "
             f"{figures('reference_gain')} (wrong reference's loss / own; 1 = the reference is ignored)."]
    if result.get("best_step") is not None:
        lines.append(f"Lowest held-out loss at step {result['best_step']}: {result['best_lora_file']}")
    return lines + [f"Note: {w}." for w in reference_warnings(evaluation)]
