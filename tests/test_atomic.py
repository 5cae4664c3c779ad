import os
import stat

import pytest

from llm1bit.atomic import atomic_dir, atomic_path, atomic_write_text
from llm1bit.errors import UserError


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_file_has_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
        assert path.read_text() == "x" and _mode(path) == 0o644
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"y")
        assert _mode(tmp_path / "b.bin") == 0o644
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


def test_failed_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "c.png") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as folder:
        (folder / "weights.safetensors").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_non_empty_without_overwrite(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as folder:
        (folder / "a").write_text("1")
    assert (out / "a").read_text() == "1" and _mode(out) & 0o755 == 0o755
    with pytest.raises(UserError, match="not empty"), atomic_dir(out):
        pass
    with atomic_dir(out, overwrite=True) as folder:
        (folder / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_missing_parent_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        atomic_write_text(tmp_path / "no" / "x.csv", "")
