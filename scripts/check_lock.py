"""Check that an environment holds exactly what the lock pins (`make install` runs it after installing).

    python scripts/check_lock.py requirements.lock           # every installed package pinned, same version
    python scripts/check_lock.py requirements.lock --exact   # and nothing in the lock missing (all extras)

Names are compared in PEP 503 normal form, versions as written (a local label such as torch's +cpu included).
Prints one line per difference and exits 1 on any; the editable llm1bit itself is not in the lock."""

from __future__ import annotations

import argparse
import re
import sys
from importlib.metadata import distributions
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
OUTSIDE_LOCK = {"llm1bit", "pip", "setuptools", "wheel"}  # the project, and pip's own tools


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[normal(match.group(1))] = match.group(2)
    return pins


def installed() -> dict[str, str]:
    return {normal(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}


def differences(pins: dict[str, str], have: dict[str, str], exact: bool) -> list[str]:
    lines = []
    for name, version in sorted(have.items()):
        if name in OUTSIDE_LOCK:
            continue
        if name not in pins:
            lines.append(f"{name}=={version} is installed but not in the lock")
        elif pins[name] != version:
            lines.append(f"{name}=={version} is installed, the lock pins {pins[name]}")
    if exact:
        lines += [f"{name}=={pins[name]} is locked but not installed" for name in sorted(pins.keys() - have)]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("lock", type=Path)
    parser.add_argument("--exact", action="store_true", help="also refuse locked packages that are missing")
    args = parser.parse_args()
    pins = lock_pins(args.lock)
    if not pins:
        print(f"check-lock: {args.lock} pins nothing", file=sys.stderr)
        return 1
    lines = differences(pins, installed(), args.exact)
    for line in lines:
        print(f"check-lock: {line}", file=sys.stderr)
    if not lines:
        print(f"check-lock: the environment matches {args.lock} ({len(pins)} pins)")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
