"""The job's typed configuration (`schema`), its loading (`load`), how it is shown (`display`) and a
run's name (`naming`)."""

from ltx_ray.config.display import dump_yaml, explain, redact, redact_url, to_plain
from ltx_ray.config.load import load_config
from ltx_ray.config.naming import run_name
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
    "explain",
    "redact",
    "redact_url",
    "run_name",
    "to_plain",
]
