"""Declaring a config field: its own rule beside it, its description under it.

A field with a rule of its own declares it with `between`, `one_of`, `within` or `must`; the description
is the docstring under the field (as torchtitan's config classes have them), so it is written once and
read both by a person and by `ltx-ray validate --explain`. Rules that span fields are each section's
`check()`.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
from dataclasses import field, fields, is_dataclass
from typing import Any, Callable, Optional

from ltx_ray.errors import Problem

# A value's problem, in words (without the field's name), or None when the value is fine.
Rule = Callable[[Any], Optional[str]]


def _declare(default: Any, rule: Rule, shown: str | None = None, **metadata: Any) -> Any:
    """A dataclass field with `rule`; a callable `default` (list, a lambda) is a default factory."""
    metadata = {"rule": rule, "shown": shown, **metadata}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def between(default: Any, lo: Any, hi: Any) -> Any:
    """A field whose value must lie in [lo, hi] (inclusive)."""
    return _declare(default, lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}, got {v}",
                    f"between {lo} and {hi}", range=(lo, hi))


def one_of(default: Any, *choices: Any) -> Any:
    """A field whose value must be one of `choices`."""
    listed = ", ".join(str(c) for c in choices)
    return _declare(default, lambda v: None if v in choices else f"must be one of {listed}, got {v!r}",
                    f"one of {listed}", choices=choices)


_INTERVAL = re.compile(r"^([(\[])\s*([^,\s]+)\s*,\s*([^\s\])]+)\s*([)\]])$")


def within(default: Any, interval: str) -> Any:
    """A field whose value must lie in `interval`, written as in mathematics: "(0, 1]" excludes 0, includes 1."""
    m = _INTERVAL.match(interval)
    if not m:
        raise ValueError(f"not an interval: {interval!r}")
    lo, hi = float(m.group(2)), float(m.group(3))

    def ok(v: Any) -> bool:
        above = lo < v if m.group(1) == "(" else lo <= v
        below = v < hi if m.group(4) == ")" else v <= hi
        return above and below

    return _declare(default, lambda v: None if ok(v) else f"must be in {interval}, got {v}", f"in {interval}")


def must(default: Any, ok: Callable[[Any], Any], message: str | Callable[[Any], str]) -> Any:
    """A field whose value must pass `ok`; else `message` (a callable of the value, or a string in which
    `{value}` is the value)."""
    def rule(v: Any) -> str | None:
        if ok(v):
            return None
        return message(v) if callable(message) else message.format(value=v)

    return _declare(default, rule)


def checked(default: Any, rule: Rule) -> Any:
    """A field whose value `rule` judges: it returns the problem in words, or None."""
    return _declare(default, rule)


def field_problems(obj: Any, prefix: str = "") -> list[Problem]:
    """Every field of the dataclass tree `obj` that breaks its own rule, by dotted path (list items as
    `[i]`). An unset (None) value breaks no rule."""
    problems: list[Problem] = []
    for f in fields(obj):
        path, value = prefix + f.name, getattr(obj, f.name)
        rule = f.metadata.get("rule")
        message = rule(value) if rule is not None and value is not None else None
        if message is not None:
            problems.append(Problem(path, message))
        if is_dataclass(value):
            problems += field_problems(value, path + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if is_dataclass(item):
                    problems += field_problems(item, f"{path}[{i}].")
    return problems


def fine(obj: Any, *names: str) -> bool:
    """Whether the fields `names` of `obj` keep their own rules (a cross-field rule skips a value already
    reported)."""
    declared = {f.name: f for f in fields(obj)}
    for name in names:
        rule, value = declared[name].metadata.get("rule"), getattr(obj, name)
        if rule is not None and value is not None and rule(value) is not None:
            return False
    return True


def declared(cls: type, name: str, key: str) -> Any:
    """What field `name` of `cls` declares under `key` (e.g. its "range")."""
    return next(f for f in fields(cls) if f.name == name).metadata[key]


def shown_rule(f: Any) -> str | None:
    """The field's rule as a phrase ("between 1 and 8", "one of bf16, fp32"), when it has a simple one."""
    return f.metadata.get("shown")


@functools.cache
def descriptions(cls: type) -> dict[str, str]:
    """Each field's description: the first paragraph of the docstring under it, as one line.

    Read from the class's source once; a field without a docstring is absent.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    out = {}
    for stmt, after in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            out[stmt.target.id] = summary(after.value.value)
    return out


def summary(doc: str | None) -> str:
    """A docstring's first paragraph, as one line."""
    first = inspect.cleandoc(doc or "").split("\n\n")[0]
    return " ".join(first.split())
