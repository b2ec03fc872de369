"""Pairing `_start` / `_end` clips and captions, as the spec's Dataset Format describes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ltx_ray.clips.pairs import PairFiles, match_pairs, read_caption
from ltx_ray.errors import DatasetError


def _files(*names: str) -> dict[str, Path]:
    return {n: Path("/x") / n for n in names}


def _problems(*names: str) -> list[tuple[str, str]]:
    with pytest.raises(DatasetError) as info:
        match_pairs(_files(*names))
    return [(p.where, p.message) for p in info.value.problems]


def test_start_without_end_is_an_error_naming_the_file():
    problems = _problems("a_start.mp4", "a_end.mp4", "b_start.mp4")
    assert [w for w, _ in problems] == ["b_start.mp4"]
    assert "b_end" in problems[0][1]


def test_end_without_start_is_an_error_naming_the_file():
    problems = _problems("a_start.mp4", "a_end.mp4", "sub/c_end.mov")
    assert [w for w, _ in problems] == ["sub/c_end.mov"]
    assert "c_start" in problems[0][1]


def test_unsupported_clip_extension_is_an_error():
    problems = _problems("a_start.gif", "a_end.mp4")
    assert problems[0][0] == "a_start.gif" and "unsupported video format '.gif'" in problems[0][1]


def test_two_starts_for_one_name_is_an_error_naming_both():
    problems = _problems("a_start.mp4", "a_start.mov", "a_end.mp4")
    assert "a_start.mov" in problems[0][1] and "a_start.mp4" in problems[0][1]


def test_mixed_and_upper_case_extensions_pair_up():
    pairs, _ = match_pairs(_files("one_start.MP4", "one_end.webm", "two_start.mkv", "two_end.AVI", "two.txt"))
    assert pairs == [
        PairFiles("one", Path("/x/one_start.MP4"), Path("/x/one_end.webm"), None),
        PairFiles("two", Path("/x/two_start.mkv"), Path("/x/two_end.AVI"), Path("/x/two.txt")),
    ]


def test_pairs_match_across_folders():
    pairs, _ = match_pairs(_files("refs/a_start.mp4", "targets/a_end.mp4", "captions/a.txt"))
    assert pairs[0].start.name == "a_start.mp4" and pairs[0].caption_path == Path("/x/captions/a.txt")


def test_files_that_are_neither_clips_nor_captions_are_reported_and_ignored():
    pairs, warnings = match_pairs(_files("a_start.mp4", "a_end.mp4", "notes.pdf", "orphan.txt"))
    assert [p.name for p in pairs] == ["a"]
    assert any(w.startswith("notes.pdf: ignored") for w in warnings)
    assert any(w.startswith("orphan.txt: ignored") for w in warnings)


def test_archive_without_pairs_is_an_error():
    with pytest.raises(DatasetError) as info:
        match_pairs(_files("readme.md"), label="https://e.com/a.zip")
    assert info.value.problems[0].where == "https://e.com/a.zip"
    assert "no <name>_start" in str(info.value)


def test_empty_archive_is_an_error():
    with pytest.raises(DatasetError):
        match_pairs({})


def test_fewer_than_ten_pairs_is_a_warning():
    _, warnings = match_pairs(_files("a_start.mp4", "a_end.mp4"))
    assert any("Aim for at least 10 pairs" in w for w in warnings)
    names = [f"p{i}_{r}.mp4" for i in range(10) for r in ("start", "end")]
    _, warnings = match_pairs(_files(*names))
    assert not any("Aim for" in w for w in warnings)


def _pair(tmp_path, text: bytes | None) -> PairFiles:
    caption = None
    if text is not None:
        caption = tmp_path / "a.txt"
        caption.write_bytes(text)
    return PairFiles("a", tmp_path / "a_start.mp4", tmp_path / "a_end.mp4", caption)


def test_caption_is_stripped_utf8_with_trigger_phrase_first(tmp_path):
    caption, warning = read_caption(_pair(tmp_path, "\ufeff  a café at night \n".encode()), "av_st9le")
    assert caption == "av_st9le a café at night" and warning is None


def test_caption_without_trigger_phrase_is_the_file_text(tmp_path):
    assert read_caption(_pair(tmp_path, b"a street\n"), "") == ("a street", None)


def test_caption_already_starting_with_the_trigger_keeps_it_once(tmp_path):
    assert read_caption(_pair(tmp_path, b"av_st9le a street"), "av_st9le")[0] == "av_st9le a street"


def test_empty_caption_is_allowed_with_a_warning(tmp_path):
    caption, warning = read_caption(_pair(tmp_path, b"  \n"), "av_st9le")
    assert caption == "av_st9le" and "empty" in warning
    caption, warning = read_caption(_pair(tmp_path, None), "")
    assert caption == "" and "no caption" in warning


def test_caption_that_is_not_utf8_is_an_error_naming_it(tmp_path):
    with pytest.raises(DatasetError) as info:
        read_caption(_pair(tmp_path, b"\xff\xfe\xfa bad"), "")
    assert info.value.problems[0].where == "a.txt"
