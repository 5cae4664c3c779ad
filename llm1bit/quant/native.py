"""C sources built with the system C compiler at first use, cached, loaded with ctypes.

Two sources use it: the LUT kernel (`hf/kernel/lut.c`, through `hf/kernel/build.py`) and the solver's BCQ rounds
(`numerics/bcq.c`). A library lands in `<cache>/kernels/<hash>/<name>.so`, `<cache>` being
`llm1bit.cache.default_cache_dir()` ($LLM1BIT_CACHE_DIR, else $XDG_CACHE_HOME/llm1bit, else ~/.cache/llm1bit);
the hash covers the source, the flags and the compiler's identity (`cc --version`), so a new compiler or a changed
source builds anew. Callers fall back to their torch path when `compiler()` is None or a build fails.

The flags keep float arithmetic as written (no contraction into FMA, no fast-math): both sources reproduce torch
results bit for bit."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("-O3", "-shared", "-fPIC", "-pthread", "-std=gnu11", "-ffp-contract=off", "-fno-fast-math")


def compiler() -> str | None:
    """$CC, else cc / gcc on PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    return None


def build_dir(source: Path, cc: str) -> Path:
    """The cache folder of `source` built by `cc` with FLAGS."""
    from llm1bit.cache import default_cache_dir

    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    h = hashlib.sha256()
    for part in (source.read_bytes(), " ".join(FLAGS).encode(), cc.encode(), version.encode()):
        h.update(part)
        h.update(b"\0")
    return default_cache_dir() / "kernels" / h.hexdigest()[:16]


def compile_library(cc: str, source: Path, target: Path) -> None:
    """Compile into a temporary file beside `target`, then rename it there (concurrent builds are safe)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, *FLAGS, "-o", tmp, str(source), "-lm"], capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(f"{cc} failed: {lines[0] if lines else 'no output'}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_library(
    source: Path, name: str, abi: tuple[str, int], signatures: dict[str, tuple[type, list]]
) -> tuple[ctypes.CDLL, Path]:
    """`source` built (once per cache) and loaded, its functions typed by `signatures` (name: (restype, argtypes));
    with the path of the library.

    abi: (function, value) that the library must return, so that a cached build of an older source is refused.
    Raises OSError, RuntimeError or subprocess.SubprocessError when it cannot be had; RuntimeError without a
    compiler."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or $CC) found")
    target = build_dir(source, cc) / f"{name}.so"
    if not target.exists():
        compile_library(cc, source, target)
    lib = ctypes.CDLL(str(target))
    check = getattr(lib, abi[0])
    check.restype = ctypes.c_int
    if check() != abi[1]:
        raise RuntimeError(f"{target} has another ABI version")
    for fn_name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, fn_name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib, target
