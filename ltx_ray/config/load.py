"""Load a job config from YAML plus dotlist overrides, and check every rule of the spec.

All problems are collected and raised together as one `ConfigError`, so a
user fixes a request in one round trip, as with the endpoint's 422.
"""

from __future__ import annotations

import hashlib
import json
import math
import logging
import os
import re
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import FloatNode

from ltx_ray.config.resolution import (
    SPATIAL_COMPRESSION,
    TEMPORAL_COMPRESSION,
    bucket_size,
    snap_frames,
)
from ltx_ray.config.schema import (
    ENUMS,
    MAX_VALIDATION_SAMPLES,
    RULES,
    JobConfig,
    ValidationSample,
)
from ltx_ray.errors import ConfigError, Problem

log = logging.getLogger(__name__)

# Field names that may hold a secret; their values never appear in a dump.
_SECRET_NAME = re.compile(r"(key|secret|token|password|credential)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@]+@", re.IGNORECASE)
REDACTED = "<redacted>"


def load_config(
    path: str | Path | None, overrides: Sequence[str] = (), *, training: bool = True
) -> tuple[JobConfig, list[str]]:
    """Build a validated `JobConfig` from a YAML file and `key=value` overrides.

    Returns the config and the warnings it produced (snapped frame counts,
    ...). Raises `ConfigError` listing every problem at once. With
    `training=False` (`ltx-ray generate`) no training data is required.
    """
    problems: list[Problem] = []
    user = OmegaConf.create()
    if path is not None:
        try:
            data = yaml.load(Path(path).read_text(), Loader=_YamlLoader)
        except FileNotFoundError:
            raise ConfigError(Problem(str(path), "config file not found")) from None
        except yaml.YAMLError as exc:
            raise ConfigError(Problem(str(path), f"cannot parse YAML: {exc}")) from None
        if not isinstance(data, dict):
            raise ConfigError(Problem(str(path), "the top level must be a mapping"))
        user = OmegaConf.create(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(Problem(item, "an override must read key=value"))
        try:
            OmegaConf.update(user, key, yaml.load(text, Loader=_YamlLoader), force_add=True)
        except (yaml.YAMLError, OmegaConfBaseException) as exc:
            raise ConfigError(Problem(key, f"cannot parse override {text!r}: {exc}")) from None

    cfg = OmegaConf.structured(JobConfig)
    _merge_leaves(cfg, user, "", problems)
    if OmegaConf.is_missing(cfg.request, "training_data_url"):
        if training:
            problems.append(Problem("request.training_data_url", "is required"))
        else:
            cfg.request.training_data_url = ""
    if problems:
        raise ConfigError(problems)
    job: JobConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    warnings = check_rules(job, problems, training=training)
    if problems:
        raise ConfigError(problems)
    _absolutize_local_paths(job)
    for w in warnings:
        log.warning(w)
    return job, warnings


def _absolutize_local_paths(job: JobConfig) -> None:
    """Make relative local paths absolute, against the directory the command runs in.

    Ray workers run in other directories (and on other nodes), so a path that
    reaches them must not depend on their working directory.
    """

    def fix(value: str | None) -> str | None:
        if not value or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", value) or os.path.isabs(value):
            return value
        return os.path.abspath(os.path.expanduser(value))

    r = job.request
    r.training_data_url = fix(r.training_data_url)
    for sample in r.validation:
        sample.reference_video_url = fix(sample.reference_video_url)
        sample.reference_audio_url = fix(sample.reference_audio_url)
    job.model.checkpoint = fix(job.model.checkpoint)
    job.model.text_encoder = fix(job.model.text_encoder)
    job.storage.storage_path = fix(job.storage.storage_path)


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 without sexagesimal numbers, so that `aspect_ratio: 16:9` stays a string."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789"))
_YamlLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _merge_leaves(target: DictConfig, source: Any, prefix: str, problems: list[Problem]) -> None:
    """Copy `source` into the structured `target` key by key, recording each type error."""
    if not isinstance(source, DictConfig):
        problems.append(Problem(prefix.rstrip(".") or "<root>", "must be a mapping"))
        return
    for key in source.keys():
        where = f"{prefix}{key}"
        if key not in list(target.keys()):
            problems.append(Problem(where, "unknown field"))
            continue
        value = source._get_node(key)
        if where == "request.validation":
            target[key] = _validation_list(value, where, problems)
            continue
        current = target._get_node(key)
        if isinstance(current, DictConfig) and current._metadata.object_type not in (None, dict):
            _merge_leaves(current, value, where + ".", problems)
            continue
        try:
            target[key] = _as_declared(current, source[key])
        except OmegaConfBaseException as exc:
            problems.append(Problem(where, _type_message(exc, value)))


def _as_declared(current: Any, value: Any) -> Any:
    """An int given where the schema declares a float (or a mapping of floats), as that float.

    Said here rather than left to OmegaConf: 2.4 deprecates its implicit int -> float conversion.
    """
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if isinstance(current, FloatNode) and is_int(value):
        return float(value)
    if isinstance(current, DictConfig) and current._metadata.element_type is float and isinstance(value, DictConfig):
        return {k: float(v) if is_int(v) else v for k, v in value.items()}
    return value


def _validation_list(value: Any, where: str, problems: list[Problem]) -> list:
    """Validation samples: a list of at most two mappings, each with a reference video."""
    if value is None or (hasattr(value, "_is_none") and value._is_none()):
        return []
    if not isinstance(value, ListConfig):
        problems.append(Problem(where, "must be a list of {prompt, reference_video_url, reference_audio_url}"))
        return []
    if len(value) > MAX_VALIDATION_SAMPLES:
        problems.append(
            Problem(where, f"at most {MAX_VALIDATION_SAMPLES} validation samples are allowed, got {len(value)}")
        )
    samples = []
    for i, item in enumerate(value):
        sample = OmegaConf.structured(ValidationSample)
        _merge_leaves(sample, item, f"{where}[{i}].", problems)
        if OmegaConf.is_missing(sample, "reference_video_url") or not str(sample.reference_video_url).strip():
            problems.append(Problem(f"{where}[{i}].reference_video_url", "is required"))
        samples.append(sample)
    return samples


def _type_message(exc: OmegaConfBaseException, value: Any) -> str:
    msg = str(exc).splitlines()[0]
    return f"invalid value {value!r} ({msg})"


def check_rules(job: JobConfig, problems: list[Problem], *, training: bool = True) -> list[str]:
    """Apply every range, enum and cross-field rule of the spec; snap frame counts in place.

    Appends problems to `problems` and returns warnings.
    """
    warnings: list[str] = []
    r = job.request

    if training and not str(r.training_data_url).strip():
        problems.append(Problem("request.training_data_url", "is required"))

    for path, (lo, hi) in RULES.items():
        value = _get(job, path)
        if not lo <= value <= hi:
            problems.append(Problem(path, f"must be between {lo} and {hi}, got {value}"))
    for path, allowed in ENUMS.items():
        value = _get(job, path)
        if value not in allowed:
            choices = ", ".join(str(a) for a in allowed)
            problems.append(Problem(path, f"must be one of {choices}, got {value!r}"))

    if not 0 < r.learning_rate <= 1:
        problems.append(Problem("request.learning_rate", f"must be in (0, 1], got {r.learning_rate}"))

    if r.split_input_into_scenes:
        problems.append(
            Problem(
                "request.split_input_into_scenes",
                "is not available for av2av: scene splitting would desync the reference/target pair. "
                "Provide pre-split clips instead.",
            )
        )

    # Frame counts: out of range is an error (above); otherwise snap down to 8k+1.
    for name in ("number_of_frames", "validation_number_of_frames"):
        frames = getattr(r, name)
        lo, hi = RULES[f"request.{name}"]
        if lo <= frames <= hi and frames % TEMPORAL_COMPRESSION != 1:
            snapped = snap_frames(frames)
            warnings.append(
                f"request.{name}: {frames} is not of the form 8k+1; snapped down to {snapped}"
            )
            setattr(r, name, snapped)

    _check_downscale(job, problems)
    _check_temporal(job, problems)
    _check_workers(job, problems)

    if job.cluster.use_gpu and "GPU" in job.cluster.resources_per_worker:
        if job.cluster.resources_per_worker["GPU"] <= 0:
            problems.append(Problem("cluster.resources_per_worker.GPU", "must be > 0 when use_gpu is true"))
    if job.cluster.gpu_memory_gb is not None and not 0 < job.cluster.gpu_memory_gb <= 100_000:
        problems.append(Problem("cluster.gpu_memory_gb", f"must be a positive number of GiB, got {job.cluster.gpu_memory_gb}"))
    if job.storage.run_name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", job.storage.run_name):
        problems.append(
            Problem("storage.run_name", "may contain only letters, digits, '.', '_' and '-' (max 128)")
        )
    return warnings


def _check_downscale(job: JobConfig, problems: list[Problem]) -> None:
    r = job.request
    problems += downscale_problems("request.reference_downscale_factor", r.reference_downscale_factor, {
        "training": (r.resolution, r.aspect_ratio),
        "validation": (r.validation_resolution, r.validation_aspect_ratio),
    })


def downscale_problems(where: str, f: int, buckets: dict[str, tuple[str, str]]) -> list[Problem]:
    """Why reference downscale factor `f` does not fit the (resolution, aspect ratio) `buckets`, by label."""
    problems: list[Problem] = []
    lo, hi = RULES["request.reference_downscale_factor"]
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


def _check_temporal(job: JobConfig, problems: list[Problem]) -> None:
    r = job.request
    problems += temporal_problems("request.reference_temporal_scale_factor", r.reference_temporal_scale_factor, {
        "number_of_frames": r.number_of_frames,
        "validation_number_of_frames": r.validation_number_of_frames,
    })


def temporal_problems(where: str, k: int, frame_counts: dict[str, int]) -> list[Problem]:
    """Why reference temporal factor `k` does not fit the frame counts, by field name."""
    problems: list[Problem] = []
    lo, hi = RULES["request.reference_temporal_scale_factor"]
    if not lo <= k <= hi:
        return problems  # reported as out of range
    fewest, most = RULES["request.number_of_frames"]  # validation_number_of_frames declares the same
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


MAX_WORKERS = 4096


def _check_workers(job: JobConfig, problems: list[Problem]) -> None:
    """`num_workers` is an int or [min, max]; every world size in that range must divide the global batch.

    Normalises `num_workers` (a [n, n] range becomes n) and fills the default `global_batch_size`.
    """
    c = job.cluster
    n = c.num_workers
    if isinstance(n, (list, tuple)) and len(n) == 2 and all(type(x) is int for x in n):
        lo, hi = int(n[0]), int(n[1])
        if not 1 <= lo <= hi <= MAX_WORKERS:
            problems.append(Problem("cluster.num_workers", f"[min, max] must have 1 <= min <= max <= {MAX_WORKERS}, "
                                                           f"got [{lo}, {hi}]"))
            return
        c.num_workers = lo if lo == hi else [lo, hi]
    elif type(n) is int:
        if not 1 <= n <= MAX_WORKERS:
            problems.append(Problem("cluster.num_workers", f"must be between 1 and {MAX_WORKERS}, got {n}"))
            return
    else:
        problems.append(Problem("cluster.num_workers", f"must be a number of workers or [min, max], got {n!r}"))
        return
    if not 1 <= c.micro_batch_size <= 64 or not 1 <= c.gradient_accumulation_steps <= 1024 \
            or not 1 <= c.workers_per_node <= 64:
        return  # reported by the range rules
    per_node = c.workers_per_node
    if c.min_workers % per_node or c.max_workers % per_node:
        problems.append(Problem("cluster.num_workers", f"{_workers_text(c.num_workers)} must be whole nodes: "
                                                       f"multiples of cluster.workers_per_node={per_node}"))
        return
    if c.global_batch_size is None:
        c.global_batch_size = c.micro_batch_size * c.gradient_accumulation_steps * c.max_workers
    sizes = c.world_sizes()
    bad = [w for w in sizes if c.global_batch_size % (c.micro_batch_size * w)]
    if c.global_batch_size < 1 or bad:
        fits = [w for w in sizes if c.global_batch_size >= 1 and not c.global_batch_size % (c.micro_batch_size * w)]
        step = c.micro_batch_size * math.lcm(*sizes)
        problems.append(Problem(
            "cluster.global_batch_size",
            f"{c.global_batch_size} samples per step cannot be split evenly over "
            f"{', '.join(map(str, bad[:8]))}{' ...' if len(bad) > 8 else ''} worker(s) of micro-batch "
            f"{c.micro_batch_size}, and cluster.num_workers={_workers_text(c.num_workers)} lets Ray Train run "
            f"on {'any count' if per_node == 1 else f'any multiple of cluster.workers_per_node={per_node}'} in "
            f"that range. Worker counts that divide it: {', '.join(map(str, fits)) or 'none'}; global batch "
            f"sizes that work for every count: multiples of {step} ({step}, {2 * step}, ...)",
        ))


def _workers_text(n: Any) -> str:
    return f"[{n[0]}, {n[1]}]" if isinstance(n, (list, tuple)) else str(n)


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def to_plain(job: Any) -> Any:
    """A dataclass tree as plain dicts and lists."""
    return asdict(job) if is_dataclass(job) else job


def redact(data: Any, _name: str = "") -> Any:
    """A copy of a plain config tree with secrets removed.

    Fields whose name suggests a secret are blanked; URLs lose embedded
    credentials and their query string (presigned URLs carry signatures there).
    """
    if isinstance(data, dict):
        return {k: redact(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v, _name) for v in data]
    if isinstance(data, str):
        if _SECRET_NAME.search(_name) and data:
            return REDACTED
        if "://" in data:
            data = redact_url(data)
    return data


def redact_url(url: str) -> str:
    """`url` as it may be shown: without embedded credentials or query string (presigned URLs sign there).

    Every message, log line and output that names a user's URL goes through this.
    """
    url = _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", url)
    if "?" in url:
        url = url.split("?", 1)[0] + "?" + REDACTED
    return url


def dump_yaml(job: JobConfig) -> str:
    """The resolved config as YAML, with secrets redacted."""
    return OmegaConf.to_yaml(OmegaConf.create(redact(to_plain(job))))


def run_name(job: JobConfig) -> str:
    """The run's name: the configured one, or a stable digest of the request and model.

    Stable so that re-running the same command finds and resumes the same run.
    """
    if job.storage.run_name:
        return job.storage.run_name
    identity = {"request": to_plain(job.request), "model": to_plain(job.model), "seed": job.seed}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"av2av-{digest}"


__all__ = ["load_config", "check_rules", "dump_yaml", "redact", "redact_url", "run_name", "to_plain"]
