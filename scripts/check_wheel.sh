#!/usr/bin/env bash
# Install llm1bit as a user would and run it from outside the checkout (issue 11, section 3):
# build the wheel, install it with its core dependencies from PyPI into a fresh virtual environment,
# `pip check`, then `simulate` (closed form and real SCALE-Sim) and `figures --only fig13` from a
# temporary directory. Nothing is written into the checkout or to the user's llm1bit / matplotlib caches;
# pip keeps its usual download cache (set PIP_CACHE_DIR to move it).
#
#   bash scripts/check_wheel.sh            # PYTHON=python3.12 bash scripts/check_wheel.sh for another one
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
BUILD_PIP=("$ROOT/.venv/bin/python" -m pip)
[[ -x "$ROOT/.venv/bin/python" ]] || BUILD_PIP=("$PYTHON" -m pip)

TMP="$(mktemp -d "${TMPDIR:-/tmp}/llm1bit-wheel.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
START=$SECONDS
step() { printf '[check-wheel %3ds] %s\n' "$((SECONDS - START))" "$*"; }
fail() { echo "check-wheel: FAILED: $*" >&2; exit 1; }

# 1. The wheel, built (with build isolation, as pip does for users) from a clean copy of the sources,
#    so no stale build/ folder of the checkout can leak into it.
step "building the wheel"
mkdir "$TMP/src"
(cd "$ROOT" && tar --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md llm1bit) |
    tar -C "$TMP/src" -xf -
"${BUILD_PIP[@]}" wheel --quiet --no-deps --wheel-dir "$TMP/wheel" "$TMP/src"
WHEELS=("$TMP"/wheel/llm1bit-*.whl)
[[ ${#WHEELS[@]} -eq 1 && -f "${WHEELS[0]}" ]] || fail "expected one llm1bit wheel, got: ${WHEELS[*]}"
WHEEL="${WHEELS[0]}"
step "built $(basename "$WHEEL")"

# 2. A fresh virtual environment holding the wheel and its core (non-quant) dependencies from PyPI.
step "installing into a fresh venv with $("$PYTHON" -V 2>&1)"
"$PYTHON" -m venv "$TMP/venv"
VENV="$TMP/venv"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$WHEEL"
"$VENV/bin/python" -m pip check --disable-pip-version-check

# 3. Run it from a directory outside the checkout, with every cache in the temporary folder.
mkdir "$TMP/work"
cd "$TMP/work"
export LLM1BIT_CACHE_DIR="$TMP/cache" MPLCONFIGDIR="$TMP/mpl"
CLI="$VENV/bin/llm1bit"

where="$("$VENV/bin/python" -c 'import llm1bit; print(llm1bit.__file__)')"
case "$where" in
    "$VENV"/*) step "llm1bit imported from $where" ;;
    *) fail "llm1bit was imported from $where, not from the fresh venv $VENV" ;;
esac

step "simulate --model opt-6.7b --hw cloud --backend analytic"
"$CLI" simulate --model opt-6.7b --hw cloud --backend analytic --cache-dir "$TMP/cache" >"$TMP/analytic.txt"
grep -q "MatMul-free" "$TMP/analytic.txt" || fail "simulate (analytic) printed no MatMul-free split"

step "simulate --model opt-350m --hw edge (real SCALE-Sim)"
"$CLI" simulate --model opt-350m --hw edge --cache-dir "$TMP/cache" >"$TMP/scalesim.txt"
grep -q "MatMul-free" "$TMP/scalesim.txt" || fail "simulate (scalesim) printed no MatMul-free split"

step "figures --only fig13"
"$CLI" figures --only fig13 --out "$TMP/figs" --cache-dir "$TMP/cache" >/dev/null
for ext in png pdf csv; do
    [[ -s "$TMP/figs/fig13-modern-vs-paper.$ext" ]] || fail "figures wrote no fig13-modern-vs-paper.$ext"
done

step "OK: wheel installed and run from outside the checkout"
