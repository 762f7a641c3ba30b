"""Atomic writes: a failure part-way leaves the old file whole and no temporary file behind."""
import os
import stat

import pytest

from lowspace.io import atomic_path, atomic_save, atomic_write_json, atomic_write_text


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "rows.json"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_failed_writer_creates_nothing(tmp_path):
    target = tmp_path / "sub" / "weights.bin"

    def writer(path):
        path.write_bytes(b"\0" * 10)
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_save(target, writer)
    assert not target.exists()
    assert _leftovers(target.parent) == []


def test_new_file_gets_the_umask_mode_and_replacing_keeps_the_mode(tmp_path):
    target = tmp_path / "report.html"
    old = os.umask(0o022)
    try:
        atomic_write_text(target, "<html/>")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    target.chmod(0o600)
    atomic_write_json(target, {"a": 1})
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == '{\n  "a": 1\n}\n'
