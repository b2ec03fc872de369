"""`scripts/gpu_check.py --cpu`: the GPU check's own path, run on CPU so that it cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from jobs import ROOT

# Imported by every Python process started with this folder on PYTHONPATH: Ray and W&B are not found, as on
# the air-gapped GPU machine that has neither (`scripts/gpu_check.sh` does not pack them).
_WITHOUT_RAY_AND_WANDB = '''
import sys
from importlib.machinery import PathFinder


class _PathFinderWithout(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in ("ray", "wandb"):
            return None
        return PathFinder.find_spec(name, path, target)


sys.meta_path[:] = [_PathFinderWithout if f is PathFinder else f for f in sys.meta_path]
'''


def test_gpu_check_passes_on_cpu_through_the_products_trainer_without_ray_or_wandb(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(_WITHOUT_RAY_AND_WANDB)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    blocked = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert "No module named 'ray'" in blocked.stderr  # the set-up really hides Ray
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--cpu"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    lines = [x for x in out.stdout.splitlines() if x.startswith("gpu_check:")]
    assert out.returncode == 0, "\n".join(lines) + out.stderr[-3000:]
    assert not [x for x in lines if "FAIL" in x]
    for check in ("zero2 gradient checkpointing active", "zero3 checkpoint round trip", "zero2 preview",
                  "zero2 held-out evaluation at steps 0 and 3", "zero3 held-out evaluation at steps 0 and 3",
                  "generate on the LoRA", "real-width memory"):
        assert any(check in x for x in lines), check
    last = re.fullmatch(r"gpu_check: (\d+)/(\d+) ok estimate_vs_measured=([\d.]+) ms_per_block=([\d.]+) mfu=n/a",
                        lines[-1])
    assert last and last.group(1) == last.group(2), lines[-1]
