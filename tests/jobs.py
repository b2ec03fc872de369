"""Job configs for the tests of the distributed stages: the demo preset on the session's tiny inputs."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from ltx_ray.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def tiny_job(tiny_bundle, sample_dataset, storage_path: str, run_name: str, *overrides: str, validation: bool = False,
             steps: int | None = None):
    """conf/demo.yaml pointed at the session's tiny bundle and sample archive, in `storage_path`.

    `steps` replaces `request.number_of_steps` after loading: the spec's minimum (100) is for requests, and a
    test of a run needs a few (the `ltx-ray` command, which loads its own config, cannot go below it).
    """
    job, _ = load_config(ROOT / "conf" / "demo.yaml",
                         [*_tiny_items(tiny_bundle, sample_dataset, storage_path, run_name, validation), *overrides])
    if steps is not None:
        job.request.number_of_steps = steps
    return job


def tiny_command(command: str, tiny_bundle, sample_dataset, storage_path: str, run_name: str, *overrides: str,
                 validation: bool = False) -> list[str]:
    """The `ltx-ray <command>` line of the same job (`tiny_job`), for tests that run the CLI as a user does."""
    return [sys.executable, "-m", "ltx_ray", command, str(ROOT / "conf" / "demo.yaml"),
            *_tiny_items(tiny_bundle, sample_dataset, storage_path, run_name, validation), *overrides]


def _tiny_items(tiny_bundle, sample_dataset, storage_path: str, run_name: str, validation: bool) -> list[str]:
    items = [
        f"request.training_data_url={sample_dataset.archive}",
        f"model.checkpoint={tiny_bundle.checkpoint}",
        f"model.text_encoder={tiny_bundle.gemma_dir}",
        f"storage.storage_path={storage_path}",
        f"storage.run_name={run_name}",
        # One latent cache for the session, beside its sample archive (keyed by content, as a storage's cache is):
        # the first run of each setting preprocesses, every later one finds it. Tests that watch a cache being
        # built give their own (`storage.latent_cache_path=''`: `<storage_path>/latents`).
        f"storage.latent_cache_path={Path(sample_dataset.archive).parent / 'latents'}",
        "cluster.resources_per_worker={CPU: 0.5}",
        "cluster.decode_workers=2",
        "tracking.mode=offline",
        "train.holdout_pairs=0",  # the demo's 2 of its 10 pairs would leave the 3-pair sample archive 1 (a test may set it)
    ]
    if validation:
        items.append(f"request.validation=[{{prompt: 'av_st9le a moving square', reference_video_url: '{sample_dataset.validation_ref}'}}]")
    else:
        items.append("request.validation=[]")
    return items


def s3_overrides(endpoint: str) -> list[str]:
    """Overrides that point storage at a moto S3 endpoint."""
    return [f"storage.endpoint_override={endpoint}", "storage.region=us-east-1"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the Ray heads the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
