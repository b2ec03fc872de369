"""The job's typed configuration, its loading and its rules."""

from ltx_ray.config.load import dump_yaml, load_config, redact, run_name, to_plain
from ltx_ray.config.resolution import RESOLUTION_BUCKETS, bucket_size, snap_frames
from ltx_ray.config.schema import JobConfig, RequestConfig, ValidationSample

__all__ = [
    "JobConfig",
    "RequestConfig",
    "ValidationSample",
    "RESOLUTION_BUCKETS",
    "bucket_size",
    "snap_frames",
    "load_config",
    "dump_yaml",
    "redact",
    "run_name",
    "to_plain",
]
