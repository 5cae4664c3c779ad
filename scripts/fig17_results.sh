#!/usr/bin/env bash
# The results folder of fig17 (perplexity against simulated tokens/s and energy per token, cloud and edge):
# the bits files of scripts/fig17_allocations.py (one `llm1bit bits` analysis; average-bits ILP and rank rule,
# and the hardware-budget ILP at the tokens/s and energy each average-bits allocation reaches), uniform 2/3/4-bit
# lat, each quantized with `llm1bit quantize` (lat) and evaluated with `llm1bit eval --json`, plus the FP model.
# An allocation with every layer at one width is the uniform run of that width (not quantized again).
# Resumable: a run whose eval result exists is skipped. Draw: `llm1bit figures --only fig17 --results OUT`.
#
# Usage: scripts/fig17_results.sh OUT
# Settings (environment; defaults = fig16's reduced SmolLM2 settings): LLM1BIT, PYTHON, MODEL, CALIB, EVAL_DATA,
#   NSAMPLES, SEQLEN, EVAL_SEQLEN, EVAL_WINDOWS, BUDGETS (average bits, comma-separated), BITS_NSAMPLES /
#   BITS_SEQLEN (the `llm1bit bits` analysis), DEVICE.
set -euo pipefail
out=${1:?usage: scripts/fig17_results.sh OUT}
here=$(cd "$(dirname "$0")/.." && pwd)
LLM1BIT=${LLM1BIT:-$here/.venv/bin/llm1bit} PYTHON=${PYTHON:-$here/.venv/bin/python}
MODEL=${MODEL:-$here/.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
CALIB=${CALIB:-$here/../shared/data/wikitext-2/valid.tokenized.txt}
EVAL_DATA=${EVAL_DATA:-$here/../shared/data/wikitext-2/test.gptq-join.txt}
NSAMPLES=${NSAMPLES:-16} SEQLEN=${SEQLEN:-512} EVAL_SEQLEN=${EVAL_SEQLEN:-2048} EVAL_WINDOWS=${EVAL_WINDOWS:-16}
BUDGETS=${BUDGETS:-2.2,2.5} BITS_NSAMPLES=${BITS_NSAMPLES:-16} BITS_SEQLEN=${BITS_SEQLEN:-512} DEVICE=${DEVICE:-cpu}
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
MODEL=$(abs "$MODEL") CALIB=$(abs "$CALIB") EVAL_DATA=$(abs "$EVAL_DATA")
mkdir -p "$out/allocations" && cd "$out"   # eval results name their folders relative to OUT

evaluate() {  # NAME MODEL_PATH
  [ -s "$1.json" ] && return 0
  "$LLM1BIT" eval --model "$2" --data "$EVAL_DATA" --seqlen "$EVAL_SEQLEN" --max-windows "$EVAL_WINDOWS" \
    --device "$DEVICE" --json > "$1.json.tmp" && mv "$1.json.tmp" "$1.json"
}
quantize() {  # NAME ARGS...
  local name=$1; shift
  [ -s "$name.json" ] && return 0
  [ -d "$name" ] || "$LLM1BIT" quantize --model "$MODEL" --calib "$CALIB" --nsamples "$NSAMPLES" \
    --seqlen "$SEQLEN" --device "$DEVICE" --method shiftaddllm --mode lat "$@" -o "$name"
  evaluate "$name" "$name"
}

[ -s allocations/summary.json ] || "$PYTHON" "$here/scripts/fig17_allocations.py" --model "$MODEL" \
  --calib "$CALIB" --nsamples "$BITS_NSAMPLES" --seqlen "$BITS_SEQLEN" --budgets "$BUDGETS" --device "$DEVICE" \
  allocations
evaluate fp "$MODEL"
for bits in 2 3 4; do quantize "uniform$bits" --wbits "$bits"; done
for file in allocations/*.json; do
  name=$(basename "$file" .json)
  [ "$name" = summary ] && continue
  width=$("$PYTHON" -c 'import json,sys; v=set(json.load(open(sys.argv[1]))["layers"].values()); print(v.pop() if len(v)==1 else "")' "$file")
  if [ -n "$width" ]; then echo "$name: every layer at $width bits, the run uniform$width" >&2; continue; fi
  quantize "$name" --wbits 2 --bits-config "$file"
done
echo "results in $out: llm1bit figures --only fig17 --results $out" >&2
