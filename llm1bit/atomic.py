"""Atomic outputs: write beside the target, then rename, so an interrupted run leaves nothing half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from llm1bit.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(tmp: str | Path, directory: bool = False) -> None:
    """mkstemp / mkdtemp create private (0600 / 0700) entries; give the final output the usual umask mode."""
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())


STDOUT_NAMES = ("-", "/dev/stdout")


def is_stdout(path: str | os.PathLike) -> bool:
    """`-o -` and `-o /dev/stdout` mean standard output (never a file named `-`, never replacing the device)."""
    return str(path) in STDOUT_NAMES


def _check_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {path}: folder {parent} is not writable")


def _target(path: Path) -> Path:
    """The regular file a write to `path` replaces: a symlink is written through to its target;
    an existing device, FIFO, socket or folder is refused."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
        )
        shown = f"{path} (-> {target})" if target != path else str(path)
        raise UserError(
            f"cannot write {shown}: it is {kind}; give a regular file path, or - for standard output"
        )
    _check_parent(target)
    return target


def check_output(path: str | os.PathLike) -> None:
    """Refuse an output path up front (before any long work): what `atomic_write_bytes` would refuse."""
    if not is_stdout(path):
        _target(Path(path))


def _write_error(path: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write {path}: {exc.strerror or exc}; nothing was written")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to path atomically (temp file in the same folder + os.replace)."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write data to path atomically; `-` and `/dev/stdout` write to standard output."""
    path = Path(path)
    if is_stdout(path):
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return path
    target = _target(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _publish_mode(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise _write_error(path, exc) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; rename it onto `path` only if the block succeeds.

    For writers that want a file name (matplotlib's savefig, torch.save...). For standard output
    the finished file is copied there."""
    path = Path(path)
    if is_stdout(path):
        with tempfile.TemporaryDirectory(prefix="llm1bit-out-") as folder:
            tmp = Path(folder) / "out"
            yield tmp
            sys.stdout.flush()
            sys.stdout.buffer.write(tmp.read_bytes())
            sys.stdout.buffer.flush()
        return
    target = _target(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        yield Path(tmp)
        _publish_mode(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise _write_error(path, exc) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds.

    An existing non-empty `path` is refused unless `overwrite`; then it is replaced at the end."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"output folder {path} exists and is not empty (use --overwrite to replace it)")
    _check_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        _publish_mode(tmp, directory=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
