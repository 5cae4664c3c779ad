"""Outputs: `-` is standard output, symlinks are written through, FIFOs / sockets refused, write errors one line.

Never against real /dev nodes: a FIFO and temporary symlinks stand in; a full disk is a small tmpfs
where this machine lets the test mount one, else a write that fails with ENOSPC."""

import contextlib
import errno
import os
import socket
import subprocess

import pytest
from click.testing import CliRunner

import llm1bit.atomic as atomic
from llm1bit.atomic import atomic_write_text, check_output, is_stdout
from llm1bit.cli import main
from llm1bit.errors import UserError

SWEEP = ["sweep", "--models", "opt-350m", "--hw", "edge", "--seq-lens", "128", "--backend", "analytic"]


def sweep(*out_args):
    return CliRunner().invoke(main, [*SWEEP, *map(str, out_args)])


def test_dash_is_standard_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = sweep("-o", "-")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("model,model_source,") and len(res.stdout.splitlines()) == 2
    assert "wrote 1 rows to standard output" in res.stderr
    assert list(tmp_path.iterdir()) == []  # no file named '-'
    assert is_stdout("/dev/stdout") and is_stdout("-") and not is_stdout("./-")


def test_fifo_and_socket_are_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    res = sweep("-o", fifo)
    assert res.exit_code == 1 and f"cannot write {fifo}: it is a FIFO" in res.output
    assert len(res.output.strip().splitlines()) == 1
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(UserError, match="it is a socket"):
            atomic_write_text(tmp_path / "sock", "x")
    # a symlink to a FIFO is refused too, and neither entry is replaced
    link = tmp_path / "to-pipe"
    link.symlink_to(fifo)
    assert "it is a FIFO" in sweep("-o", link).output
    assert link.is_symlink() and fifo.is_fifo()


def test_symlink_is_written_through_to_its_target(tmp_path):
    target = tmp_path / "data" / "real.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    res = sweep("-o", link)
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("model,")
    assert sorted(p.name for p in target.parent.iterdir()) == ["real.csv"]  # no temp file left
    dangling = tmp_path / "new.csv"
    dangling.symlink_to(tmp_path / "data" / "fresh.csv")
    atomic_write_text(dangling, "x")
    assert dangling.is_symlink() and (tmp_path / "data" / "fresh.csv").read_text() == "x"


def test_folder_as_output_is_refused(tmp_path):
    with pytest.raises(UserError, match="it is a folder"):
        check_output(tmp_path)


@contextlib.contextmanager
def small_filesystem(path, size="16k", read_only=False):
    """Mount a tiny tmpfs at `path` (root only); yields False where this machine does not allow it."""
    path.mkdir()
    opts = f"size={size}" + (",ro" if read_only else "")
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)]).returncode
    ):
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fail_writes(monkeypatch, code):
    """Fault injection at the write, where no small filesystem can be mounted."""
    real = os.fdopen

    class Failing:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(code, os.strerror(code))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: Failing(real(fd, mode)))


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    with small_filesystem(disk) as mounted:
        if mounted:
            (disk / "filler").write_bytes(b"\0" * 12 * 1024)  # leave less room than the CSV needs
            (disk / "big.csv").write_text("old")
        else:
            _fail_writes(monkeypatch, errno.ENOSPC)
        res = CliRunner().invoke(
            main,
            [
                "sweep",
                "--models",
                "opt",
                "--hw",
                "cloud,edge",
                "--backend",
                "analytic",
                "-o",
                str(disk / "big.csv"),
            ],
        )
        assert res.exit_code == 1
        assert "No space left on device; nothing was written" in res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
        if mounted:
            assert sorted(p.name for p in disk.iterdir()) == ["big.csv", "filler"]
            assert (disk / "big.csv").read_text() == "old"


def test_read_only_filesystem_is_one_line(tmp_path, monkeypatch):
    disk = tmp_path / "ro"
    with small_filesystem(disk, read_only=True) as mounted:
        if not mounted:
            _fail_writes(monkeypatch, errno.EROFS)
        res = sweep("-o", disk / "x.csv")
        assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
        # refused up front (the folder is not writable) or at the write itself
        assert "Read-only file system" in res.output or "is not writable" in res.output
        assert "Traceback" not in res.output and not (disk / "x.csv").exists()
