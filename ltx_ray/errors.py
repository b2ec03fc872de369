"""Errors a user can cause. Each carries the field or file it is about.

The CLI turns them into exit code 2, the job's equivalent of an HTTP 422:
the request is refused before any cluster time is spent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: where (a field path or a file name) and why."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class UserError(Exception):
    """Base of the errors caused by the request or its data, reported as a 422."""

    exit_code = 2
    # How the CLI introduces the problems.
    headline = "the request was rejected"

    def __init__(self, problems: list[Problem] | Problem):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(UserError):
    """The request or job configuration breaks a rule of the spec."""


class DatasetError(UserError):
    """The training archive, a clip, or a validation input cannot be used."""


class ModelError(UserError):
    """A model checkpoint, text-encoder directory or LoRA file is missing, malformed or incomplete."""


class StorageError(UserError):
    """A storage read or write failed for good: a permanent error (access denied, no such bucket, disk
    full, name too long), or transient errors that outlasted `storage.retry_timeout_s`."""

    headline = "the job stopped on a storage error"


class RunLeaseError(UserError):
    """Another driver holds this run (storage.run_name): two drivers would write one run's files."""

    headline = "the job did not start"
