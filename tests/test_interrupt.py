"""Ctrl-C during a real-SCALE-Sim sweep, sent while runs are in flight, as a terminal sends it (to the
whole process group): workers stop within 2 s, finished runs are kept, one line, exit 130, no output,
and the re-run recomputes nothing that finished."""

import os
import re
import signal
import subprocess
import sys
import time

from llm1bit.cache import ResultCache


def _entries(cache_dir) -> int:
    if not (cache_dir / "results.sqlite").exists():
        return 0
    return ResultCache(cache_dir).info()["entries"]


def test_sigint_with_runs_in_flight(tmp_path):
    cache_dir, out = tmp_path / "store", tmp_path / "opt.csv"
    cmd = [sys.executable, "-m", "llm1bit.cli", "sweep", "--models", "opt", "--hw", "cloud,edge"]
    cmd += ["--backend", "scalesim", "--jobs", "2", "--cache-dir", str(cache_dir), "-o", str(out)]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while _entries(cache_dir) < 3:  # some runs finished, many more in flight or queued
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no run finished in time"
        time.sleep(0.05)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    assert proc.returncode == 130, stderr
    assert took < 2.0, f"took {took:.1f} s to stop"
    try:  # nothing of the run is left: no worker in its process group
        os.killpg(proc.pid, 0)
        raise AssertionError("worker processes survived the interrupt")
    except ProcessLookupError:
        pass
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    match = re.fullmatch(
        r"interrupted: kept (\d+) of (\d+) SCALE-Sim runs finished by this run in the store .*", lines[0]
    )
    assert match, lines[0]
    kept, missing = int(match[1]), int(match[2])
    assert 3 <= kept < missing and _entries(cache_dir) == kept
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["store"]

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"SCALE-Sim runs: {kept} from the store, {missing - kept} simulated" in again.stderr
    assert len(out.read_text().splitlines()) == 1 + 7 * 6 * 2
