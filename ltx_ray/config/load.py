"""Load a job config: YAML plus dotlist overrides, merged onto the schema with its types, then checked
(`JobConfig.check`) and resolved (`JobConfig.resolve`).

All problems are collected and raised together as one `ConfigError`, so a
user fixes a request in one round trip, as with the endpoint's 422.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import FloatNode

from ltx_ray.config.schema import JobConfig, ValidationSample
from ltx_ray.errors import ConfigError, Problem

log = logging.getLogger(__name__)


def load_config(
    path: str | Path | None, overrides: Sequence[str] = (), *, training: bool = True
) -> tuple[JobConfig, list[str]]:
    """Build a checked, resolved `JobConfig` from a YAML file and `key=value` overrides.

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
    if problems:
        raise ConfigError(problems)
    if OmegaConf.is_missing(cfg.request, "training_data_url"):
        cfg.request.training_data_url = ""  # required when training: `RequestConfig.check` says so
    job: JobConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    problems = job.check(training=training)
    if problems:
        raise ConfigError(problems)
    warnings = job.resolve()
    for w in warnings:
        log.warning(w)
    return job, warnings


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
    """Validation samples: a list of mappings (their count and each one's reference video are the
    schema's rules)."""
    if value is None or (hasattr(value, "_is_none") and value._is_none()):
        return []
    if not isinstance(value, ListConfig):
        problems.append(Problem(where, "must be a list of {prompt, reference_video_url, reference_audio_url}"))
        return []
    samples = []
    for i, item in enumerate(value):
        sample = OmegaConf.structured(ValidationSample)
        _merge_leaves(sample, item, f"{where}[{i}].", problems)
        if OmegaConf.is_missing(sample, "reference_video_url"):
            sample.reference_video_url = ""
        samples.append(sample)
    return samples


def _type_message(exc: OmegaConfBaseException, value: Any) -> str:
    msg = str(exc).splitlines()[0]
    return f"invalid value {value!r} ({msg})"


__all__ = ["load_config"]
