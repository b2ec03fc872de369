"""Safe extraction: hostile entries are refused before anything is written; metadata is ignored."""

from __future__ import annotations

import zipfile

import pytest

from ltx_ray.clips.archive import extract_archive
from ltx_ray.errors import DatasetError


def _refused(archive, dest, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        extract_archive(archive, dest, **kwargs)
    assert not dest.exists(), "nothing is extracted from a refused archive"
    return info.value


def test_corrupt_zip_is_refused(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("a_start.mp4", b"x" * 1000)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(good.read_bytes()[:-30])  # the central directory is cut off
    err = _refused(broken, tmp_path / "out")
    assert "is not a valid .zip archive" in str(err)


def test_entry_with_bad_crc_is_refused_and_nothing_is_left(tmp_path):
    path = tmp_path / "crc.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a_start.mp4", b"A" * 4000)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # flip one byte of the stored file data
    path.write_bytes(bytes(data))
    err = _refused(path, tmp_path / "out")
    assert "corrupt" in str(err)


def test_zip_slip_entry_is_refused(make_zip, tmp_path):
    archive = make_zip({"../evil_start.mp4": b"x", "ok_start.mp4": b"x"})
    err = _refused(archive, tmp_path / "out")
    assert [p.where for p in err.problems] == ["../evil_start.mp4"]
    assert "escapes" in str(err)
    assert not (tmp_path / "evil_start.mp4").exists()


def test_absolute_path_entry_is_refused(make_zip, tmp_path):
    archive = tmp_path / "abs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("x")
        info.filename = "/etc/evil_start.mp4"  # ZipInfo() would strip the leading slash
        zf.writestr(info, b"x")
    err = _refused(archive, tmp_path / "out")
    assert [p.where for p in err.problems] == ["/etc/evil_start.mp4"]


def test_symlink_entry_is_refused(make_zip, tmp_path):
    archive = make_zip({"a_end.mp4": b"x"}, symlinks={"a_start.mp4": "/etc/passwd"})
    err = _refused(archive, tmp_path / "out")
    assert [p.where for p in err.problems] == ["a_start.mp4"]
    assert "symbolic link" in str(err)


def test_zip_bomb_by_compression_ratio_is_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a_start.mp4", b"\0" * (8 * 1024 * 1024))  # 8 MiB of zeros deflate ~1000:1
    err = _refused(bomb, tmp_path / "out")
    assert "zip bomb" in str(err)


def test_zip_bomb_by_total_size_is_refused(make_zip, tmp_path):
    archive = make_zip({"a_start.mp4": b"x" * 600, "a_end.mp4": b"y" * 600})
    err = _refused(archive, tmp_path / "out", max_total_bytes=1000)
    assert "exceeds" in str(err)


def test_macosx_metadata_and_hidden_files_are_ignored(make_zip, tmp_path):
    archive = make_zip(
        {
            "a_start.mp4": b"s",
            "a_end.mp4": b"e",
            "__MACOSX/._a_start.mp4": b"junk",
            "._a_end.mp4": b"junk",
            ".DS_Store": b"junk",
            ".hidden/b_start.mp4": b"junk",
        }
    )
    out = extract_archive(archive, tmp_path / "out")
    assert sorted(out.files) == ["a_end.mp4", "a_start.mp4"]
    assert sorted(out.ignored) == sorted([".DS_Store", ".hidden/b_start.mp4", "._a_end.mp4", "__MACOSX/._a_start.mp4"])
    assert not (tmp_path / "out" / "__MACOSX").exists()


def test_nested_folders_are_extracted(make_zip, tmp_path):
    archive = make_zip({"set1/deep/a_start.mp4": b"s", "set2/a_end.mp4": b"e"})
    out = extract_archive(archive, tmp_path / "out")
    assert out.files["set1/deep/a_start.mp4"].read_bytes() == b"s"
    assert out.files["set1/deep/a_start.mp4"] == tmp_path / "out" / "set1" / "deep" / "a_start.mp4"


def test_duplicate_file_names_in_two_folders_are_an_error_naming_both(make_zip, tmp_path):
    archive = make_zip({"x/a_start.mp4": b"1", "y/a_start.mp4": b"2", "a_end.mp4": b"e"})
    err = _refused(archive, tmp_path / "out")
    assert [p.where for p in err.problems] == ["a_start.mp4"]
    assert "x/a_start.mp4" in str(err) and "y/a_start.mp4" in str(err)


def test_every_problem_is_reported_at_once(make_zip, tmp_path):
    archive = make_zip({"../a_start.mp4": b"x", "x/b.txt": b"", "y/b.txt": b""}, symlinks={"l_end.mp4": "/"})
    err = _refused(archive, tmp_path / "out")
    assert [p.where for p in err.problems] == ["../a_start.mp4", "b.txt", "l_end.mp4"]


def test_a_name_longer_than_a_file_system_holds_is_refused_before_extraction_naming_the_entry(make_zip, tmp_path):
    long = "p" * 250  # 260 bytes with _start.mp4: over the 255 of ext4, XFS, APFS and NTFS
    archive = make_zip({f"{long}_start.mp4": b"x", f"{long}_end.mp4": b"x", "ok_start.mp4": b"x", "ok_end.mp4": b"x"})
    err = _refused(archive, tmp_path / "out")
    assert err.exit_code == 2
    assert [p.where for p in err.problems] == [f"{long}_start.mp4", f"{long}_end.mp4"]
    assert "260 bytes long; file systems hold at most 255" in str(err)
    assert not (tmp_path / "out").exists()  # nothing was extracted, not even the good pair
