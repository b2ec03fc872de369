"""The package's imports follow the data path: no import circle, and no stage imports a later one.

Read from the source (AST), without importing anything. Each module belongs to the stage with the longest
matching prefix below; a module may import its own stage and earlier ones. Imports inside functions count
too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

from jobs import ROOT

# The data path, archive -> pairs -> clips -> latents -> batches -> step -> checkpoint -> outputs, with
# the model, sampling and sizing where they are first needed and the commands that wire it all last.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("ltx_ray", "ltx_ray.errors", "ltx_ray.tempdirs", "ltx_ray.config", "ltx_ray.storage",
                    "ltx_ray.fetch", "ltx_ray.run_store", "ltx_ray.lease", "ltx_ray.ray_cluster")),
    ("archive", ("ltx_ray.clips.archive",)),
    ("pairs", ("ltx_ray.clips.pairs",)),
    ("clips", ("ltx_ray.clips",)),
    ("model", ("ltx_ray.model",)),
    ("latents", ("ltx_ray.latents",)),
    ("batches", ("ltx_ray.train.batches",)),
    ("sampling", ("ltx_ray.sample",)),
    ("sizing", ("ltx_ray.estimate",)),
    ("step", ("ltx_ray.train.zero3", "ltx_ray.train.deepspeed_config", "ltx_ray.train.train_state",
              "ltx_ray.train.engine", "ltx_ray.train.step", "ltx_ray.train.evaluation")),
    ("checkpoint", ("ltx_ray.train.checkpoint",)),
    ("outputs", ("ltx_ray.train.tracking", "ltx_ray.train.outputs")),
    ("trainer", ("ltx_ray.train.context", "ltx_ray.train.trainer")),
    ("worker loop", ("ltx_ray.train.loop",)),
    ("driver", ("ltx_ray.train.driver",)),
    ("commands", ("ltx_ray.cli", "ltx_ray.__main__")),
]


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under `root`, by dotted name (a package by its own name)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set[str], package: str) -> set[str]:
    """The package's modules that `name` imports (`from a import b` counts as `a.b` when b is a module)."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a module inside a namespace package
                target = target.rpartition(".")[0]
            if target.split(".")[0] == package and target != name:
                found.add(target)
    return found


def stage_of(module: str, stages=STAGES) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(stages):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank is None:
        raise AssertionError(f"{module} is in no stage: add it to STAGES in {Path(__file__).name}")
    return rank


def layout_problems(root: Path, package: str, stages=STAGES) -> list[str]:
    """Back-imports and import circles in the package, in words."""
    found = modules(root, package)
    graph = {name: imports(name, path, set(found), package) for name, path in found.items()}
    problems = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = stage_of(name, stages), stage_of(target, stages)
            if b > a:
                problems.append(f"{name} ({stages[a][0]}) imports {target}, of the later stage {stages[b][0]}")
    # Circles: a depth-first search that reports each back edge's loop once.
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        trail.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                problems.append("import circle: " + " -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt)
        trail.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return problems


def test_ltx_ray_imports_follow_the_stage_order_without_circles():
    assert layout_problems(ROOT, "ltx_ray") == []


def test_every_module_is_in_a_stage():
    for name in modules(ROOT, "ltx_ray"):
        stage_of(name)


def test_the_check_finds_a_back_import_and_a_circle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "train").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    # A data module reaching forward into training (the kind of import this test exists to refuse) ...
    (pkg / "data" / "pipeline.py").write_text("def f():\n    from pkg.train.driver import init_ray\n")
    # ... and training importing it back: a circle.
    (pkg / "train" / "driver.py").write_text("from pkg.data import pipeline\n\ndef init_ray():\n    pass\n")
    stages = [("foundation", ("pkg",)), ("data", ("pkg.data",)), ("train", ("pkg.train",))]
    problems = layout_problems(tmp_path, "pkg", stages)
    assert "pkg.data.pipeline (data) imports pkg.train.driver, of the later stage train" in problems
    assert "import circle: pkg.data.pipeline -> pkg.train.driver -> pkg.data.pipeline" in problems
    assert len(problems) == 2
