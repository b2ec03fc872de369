"""How a config, and any URL a user gave, is shown: secrets redacted, as YAML or explained field by field."""

from __future__ import annotations

import re
from dataclasses import asdict, fields, is_dataclass
from typing import Any, Iterator

import yaml
from omegaconf import OmegaConf

from ltx_ray.config.fields import descriptions, shown_rule, summary

# Field names that may hold a secret; their values never appear in a dump.
_SECRET_NAME = re.compile(r"(key|secret|token|password|credential)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@]+@", re.IGNORECASE)
REDACTED = "<redacted>"


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


def dump_yaml(job: Any) -> str:
    """The resolved config as YAML, with secrets redacted."""
    return OmegaConf.to_yaml(OmegaConf.create(redact(to_plain(job))))


def explain(job: Any) -> str:
    """Every field of the resolved config as an override (`path=value`, secrets redacted), each with its
    one-line description and its rule: `--help` for the config."""
    lines: list[str] = []
    for path, value, doc, rule in _leaves(job, redact(to_plain(job)), ""):
        if doc is None:  # a section
            lines += ["", f"# {path}: {value}"]
            continue
        lines.append(f"{path}={_flow(value)}")
        lines.append(f"    {doc}" + (f" Must be {rule}." if rule else ""))
    return "\n".join(lines).lstrip("\n") + "\n"


def _leaves(obj: Any, plain: dict, prefix: str) -> Iterator[tuple[str, Any, str | None, str | None]]:
    """(path, shown value, description, rule) of each field under the dataclass `obj`, whose redacted
    plain tree is `plain`; a nested section first yields (path, its description, None, None)."""
    docs = descriptions(type(obj))
    for f in fields(obj):
        path, value = prefix + f.name, getattr(obj, f.name)
        if is_dataclass(value):
            yield path, summary(type(value).__doc__), None, None
            yield from _leaves(value, plain[f.name], path + ".")
            continue
        yield path, plain[f.name], docs.get(f.name, ""), shown_rule(f)
        if isinstance(value, list):
            for i, item in enumerate(value):
                if is_dataclass(item):
                    yield from _leaves(item, plain[f.name][i], f"{path}[{i}].")


def _flow(value: Any) -> str:
    """A value as one line of YAML, as an override would give it."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=True).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text
