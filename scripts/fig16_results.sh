#!/usr/bin/env bash
# Quantize one model with rtn / gptq / shiftaddllm (lat, acc) at 2 and 3 bits and a mixed allocation, and
# evaluate each (plus the FP model) with `llm1bit eval --json`: the results folder fig16 is drawn from
# (`llm1bit figures --only fig16 --results OUT`). Resumable: a run whose eval result exists is skipped.
#
# Usage: scripts/fig16_results.sh OUT
# Settings (environment, defaults = the README's SmolLM2 study at reduced calibration):
#   LLM1BIT (llm1bit command), MODEL, CALIB, EVAL_DATA, NSAMPLES, SEQLEN, EVAL_SEQLEN, EVAL_WINDOWS,
#   BUDGET (mixed-bit budget), BITS_NSAMPLES / BITS_SEQLEN (the `llm1bit bits` analysis), DEVICE.
set -euo pipefail
out=${1:?usage: scripts/fig16_results.sh OUT}
here=$(cd "$(dirname "$0")/.." && pwd)
LLM1BIT=${LLM1BIT:-$here/.venv/bin/llm1bit}
MODEL=${MODEL:-$here/.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
CALIB=${CALIB:-$here/../shared/data/wikitext-2/valid.tokenized.txt}
EVAL_DATA=${EVAL_DATA:-$here/../shared/data/wikitext-2/test.gptq-join.txt}
NSAMPLES=${NSAMPLES:-32} SEQLEN=${SEQLEN:-2048} EVAL_SEQLEN=${EVAL_SEQLEN:-2048} EVAL_WINDOWS=${EVAL_WINDOWS:-16}
BUDGET=${BUDGET:-2.2} BITS_NSAMPLES=${BITS_NSAMPLES:-16} BITS_SEQLEN=${BITS_SEQLEN:-512} DEVICE=${DEVICE:-cpu}
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
MODEL=$(abs "$MODEL") CALIB=$(abs "$CALIB") EVAL_DATA=$(abs "$EVAL_DATA")
mkdir -p "$out" && cd "$out"   # eval results name their folders relative to OUT

evaluate() {  # NAME MODEL_PATH
  [ -s "$1.json" ] && return 0
  "$LLM1BIT" eval --model "$2" --data "$EVAL_DATA" --seqlen "$EVAL_SEQLEN" --max-windows "$EVAL_WINDOWS" \
    --device "$DEVICE" --json > "$1.json.tmp" && mv "$1.json.tmp" "$1.json"
}
quantize() {  # NAME ARGS...
  local name=$1; shift
  [ -s "$name.json" ] && return 0
  [ -d "$name" ] || "$LLM1BIT" quantize --model "$MODEL" --calib "$CALIB" --nsamples "$NSAMPLES" \
    --seqlen "$SEQLEN" --device "$DEVICE" "$@" -o "$name"
  evaluate "$name" "$name"
}

evaluate fp "$MODEL"
for bits in 3 2; do
  quantize "rtn$bits" --method rtn --wbits "$bits"
  quantize "gptq$bits" --method gptq --wbits "$bits"
  quantize "lat$bits" --method shiftaddllm --mode lat --wbits "$bits"
  quantize "acc$bits" --method shiftaddllm --mode acc --wbits "$bits"
done
if [ ! -s "lat-mixed.json" ]; then
  [ -s alloc.json ] || "$LLM1BIT" bits --model "$MODEL" --calib "$CALIB" --nsamples "$BITS_NSAMPLES" \
    --seqlen "$BITS_SEQLEN" --mode lat --candidates 2,3 --budget "$BUDGET" --device "$DEVICE" -o alloc.json
  quantize lat-mixed --method shiftaddllm --mode lat --wbits 2 --bits-config alloc.json
fi
echo "results in $out: llm1bit figures --only fig16 --results $out" >&2
