"""Fetching `training_data_url` and friends: local paths, file://, HTTP, S3; the storage helpers."""

from __future__ import annotations

import hashlib
import socket

import pyarrow.fs as pafs
import pytest

from ltx_ray.config.schema import StorageConfig
from ltx_ray.fetch import content_hash, fetch
from ltx_ray.errors import DatasetError
from ltx_ray.storage import join, resolve_filesystem


def _where(err: DatasetError) -> list[str]:
    return [p.where for p in err.problems]


def test_local_path_is_returned_as_is_and_not_copied(tmp_path):
    src = tmp_path / "data.zip"
    src.write_bytes(b"abc")
    dest = tmp_path / "dest"
    assert fetch(str(src), dest) == src
    assert not dest.exists()
    assert src.read_bytes() == b"abc"


def test_file_uri_resolves_to_the_local_file(tmp_path):
    src = tmp_path / "data.zip"
    src.write_bytes(b"abc")
    assert fetch(src.as_uri(), tmp_path / "dest") == src


def test_missing_local_file_fails_naming_it(tmp_path):
    with pytest.raises(DatasetError) as info:
        fetch(str(tmp_path / "nope.zip"), tmp_path)
    assert _where(info.value) == [str(tmp_path / "nope.zip")]
    assert "not found" in str(info.value)


def test_http_download_streams_the_body_to_disk(http_server, tmp_path):
    body = bytes(range(256)) * 9000
    http_server.files["/pairs.zip"] = body
    path = fetch(http_server.url("/pairs.zip"), tmp_path)
    assert path == tmp_path / "pairs.zip"
    assert path.read_bytes() == body
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.zip"]


def test_http_404_fails_naming_the_url(http_server, tmp_path):
    url = http_server.url("/missing.zip")
    with pytest.raises(DatasetError) as info:
        fetch(url, tmp_path, backoff_s=0.01)
    assert _where(info.value) == [url]
    assert "404" in str(info.value)
    assert http_server.hits["/missing.zip"] == 1, "a 404 is not retried"


def test_http_transient_errors_are_retried(http_server, tmp_path):
    http_server.files["/flaky.zip"] = b"payload"
    http_server.fail_first["/flaky.zip"] = 2
    path = fetch(http_server.url("/flaky.zip"), tmp_path, retries=3, backoff_s=0.01)
    assert path.read_bytes() == b"payload"
    assert http_server.hits["/flaky.zip"] == 3


def test_unreachable_url_fails_after_retries(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a.zip"
    with pytest.raises(DatasetError) as info:
        fetch(url, tmp_path, retries=2, backoff_s=0.01)
    assert _where(info.value) == [url]
    assert "3 attempts" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_download_over_the_size_cap_is_refused_and_removed(http_server, tmp_path):
    http_server.files["/big.zip"] = b"x" * 5000
    with pytest.raises(DatasetError) as info:
        fetch(http_server.url("/big.zip"), tmp_path, max_bytes=1000)
    assert "limit" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_scheme_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError) as info:
        fetch("ftp://example.com/a.zip", tmp_path)
    assert "unsupported URL scheme" in str(info.value)


def _client(endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def test_s3_object_downloads_through_an_endpoint_override(s3_server, s3_bucket, tmp_path):
    _client(s3_server).put_object(Bucket=s3_bucket, Key="in/pairs.zip", Body=b"s3 payload")
    path = fetch(f"s3://{s3_bucket}/in/pairs.zip", tmp_path, storage=StorageConfig(endpoint_override=s3_server))
    assert path.read_bytes() == b"s3 payload"


def test_s3_missing_key_fails_naming_the_url(s3_server, s3_bucket, tmp_path):
    url = f"s3://{s3_bucket}/nope.zip"
    with pytest.raises(DatasetError) as info:
        fetch(url, tmp_path, storage=StorageConfig(endpoint_override=s3_server), backoff_s=0.01)
    assert _where(info.value) == [url]
    assert "not found" in str(info.value)


def test_resolve_filesystem_writes_to_s3_with_http_endpoint(s3_server, s3_bucket):
    storage = StorageConfig(endpoint_override=s3_server, region="us-east-1")
    fs, path = resolve_filesystem(f"s3://{s3_bucket}/demo/ckpt", storage)
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3_bucket}/demo/ckpt"
    with fs.open_output_stream(path + "/weights.bin") as out:
        out.write(b"w")
    body = _client(s3_server).get_object(Bucket=s3_bucket, Key="demo/ckpt/weights.bin")["Body"].read()
    assert body == b"w"


def test_resolve_filesystem_local_file_uri_and_gs(tmp_path):
    fs, path = resolve_filesystem(str(tmp_path / "out"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "out")
    fs, path = resolve_filesystem((tmp_path / "out").as_uri())
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "out")
    fs, path = resolve_filesystem("gs://bucket/a/b")
    assert isinstance(fs, pafs.GcsFileSystem) and path == "bucket/a/b"
    with pytest.raises(ValueError):
        resolve_filesystem("ftp://host/x")


def test_join_appends_parts_to_paths_and_uris():
    assert join("s3://b/runs/", "demo", "ckpt") == "s3://b/runs/demo/ckpt"
    assert join("runs", "demo", "ckpt") == "runs/demo/ckpt"


def test_content_hash_is_the_sha256_of_the_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello" * 1000)
    assert content_hash(path, chunk=7) == hashlib.sha256(b"hello" * 1000).hexdigest()


def test_local_folder_is_returned_as_is(tmp_path):
    (tmp_path / "gemma").mkdir()
    assert fetch(str(tmp_path / "gemma"), tmp_path / "dest") == tmp_path / "gemma"


def test_s3_folder_downloads_file_by_file(s3_server, s3_bucket, tmp_path):
    client = _client(s3_server)
    client.put_object(Bucket=s3_bucket, Key="models/gemma/config.json", Body=b"{}")
    client.put_object(Bucket=s3_bucket, Key="models/gemma/sub/tokenizer.json", Body=b"tok")
    folder = fetch(f"s3://{s3_bucket}/models/gemma", tmp_path, storage=StorageConfig(endpoint_override=s3_server))
    assert folder == tmp_path / "gemma"
    assert (folder / "config.json").read_bytes() == b"{}"
    assert (folder / "sub" / "tokenizer.json").read_bytes() == b"tok"


def test_two_urls_with_the_same_file_name_do_not_overwrite_each_other(http_server, tmp_path):
    http_server.files["/a/ref.mp4"] = b"first"
    http_server.files["/b/ref.mp4"] = b"second"
    first = fetch(http_server.url("/a/ref.mp4"), tmp_path)
    second = fetch(http_server.url("/b/ref.mp4"), tmp_path)
    assert (first.name, second.name) == ("ref.mp4", "ref-1.mp4")
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")


def test_credentials_in_an_http_url_are_sent_as_basic_auth_and_never_shown(http_server, tmp_path, caplog):
    import base64
    import logging

    http_server.files["/cred-ref.mp4"] = b"payload"
    http_server.fail_first["/cred-ref.mp4"] = 1  # one retry, so a warning names the URL
    url = http_server.url("/cred-ref.mp4").replace("://", "://bob:pw2secret@") + "?X-Amz-Signature=def456sig"
    with caplog.at_level(logging.WARNING, logger="ltx_ray.fetch"):
        path = fetch(url, tmp_path, retries=2, backoff_s=0.01)
    assert path.read_bytes() == b"payload"
    assert http_server.authorization["/cred-ref.mp4"] == "Basic " + base64.b64encode(b"bob:pw2secret").decode()
    assert "retrying" in caplog.text
    assert "pw2secret" not in caplog.text and "def456sig" not in caplog.text and "<redacted>" in caplog.text


def test_errors_about_a_credentialed_url_never_show_its_secrets(http_server, tmp_path):
    url = http_server.url("/cred-missing.zip").replace("://", "://bob:pw2secret@") + "?X-Amz-Signature=def456sig"
    with pytest.raises(DatasetError) as err:
        fetch(url, tmp_path, retries=2, backoff_s=0.01)
    assert "HTTP 404" in str(err.value)
    assert "pw2secret" not in str(err.value) and "def456sig" not in str(err.value)
    assert http_server.hits["/cred-missing.zip"] == 1


def test_a_host_that_does_not_resolve_fails_at_once_without_retries(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="ltx_ray.fetch"), pytest.raises(DatasetError) as err:
        fetch("http://bob:pw2secret@no-such-host.invalid/pairs.zip", tmp_path, retries=4, backoff_s=5.0)
    assert "host 'no-such-host.invalid' not found" in str(err.value)
    assert "pw2secret" not in str(err.value)
    assert "retrying" not in caplog.text
