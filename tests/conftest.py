"""Shared test set-up. Stage fixtures live in their own plugin modules beside this file."""

import os
import sys
from pathlib import Path

# The sample-clip generators the demo, the benchmarks and the tests share live in scripts/, not in the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

# Keep every test on the CPU and offline, whatever the machine has.
os.environ["DS_ACCELERATOR"] = "cpu"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

pytest_plugins = ["fixtures_data", "fixtures_model", "fixtures_cluster", "fixtures_train"]
