"""The one atomic local write (s2v/storage/atomic.py): whole or absent, and no temporary file left behind."""
from __future__ import annotations

import pytest

from s2v.storage.atomic import atomic_folder, atomic_path, publish, staged_file, write_atomically


def test_write_atomically_creates_the_folder_and_replaces_the_file(tmp_path):
    target = tmp_path / "a" / "b" / "record.json"
    write_atomically(target, "one\r\n", fsync=True)
    assert target.read_bytes() == b"one\r\n"  # newlines untranslated, like the ledger's CSV needs
    write_atomically(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["record.json"]


def test_an_error_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "video.mp4"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target, suffix=".partial.mp4") as staged:
        assert staged.name.endswith(".partial.mp4") and staged.parent == tmp_path
        staged.write_bytes(b"half")
        raise RuntimeError("ffmpeg failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]


def test_a_staged_file_is_gone_unless_published(tmp_path):
    with staged_file(tmp_path / ".incoming") as dropped:
        dropped.write_bytes(b"x")
    with staged_file(tmp_path / ".incoming") as kept:
        kept.write_bytes(b"y")
        publish(kept, tmp_path / "kept", fsync=True)
    assert list((tmp_path / ".incoming").iterdir()) == []
    assert (tmp_path / "kept").read_bytes() == b"y"


def test_a_folder_appears_whole_and_a_second_writer_finds_it_taken(tmp_path):
    root = tmp_path / "checkpoint"
    with atomic_folder(root) as staging:
        (staging / "config.json").write_text("{}")
    assert [p.name for p in root.iterdir()] == ["config.json"]
    with pytest.raises(OSError), atomic_folder(root) as staging:
        (staging / "config.json").write_text("{} ")
    assert (root / "config.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
