"""The console a person reads: our own lines, one progress bar (or line) per long stage, Ray's internals quiet.

Quiet is the default; `--verbose` (`setup(verbose=True)`) keeps every library's INFO output as it was.
Quiet, the console shows:

- our loggers' INFO lines as `ltx-ray: ...`, and every library's warnings and errors;
- one progress bar per long stage (decode/encode, training) on a terminal, a line every few seconds
  instead off one (CI, pipes: no cursor escapes at all) -- `Progress`;
- worker lines without Ray's `(name pid=...)` prefix; the training workers' INFO logging (Ray Train's,
  DeepSpeed's, the model loader's) and prints of libraries stay off the console.

Ray's own log files are untouched: the session's `logs/` folder (e.g. /tmp/ray/session_latest/logs, Ray
Data's `ray-data*.log` and Ray Train's `train/` files included) holds everything at every level.

The driver's choice travels to the Ray workers in their environment (`worker_env`); a training worker
applies it with `setup_worker`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import timedelta
from typing import Any

VERBOSE_ENV = "LTX_RAY_VERBOSE"  # "1": every library's INFO output on the console
TTY_ENV = "LTX_RAY_TTY"  # "1": the driver's console is a terminal (progress bars), "0": lines

# When quiet, each unless already set (all documented switches of the library named). In the driver's
# environment, before it imports Ray: how Ray prints the lines its workers write.
DRIVER_QUIET_ENV = {
    # Worker lines forwarded to the driver without the "(RayTrainWorker pid=...)" prefix.
    "RAY_DISABLE_WORKER_LOG_PREFIX": "1",
    # Worker lines never forwarded to the console (they stay in the workers' log files): what libraries print
    # unconditionally, with no logger or setting to quiet them -- torch's Gloo process groups ("[Gloo] Rank 0
    # is connected to 1 peer ranks ...", several per worker) and DeepSpeed's just-in-time op builds.
    "RAY_DEDUP_LOGS_SKIP_REGEX": r"^\[Gloo\] Rank \d+ is connected to \d+ peer ranks|^DeepSpeed \S+ built successfully$",
}
# The driver's environment (inherited by the processes of a local Ray instance) and the workers'.
QUIET_ENV = {
    # Hugging Face: no "Loading weights" bar from every process that loads the text encoder.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
# Only in the training workers: Ray Train sends every print through the root logger there, which in Ray
# 2.60 shows each print twice (once as printed, once logged) and puts library prints (DeepSpeed's "op built
# successfully") on the console at INFO. Off, a print is written once, to the worker's stdout log file.
QUIET_TRAIN_WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}

_HANDLER_NAME = "ltx-ray-console"
log = logging.getLogger(__name__)


def setup(verbose: bool) -> None:
    """The driver's console, first thing in a command (before Ray is imported): logging and environment."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    os.environ[TTY_ENV] = "1" if _terminal() else "0"
    if not verbose:
        for key, value in {**DRIVER_QUIET_ENV, **QUIET_ENV}.items():
            os.environ.setdefault(key, value)
    handler = logging.StreamHandler()
    handler.set_name(_HANDLER_NAME)
    if verbose:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(ConsoleFormatter())
        handler.addFilter(ours_or_warning)
    # Like logging.basicConfig: a process whose root logger already has handlers (pytest's) keeps them.
    # (Ray's and DeepSpeed's loggers get their levels as they import: `init_ray` and `setup_worker` set them.)
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def is_verbose() -> bool:
    """Whether this command (or the driver of this worker) runs with `--verbose`."""
    return os.environ.get(VERBOSE_ENV) == "1"


def library_level() -> int:
    """The console level of Ray's, Ray Data's, Ray Train's and DeepSpeed's own logging."""
    return logging.INFO if is_verbose() else logging.WARNING


def interactive() -> bool:
    """Whether progress shows as a bar: the driver's console is a terminal (`TTY_ENV` in its workers)."""
    if TTY_ENV in os.environ:
        return os.environ[TTY_ENV] == "1"
    return _terminal()


def _terminal() -> bool:
    return all(stream is not None and hasattr(stream, "isatty") and stream.isatty()
               for stream in (sys.stdout, sys.stderr))


def ours_or_warning(record: logging.LogRecord) -> bool:
    """The driver's quiet console: our own INFO lines, and anyone's warnings and errors."""
    return record.levelno >= logging.WARNING or record.name == "ltx_ray" or record.name.startswith("ltx_ray.")


class ConsoleFormatter(logging.Formatter):
    """`ltx-ray: message` for our lines (`ltx-ray: warning: ...` above INFO), `LEVEL logger: message` for others."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.name == "ltx_ray" or record.name.startswith("ltx_ray."):
            level = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
            return f"ltx-ray: {level}{message}"
        return f"{record.levelname} {record.name}: {message}"


def worker_env(train_worker: bool = False) -> dict[str, str]:
    """The console settings of this driver for the environment of its Ray workers (`train_worker`: a Ray
    Train worker, which also gets `QUIET_TRAIN_WORKER_ENV`). A value the driver's environment already has wins."""
    env = {VERBOSE_ENV: "1" if is_verbose() else "0", TTY_ENV: "1" if interactive() else "0"}
    if not is_verbose():
        quiet = {**QUIET_ENV, **(QUIET_TRAIN_WORKER_ENV if train_worker else {})}
        env.update({key: os.environ.get(key, value) for key, value in quiet.items()})
    return env


def setup_worker() -> None:
    """A training worker's console (its logging is Ray Train's by now): quiet, only warnings and errors of
    its logging reach the driver; the worker's log files keep everything."""
    logging.getLogger("DeepSpeed").setLevel(library_level())
    if is_verbose():
        return
    for handler in logging.getLogger().handlers:
        # Ray Train's console handler (a StreamHandler to stderr), not its session log files.
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        # DeepSpeed's CPU accelerator compiles its shared-memory op, and torch warns that it found no CUDA
        # runtime for it: true, and expected, on the CPU.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def quiet_library_bars() -> None:
    """Transformers' "Loading weights" bar off in this process when quiet: in a Ray worker the driver's
    environment (`HF_HUB_DISABLE_PROGRESS_BARS`) does not reach, on a cluster joined rather than started."""
    if is_verbose():
        return
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_progress_bar()


def configure_dataset(context) -> bool:
    """A Dataset's `ray.data.DataContext`, quiet: Ray Data's progress bars off (they stack one per operator,
    with cursor escapes, on a terminal, and log a status block every 10 s off one) and its INFO lines only
    in its log file. Returns whether the caller shows its own `Progress` (when quiet)."""
    verbose = is_verbose()
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":  # Ray Data's console handler; its file handler keeps every level
            handler.setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        return False
    context.enable_progress_bars = False
    from ray.util.debug import log_once

    # Ray Data warns once that its progress bars are off, as if it were by mistake: it is not.
    log_once("ray_data_progress_manager_disabled")
    return True


class Progress:
    """A stage's progress: a bar on a terminal (the driver's, `interactive`), else a line every `interval_s`
    seconds, the first update's and the last.

    The bar is Ray's distributed tqdm in a Ray process (a worker's bar is drawn by the driver, which keeps
    worker lines from breaking it), plain tqdm elsewhere. The interface is tqdm's, as far as a stage uses it:
    `update`, `update_to`, `set_postfix`, `set_postfix_str`, `write`, `close`.
    """

    def __init__(self, desc: str, total: int | None, *, initial: int = 0, unit: str = "step",
                 interval_s: float = 30.0, bar: bool | None = None):
        self.desc, self.total, self.unit, self.interval_s = desc, total, unit, interval_s
        self.n = self._start = initial
        self._postfix = ""
        self._started = time.monotonic()
        self._shown_at: float | None = None
        self._shown_n: int | None = None
        self._closed = False
        self._bar = _bar(desc, total, initial, unit) if (interactive() if bar is None else bar) else None

    def set_postfix(self, **values: Any) -> None:
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in values.items()))

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self._postfix = text
        if self._bar is not None and hasattr(self._bar, "set_postfix_str"):
            self._bar.set_postfix_str(text, refresh=refresh)
        elif self._bar is not None:  # Ray's tqdm has a description only
            self._bar.set_description(f"{self.desc} {text}" if text else self.desc)

    def update(self, n: int = 1) -> None:
        self.update_to(self.n + n)

    def update_to(self, n: int) -> None:
        if n == self.n and self._shown_at is not None:
            return
        if self._bar is not None:
            self._bar.update(n - self.n)
        self.n = n
        now = time.monotonic()
        if self._bar is None and (self._shown_at is None or now - self._shown_at >= self.interval_s
                                  or (self.total is not None and n >= self.total)):
            self._show(now)

    def write(self, line: str) -> None:
        """A line above the bar (the bar is redrawn below it)."""
        if self._bar is not None and hasattr(self._bar, "write"):
            self._bar.write(line)
        else:
            print(line, flush=True)

    def close(self, final_line: bool = True) -> None:
        """Close the bar, or show the last line (unless shown, or not `final_line`)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif final_line and (self._shown_n != self.n or self._shown_at is None):
            self._show(time.monotonic())

    def line(self, now: float | None = None) -> str:
        """The progress as one line: `desc: n/total units (p%), postfix, rate, ETA`."""
        now = time.monotonic() if now is None else now
        elapsed, done = now - self._started, self.n - self._start
        parts = [f"{self.n}/{self.total}" if self.total is not None else f"{self.n}", f"{self.unit}s"]
        if self.total:
            parts.append(f"({100 * self.n // self.total}%)")
        text = f"{self.desc}: {' '.join(parts)}"
        if self._postfix:
            text += f", {self._postfix}"
        if done > 0 and elapsed > 0:
            if f"s/{self.unit}" not in self._postfix:  # the caller's own figure is the better one
                text += f", {elapsed / done:.2f} s/{self.unit}"
            if self.total is not None and self.n < self.total:
                text += f", ETA {_duration((self.total - self.n) * elapsed / done)}"
            elif self.total is not None:
                text += f", done in {_duration(elapsed)}"
        return text

    def _show(self, now: float) -> None:
        self._shown_at, self._shown_n = now, self.n
        print(self.line(now), flush=True)


def _bar(desc: str, total: int | None, initial: int, unit: str):
    try:
        import ray

        in_ray = ray.is_initialized()
    except ImportError:
        in_ray = False
    if in_ray:
        from ray.experimental import tqdm_ray

        bar = tqdm_ray.tqdm(desc=desc, total=total, unit=unit)
        if initial:
            bar.update(initial)
        return bar
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
