"""`scripts/gpu_check.sh`'s package list: what the air-gapped GPU machine gets besides its PyTorch image.

Offline: the lists are read from the script and checked against the imports of ltx_ray and
scripts/gpu_check.py and against this environment's package metadata (the same versions the script
packs). The script itself, which downloads, is not run.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
# Not on the GPU check's path, hence not packed (the script says why).
NOT_PACKED = {"ray", "wandb", "ninja"}
# Requirements as the machine's Python 3.12 reads them.
PY312 = {"extra": "", "python_version": "3.12", "python_full_version": "3.12.0"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _bash_array(name: str) -> set[str]:
    m = re.search(rf"^{name}=\(([^)]*)\)", SCRIPT.read_text(), re.M)
    assert m, name
    return {_norm(n) for n in m.group(1).split()}


def _closure(names: set[str]) -> set[str]:
    seen, todo = set(), list(names)
    while todo:
        n = _norm(todo.pop())
        if n in seen:
            continue
        seen.add(n)
        try:
            reqs = md.distribution(n).requires or []
        except md.PackageNotFoundError:
            continue
        todo += [r.name for r in map(Requirement, reqs) if r.marker is None or r.marker.evaluate(PY312)]
    return seen


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_every_requirement_of_the_packed_packages_is_packed_or_in_the_image():
    packed, image = _bash_array("PACKAGES"), _closure(_bash_array("IMAGE_PACKAGES"))
    lacking = {}
    for name in packed:
        for r in map(Requirement, md.distribution(name).requires or []):
            if (r.marker is None or r.marker.evaluate(PY312)) and _norm(r.name) not in packed | image | NOT_PACKED:
                lacking.setdefault(name, []).append(r.name)
    assert not lacking, f"add to PACKAGES in {SCRIPT.name} (or to NOT_PACKED with the reason): {lacking}"


def test_every_third_party_import_of_ltx_ray_and_gpu_check_is_packed_or_in_the_image():
    packed, image = _bash_array("PACKAGES"), _closure(_bash_array("IMAGE_PACKAGES"))
    owners = md.packages_distributions()
    lacking = {}
    for path in [*sorted((ROOT / "ltx_ray").rglob("*.py")), ROOT / "scripts" / "gpu_check.py"]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                tops = [a.name.partition(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.partition(".")[0]]
            else:
                continue
            for top in tops:
                # The repository travels whole: the package and the scripts' own modules (scripts/synthetic.py).
                if top in sys.stdlib_module_names or top == "ltx_ray" or (ROOT / "scripts" / f"{top}.py").exists():
                    continue
                dists = {_norm(d) for d in owners.get(top, [top])}
                if not dists & (packed | image | NOT_PACKED):
                    lacking.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    assert not lacking, f"imported, but neither packed by {SCRIPT.name} nor in the image: {lacking}"
