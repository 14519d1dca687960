"""fistaopt._io: atomic files and folders, normal permissions, the user's files kept."""

from __future__ import annotations

import json
import os
import stat

import pytest

from fistaopt import _io


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_folders_get_the_umask_permissions(tmp_path, umask_022):
    f = _io.write_text(tmp_path / "a" / "b.txt", "x")
    assert f.read_text() == "x" and _mode(f) == 0o644
    with _io.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "model.bin").write_bytes(b"1")
        os.chmod(tmp / "model.bin", 0o600)  # as a tempfile-based writer would leave it
    assert _mode(tmp_path / "out") == 0o755
    assert _mode(tmp_path / "out" / "model.bin") == 0o644


def test_a_failing_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with _io.atomic_dir(tmp_path / "new" / "deeper" / "out") as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # not even the parent folders
    with pytest.raises(RuntimeError):
        with _io.atomic_file(tmp_path / "f.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_foreign_non_empty_folder_is_refused_and_overwrite_keeps_its_files(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("the user's")
    (target / "config.json").write_text("the user's config")
    with pytest.raises(_io.OutputExistsError, match="not a fistaopt output"):
        with _io.atomic_dir(target) as tmp:
            (tmp / "config.json").write_text("ours")
    assert (target / "config.json").read_text() == "the user's config"
    with _io.atomic_dir(target, overwrite=True) as tmp:
        (tmp / "config.json").write_text("ours")
    assert (target / "config.json").read_text() == "ours"  # our file replaced
    assert (target / "notes.txt").read_text() == "the user's"  # theirs kept
    assert sorted(json.loads((target / _io.MANIFEST).read_text())) == ["config.json"]


def test_a_previous_output_is_replaced_without_overwrite(tmp_path):
    target = tmp_path / "out"
    with _io.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "old-only.txt").write_text("1")
    (target / "user.txt").write_text("u")  # added by the user afterwards
    with _io.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("2")
    assert (target / "a.txt").read_text() == "2"
    assert not (target / "old-only.txt").exists()  # ours, no longer written: removed
    assert (target / "user.txt").read_text() == "u"  # not ours: kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_a_folder_with_a_fistaopt_report_counts_as_a_previous_output(tmp_path):
    target = tmp_path / "legacy"
    target.mkdir()
    (target / "report.json").write_text(json.dumps({"settings": {}, "records": []}))
    assert _io.previous_output_files(target) == set()
    _io.check_output_dir(target)  # no error
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        _io.check_output_dir(tmp_path / "file", overwrite=True)
