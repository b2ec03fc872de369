"""The console a person reads (ltx_ray.console): quiet by default, `--verbose` as before; no Ray cluster.

What runs in the driver's own process (its logging, its environment, Ray's and Ray Data's settings) is
checked in a fresh interpreter, so that neither the levels nor the environment of this test session change.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from jobs import ROOT
from ltx_ray import console
from ltx_ray.cli import _parser
from ltx_ray.config import load_config

# The driver's state after `console.setup` (the CLI's first call) and what the Ray Data stages and `init_ray` use.
PROBE = r"""
import json, logging, os, sys
from ltx_ray import console
console.setup(verbose=sys.argv[1] == "1")
import ray.data
from ray._private import ray_constants, ray_logging

context = ray.data.DataContext()
own_progress = console.configure_dataset(context)
handlers = {h.get_name(): logging.getLevelName(h.level) for h in logging.getLogger("ray.data").handlers}
ours = [h for h in logging.getLogger().handlers if h.get_name() == "ltx-ray-console"][0]
record = lambda name, level: logging.LogRecord(name, level, "probe", 1, "m", None, None)
print(json.dumps({
    "env": {k: os.environ.get(k) for k in (console.VERBOSE_ENV, console.TTY_ENV, *console.DRIVER_QUIET_ENV,
                                          *console.QUIET_ENV)},
    # What Ray, imported after `setup`, does with its workers' lines on this console.
    "ray_skips": getattr(ray_logging.stdout_deduplicator.skip_re, "pattern", None),
    "ray_prefix": not ray_constants.RAY_DISABLE_WORKER_LOG_PREFIX,
    "library_level": logging.getLevelName(console.library_level()),
    "ray_data_handlers": handlers,
    "progress_bars": context.enable_progress_bars,
    "own_progress": own_progress,
    "shown": {name: bool(ours.filter(record(name, logging.INFO))) for name in ("ltx_ray.latents.report", "ray.data", "botocore")},
    "interactive": console.interactive(),
}))
"""


def _probe(verbose: bool) -> dict:
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in (console.VERBOSE_ENV, console.TTY_ENV, *console.DRIVER_QUIET_ENV, *console.QUIET_ENV)}
    # stdout and stderr are pipes here, as in CI: not a terminal.
    out = subprocess.run([sys.executable, "-c", PROBE, "1" if verbose else "0"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_quiet_by_default_ray_ray_data_and_deepspeed_at_warning_on_the_console():
    state = _probe(verbose=False)
    assert state["env"] == {console.VERBOSE_ENV: "0", console.TTY_ENV: "0", **console.DRIVER_QUIET_ENV,
                            **console.QUIET_ENV}
    assert state["library_level"] == "WARNING"  # Ray's (`init_ray`), Ray Data's and DeepSpeed's (workers)
    # Worker lines without Ray's prefix; what libraries print unasked (and no setting quiets) not forwarded.
    assert state["ray_prefix"] is False
    skipped = re.compile(state["ray_skips"])
    assert skipped.search("[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1")
    assert skipped.search("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
    assert not skipped.search("ltx-ray: eval at step 20: held-out loss video 4.262 audio 4.57")
    assert not skipped.search("[Gloo] error: connection refused")
    # Ray Data's console shows warnings only; its log file keeps every level.
    assert state["ray_data_handlers"] == {"file": "NOTSET", "console": "WARNING"}
    # Off a terminal: none of Ray Data's progress displays (its bars or its 10 s status block), ours instead.
    assert state["progress_bars"] is False and state["own_progress"] is True
    assert state["interactive"] is False
    # Our own INFO lines are shown; the INFO of every other library is not.
    assert state["shown"] == {"ltx_ray.latents.report": True, "ray.data": False, "botocore": False}


def test_verbose_keeps_every_library_at_info():
    state = _probe(verbose=True)
    assert state["env"][console.VERBOSE_ENV] == "1"
    assert all(state["env"][k] is None for k in (*console.DRIVER_QUIET_ENV, *console.QUIET_ENV))
    assert state["library_level"] == "INFO"
    assert state["ray_prefix"] is True and state["ray_skips"] is None
    assert state["ray_data_handlers"] == {"file": "NOTSET", "console": "INFO"}
    assert state["progress_bars"] is True and state["own_progress"] is False
    assert state["shown"] == {"ltx_ray.latents.report": True, "ray.data": True, "botocore": True}


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_logs_to_the_console_at_the_library_level(monkeypatch, verbose):
    import ray

    from ltx_ray import ray_cluster

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray_cluster, "running_instance", lambda: None)
    monkeypatch.setattr(ray_cluster.tempdirs, "exit_cleanly_on_sigterm", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(console.VERBOSE_ENV, "1" if verbose else "0")
    ray_cluster.init_ray(None)
    assert calls[0]["logging_level"] == (logging.INFO if verbose else logging.WARNING)


@pytest.mark.parametrize("argv", [
    ["train", "conf/demo.yaml"],
    ["preprocess", "conf/demo.yaml", "request.rank=4"],
    ["validate", "conf/demo.yaml"],
    ["estimate", "conf/demo.yaml"],
    ["generate", "conf/demo.yaml", "--lora", "l.safetensors", "--reference-video", "r.mp4", "--prompt", "p"],
])
def test_every_command_takes_verbose(argv):
    assert _parser().parse_known_args(argv)[0].verbose is False
    assert _parser().parse_known_args([*argv, "--verbose"])[0].verbose is True


def test_the_training_workers_get_the_drivers_console_settings(monkeypatch):
    from ltx_ray.train.driver import worker_env

    job, _ = load_config(ROOT / "conf" / "demo.yaml", [])
    for key in (*console.QUIET_ENV, *console.QUIET_TRAIN_WORKER_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(console.VERBOSE_ENV, "0")
    monkeypatch.setenv(console.TTY_ENV, "1")
    env = worker_env(job)
    assert env["DS_ACCELERATOR"] == "cpu"
    assert env[console.VERBOSE_ENV] == "0" and env[console.TTY_ENV] == "1"
    # Ray Train's print patch off: a print is written once (Ray 2.60 wrote it twice), library prints not at INFO.
    assert env["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    assert env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    # A value the driver's own environment has wins.
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    assert worker_env(job)["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    env = worker_env(job)
    assert env[console.VERBOSE_ENV] == "1" and "RAY_TRAIN_ENABLE_PRINT_PATCH" not in env


class _SessionFile(logging.Handler):
    """Stands for Ray Train's session log files (a plain Handler, not a StreamHandler)."""

    def emit(self, record):
        pass


@pytest.mark.parametrize("verbose", [False, True])
def test_a_training_workers_console_shows_warnings_only_and_its_files_everything(monkeypatch, verbose):
    root, cpp = logging.getLogger(), logging.getLogger("torch.utils.cpp_extension")
    stream, files = logging.StreamHandler(), _SessionFile()
    monkeypatch.setattr(root, "handlers", [stream, files])
    monkeypatch.setattr(cpp, "level", logging.NOTSET)
    monkeypatch.setattr(logging.getLogger("DeepSpeed"), "level", logging.WARNING)
    monkeypatch.setenv(console.VERBOSE_ENV, "1" if verbose else "0")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    console.setup_worker()
    assert stream.level == (logging.NOTSET if verbose else logging.WARNING)
    assert files.level == logging.NOTSET
    assert cpp.level == (logging.NOTSET if verbose else logging.ERROR)
    assert logging.getLogger("DeepSpeed").level == (logging.INFO if verbose else logging.WARNING)


def test_our_lines_read_plainly_and_others_say_whose_they_are():
    fmt = console.ConsoleFormatter()

    def line(name, level, msg):
        return fmt.format(logging.LogRecord(name, level, __file__, 1, msg, None, None))

    assert line("ltx_ray.ray_cluster", logging.INFO, "started") == "ltx-ray: started"
    assert line("ltx_ray.latents.report", logging.WARNING, "pair a was dropped") == "ltx-ray: warning: pair a was dropped"
    assert line("ray.data", logging.WARNING, "slow") == "WARNING ray.data: slow"


def test_progress_off_a_terminal_is_a_few_plain_lines(capsys, monkeypatch):
    clock = iter(range(0, 1000, 4))  # every call 4 s later
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    p = console.Progress("train", 10, unit="step", interval_s=10, bar=False)
    for step in range(10):
        p.set_postfix_str(f"loss {step}", refresh=False)
        p.update(1)
        if step == 4:
            p.write("ltx-ray: evaluation after step 5")
    p.close()
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out  # no cursor escapes, no carriage returns
    lines = out.splitlines()
    assert lines[0] == "train: 1/10 steps (10%), loss 0, 4.00 s/step, ETA 0:00:36"
    assert "ltx-ray: evaluation after step 5" in lines
    assert lines[-1] == "train: 10/10 steps (100%), loss 9, 4.00 s/step, done in 0:00:40"
    assert len(lines) == 5  # steps 1, 4 and 7 (a line when 10 s have passed), the last one, and the written line


def test_decode_encode_progress_counts_pairs_from_the_operators(capsys, monkeypatch):
    from ltx_ray.latents.stages import StageProgress

    monkeypatch.setenv(console.TTY_ENV, "0")

    def executor(decoded, encoded):
        ops = [SimpleNamespace(name=name, metrics=SimpleNamespace(row_outputs_taken=n)) for name, n in
               (("Input", 3), ("MapBatches(decode_fit)", decoded), ("MapBatches(Encode)", encoded), ("Write", 0))]
        return SimpleNamespace(_topology=ops)  # the executor's topology iterates over its operators

    progress = StageProgress(pairs=4)
    progress.before_execution_starts(executor(0, 0))
    progress.on_execution_step(executor(0, 0))
    progress.on_execution_step(executor(3, 1))
    progress.after_execution_succeeds(executor(4, 4))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "decode/encode: 0/4 pairs (0%), 0 decoded"
    assert lines[-1].startswith("decode/encode: 4/4 pairs (100%), 4 decoded")
    # A Ray Data whose executor has no such operators shows no progress, and does not fail.
    broken = StageProgress(pairs=4)
    broken.before_execution_starts(SimpleNamespace())
    broken.on_execution_step(SimpleNamespace())
    broken.after_execution_fails(SimpleNamespace(), RuntimeError("x"))
