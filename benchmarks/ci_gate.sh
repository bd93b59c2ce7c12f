#!/usr/bin/env bash
# CI benchmark gate (CPU): export stand-in PADing panoptic at a small static size, run a short latency benchmark
# (torch baseline and ONNX Runtime interleaved) and a small-target accuracy benchmark (synthetic scenes), then
# `zsd-bench check` against the committed baseline. The export uses the DIVERSE stand-in (export-model --standin
# diverse): its reference has panoptic segments and instances, so PQ and mask AP are gated too (with the golden
# stand-in they are N/A). Prints the latency table and the gate's verdict; exits non-zero
# on an accuracy-limit violation or a regression. Budget: < 4 minutes on a 2-core machine.
#
#   bash benchmarks/ci_gate.sh                      # gate against benchmarks/baselines/ci_cpu.json
#   ZSD_BENCH_UPDATE_BASELINE=1 bash benchmarks/ci_gate.sh   # re-generate the baseline from this run
# Environment: ZSD_BENCH_OUT (work dir, default a temp dir), PYTHON (default python).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python}"
OUT="${ZSD_BENCH_OUT:-$(mktemp -d -t zsd-bench-ci.XXXXXX)}"
BASELINE="$HERE/baselines/ci_cpu.json"
TOL="$HERE/tolerances/ci.yaml"
H=128 W=160
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
THREADS="${ZSD_BENCH_THREADS:-2}"
mkdir -p "$OUT"
start=$SECONDS

echo "== [1/4] export PADing panoptic (diverse stand-in weights) at ${H}x${W} -> $OUT/pading_${H}x${W}.onnx"
"$PY" -m zsdeploy.export.cli --model pading --task panoptic --height $H --width $W --standin diverse \
    --output "$OUT/pading_${H}x${W}.onnx" > "$OUT/export.log" 2>&1 || { cat "$OUT/export.log"; exit 2; }
tail -n 1 "$OUT/export.log"

echo "== [2/4] latency: torch vs onnxruntime, ${H}x${W}, batch 1 (warm-up 1, 5 timed, interleaved)"
"$PY" -m zsdeploy.benchmarks.cli latency --model "$OUT/pading_${H}x${W}.onnx" --backends torch,onnxruntime \
    --sizes ${H}x${W} --batch 1 --warmup 1 --repeat 5 --threads "$THREADS" --output "$OUT/latency" 2> "$OUT/latency.err" \
    || { cat "$OUT/latency.err"; exit 2; }

echo "== [3/4] accuracy: onnxruntime vs pytorch on 2 synthetic small-target scenes (${H}x${W})"
acc_rc=0
"$PY" -m zsdeploy.benchmarks.cli accuracy --model "$OUT/pading_${H}x${W}.onnx" --reference pytorch \
    --dataset synthetic:2 --scene-size ${H}x${W} --threads "$THREADS" --tolerances "$TOL" \
    --output "$OUT/accuracy" 2> "$OUT/accuracy.err" || acc_rc=$?
if [ "$acc_rc" -ge 2 ]; then  # 2 bad input, 70 internal error, 130 interrupted: not an accuracy failure
    cat "$OUT/accuracy.err"; echo "CI benchmark gate: ERROR (zsd-bench accuracy exit $acc_rc)"; exit 2
fi

if [ "${ZSD_BENCH_UPDATE_BASELINE:-0}" = "1" ]; then
    "$PY" -m zsdeploy.benchmarks.cli merge "$OUT/latency/report.json" "$OUT/accuracy/report.json" --output "$BASELINE"
fi

echo "== [4/4] gate: zsd-bench check against $BASELINE"
gate_rc=0
"$PY" -m zsdeploy.benchmarks.cli check --baseline "$BASELINE" \
    --current "$OUT/latency/report.json" "$OUT/accuracy/report.json" --tolerances "$TOL" \
    --output "$OUT/verdict.json" || gate_rc=$?

echo "reports: $OUT/latency/report.md ($OUT/latency/latency.png), $OUT/accuracy/report.md; $((SECONDS - start)) s"
if [ "$acc_rc" -ne 0 ]; then echo "CI benchmark gate: FAIL (accuracy limits, see $OUT/accuracy/report.md)"; exit 1; fi
# zsd-bench exits 1 only for a regression; 2 (bad input) and 70 (internal error) are not read as one.
if [ "$gate_rc" -ge 2 ]; then
    echo "CI benchmark gate: ERROR (zsd-bench check exit $gate_rc: no regression verdict)"; exit 2
fi
if [ "$gate_rc" -ne 0 ]; then echo "CI benchmark gate: FAIL (regression vs baseline)"; exit "$gate_rc"; fi
echo "CI benchmark gate: PASS"
