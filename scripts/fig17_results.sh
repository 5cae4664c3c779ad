#!/usr/bin/env bash
# The results folder of fig17 (perplexity against simulated tokens/s and energy per token, cloud and edge):
# the bits files of scripts/fig17_allocations.py (one `llm1bit bits` analysis; average-bits ILP and rank rule,
# and the hardware-budget ILP at the tokens/s and energy each average-bits allocation reaches), uniform 2/3/4-bit
# lat, each quantized with `llm1bit quantize` (lat) and evaluated with `llm1bit eval --json`, plus the FP model.
# An allocation with the same widths as a run already made (every layer at one width: that uniform run; or an
# earlier allocation) is not quantized again: its eval result is that run's, naming that run's folder.
# Resumable: a run whose eval result exists is skipped. Draw: `llm1bit figures --only fig17 --results OUT`.
#
# Usage: scripts/fig17_results.sh OUT
# Settings (environment; defaults = the README's reduced mixed-bit settings, those of scripts/bench_bits.py:
#   calibration 16 x 512 of WikiText-2 validation, seed 0, lat, groupsize -1, 50 BCQ rounds, the first 20 test
#   windows of 2048; the unquantized tensors kept in float32 (SAVE_DTYPE), as bench_bits evaluates the model in
#   memory): LLM1BIT, PYTHON, MODEL, CALIB, EVAL_DATA, NSAMPLES, SEQLEN, EVAL_SEQLEN, EVAL_WINDOWS, BUDGETS
#   (average bits, comma-separated), BITS_NSAMPLES / BITS_SEQLEN (the `llm1bit bits` analysis), SAVE_DTYPE, DEVICE,
#   LOCK (a lock file that the analysis, the FP eval and each quantize + eval hold while they run (flock), so that
#   timed benchmarks sharing it are not disturbed; default none).
# Order: uniform 2 and 3 (the candidate widths), budget by budget (BUDGETS' order), then uniform 4 (a reference
# beyond the candidates), so that a partial run holds whole budgets.
set -euo pipefail
out=${1:?usage: scripts/fig17_results.sh OUT}
here=$(cd "$(dirname "$0")/.." && pwd)
LLM1BIT=${LLM1BIT:-$here/.venv/bin/llm1bit} PYTHON=${PYTHON:-$here/.venv/bin/python}
MODEL=${MODEL:-$here/.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
CALIB=${CALIB:-$here/../shared/data/wikitext-2/valid.tokenized.txt}
EVAL_DATA=${EVAL_DATA:-$here/../shared/data/wikitext-2/test.gptq-join.txt}
NSAMPLES=${NSAMPLES:-16} SEQLEN=${SEQLEN:-512} EVAL_SEQLEN=${EVAL_SEQLEN:-2048} EVAL_WINDOWS=${EVAL_WINDOWS:-20}
BUDGETS=${BUDGETS:-2.2,2.5} BITS_NSAMPLES=${BITS_NSAMPLES:-16} BITS_SEQLEN=${BITS_SEQLEN:-512} DEVICE=${DEVICE:-cpu}
SAVE_DTYPE=${SAVE_DTYPE:-float32} LOCK=${LOCK:-}
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
MODEL=$(abs "$MODEL") CALIB=$(abs "$CALIB") EVAL_DATA=$(abs "$EVAL_DATA")
mkdir -p "$out/allocations" && cd "$out"   # eval results name their folders relative to OUT

hold() { [ -z "$LOCK" ] || { exec 9>>"$LOCK" && flock 9; }; }   # until release (or the script's end)
release() { [ -z "$LOCK" ] || flock -u 9; }
evaluate() {  # NAME MODEL_PATH
  [ -s "$1.json" ] && return 0
  "$LLM1BIT" eval --model "$2" --data "$EVAL_DATA" --seqlen "$EVAL_SEQLEN" --max-windows "$EVAL_WINDOWS" \
    --device "$DEVICE" --json > "$1.json.tmp" && mv "$1.json.tmp" "$1.json"
}
quantize() {  # NAME ARGS...: quantize (unless its folder exists) and evaluate, one locked run
  local name=$1; shift
  [ -s "$name.json" ] && return 0
  hold
  [ -d "$name" ] || "$LLM1BIT" quantize --model "$MODEL" --calib "$CALIB" --nsamples "$NSAMPLES" \
    --seqlen "$SEQLEN" --seed 0 --device "$DEVICE" --method shiftaddllm --mode lat --groupsize -1 \
    --bcq-rounds 50 --save-dtype "$SAVE_DTYPE" "$@" -o "$name"
  evaluate "$name" "$name"
  release
}

if [ ! -s allocations/summary.json ]; then
  hold
  "$PYTHON" "$here/scripts/fig17_allocations.py" --model "$MODEL" --calib "$CALIB" --nsamples "$BITS_NSAMPLES" \
    --seqlen "$BITS_SEQLEN" --budgets "$BUDGETS" --device "$DEVICE" allocations
  release
fi
if [ ! -s fp.json ]; then hold; evaluate fp "$MODEL"; release; fi
declare -A made   # widths -> the run quantized with them
for bits in 2 3; do quantize "uniform$bits" --wbits "$bits"; made[uniform$bits]=uniform$bits; done
for file in $(for f in allocations/*.json; do echo "${f##*-} $f"; done | sort -s -n -k1,1 | cut -d" " -f2); do
  name=$(basename "$file" .json)   # ordered by the budget after the name's last "-", then by name
  [ "$name" = summary ] && continue
  # the allocation's widths: "uniformB" when every layer has width B, else a digest of the whole table
  key=$("$PYTHON" -c 'import hashlib,json,sys; d=json.load(open(sys.argv[1]))["layers"]; v=set(d.values())
print(f"uniform{v.pop()}" if len(v)==1 else hashlib.sha256(json.dumps(sorted(d.items())).encode()).hexdigest())' "$file")
  if [ -n "${made[$key]:-}" ]; then
    same=${made[$key]}
    echo "$name: the widths of $same, its run" >&2
    [ -s "$same.json" ] && [ ! -s "$name.json" ] && cp "$same.json" "$name.json"
    continue
  fi
  quantize "$name" --wbits 2 --bits-config "$file"
  made[$key]=$name
done
quantize uniform4 --wbits 4
echo "results in $out: llm1bit figures --only fig17 --results $out" >&2
