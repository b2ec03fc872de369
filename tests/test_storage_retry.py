"""Storage calls: transient errors retried with backoff for a bounded time, permanent ones stop at once."""

from __future__ import annotations

import errno

import pytest

from ltx_ray.config.schema import StorageConfig
from ltx_ray.errors import StorageError
from ltx_ray.storage import is_transient, retrying

# As pyarrow's S3 filesystem words them (the AWS SDK's error names, curl's codes).
REFUSED = OSError("When uploading part for key 'runs/x/lora.safetensors' in bucket 'b': AWS Error NETWORK_CONNECTION "
                  "during UploadPart operation: curlCode: 7, Couldn't connect to server")
TIMEOUT = OSError("AWS Error NETWORK_CONNECTION during PutObject operation: curlCode: 28, Timeout was reached")
THROTTLED = OSError("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate.")
DENIED = OSError("When reading information for key 'x' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject "
                 "operation: No response body.")
FULL = OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("error", [REFUSED, TIMEOUT, THROTTLED, ConnectionResetError(errno.ECONNRESET, "reset")])
def test_transient_errors_are_retried_until_the_call_succeeds(error, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise error
        return "written"

    assert is_transient(error)
    assert retrying("writing s3://b/x", flaky, StorageConfig(retry_timeout_s=60)) == "written" and len(calls) == 4


@pytest.mark.parametrize("error, reason", [
    (DENIED, "access denied: check the credentials"), (FULL, "no space left on the device"),
    (FileNotFoundError(errno.ENOENT, "Path does not exist 'b/x'"), "Path does not exist"),
    (OSError(errno.ENAMETOOLONG, "File name too long"), "a file name is too long"),
])
def test_permanent_errors_stop_at_once_naming_the_file(error, reason):
    calls = []

    def fails():
        calls.append(1)
        raise error

    with pytest.raises(StorageError) as stopped:
        retrying("writing s3://b/x", fails, StorageConfig(retry_timeout_s=60), where="s3://b/x")
    assert len(calls) == 1
    assert str(stopped.value).startswith("s3://b/x: writing s3://b/x failed: ") and reason in str(stopped.value)


def test_a_transient_error_that_outlasts_the_timeout_stops_with_the_setting_named():
    calls = []

    def down():
        calls.append(1)
        raise REFUSED

    with pytest.raises(StorageError) as stopped:
        retrying("reading s3://b/x", down, StorageConfig(retry_timeout_s=2), where="s3://b/x")
    assert 2 <= len(calls) <= 4  # 0.5 s, 1 s, ... of backoff within 2 s
    assert "kept failing for 2 s (storage.retry_timeout_s" in str(stopped.value)
