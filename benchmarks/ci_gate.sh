#!/usr/bin/env bash
# CI benchmark gate (CPU): export stand-in PADing panoptic at a small static size, run a short latency benchmark
# (torch baseline, ONNX Runtime and the OpenVINO paths this CPU offers, interleaved), small-target accuracy
# benchmarks (synthetic scenes) of the fp32 graph and of fp16 and int8 graphs converted from it (each against the
# fp32 PyTorch reference, with its own per-bucket limits), then `zsd-bench check` against the committed baseline.
# It first states the CPU and which precision paths it offers (bf16 needs AMX or AVX512-BF16). The export uses the DIVERSE stand-in (export-model --standin
# diverse): its reference has panoptic segments and instances, so PQ and mask AP are gated too (with the golden
# stand-in they are N/A). Prints the latency table and the gate's verdict; exits non-zero
# on an accuracy-limit violation or a regression. Budget: < 7 minutes on a 2-core machine.
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

echo "== [0/6] CPU and the precision paths it offers"
"$PY" - <<'PY'
from zsdeploy.benchmarks.latency import cpu_report
cpu = cpu_report()
f = cpu["features"]
bf16 = f.get("amx_bf16") is True or f.get("avx512_bf16") is True
int8 = f.get("amx_int8") is True or f.get("avx512_vnni") is True
print(f"CPU: {cpu['model']}; features: " + ", ".join(k for k, v in f.items() if v is True))
print("precision paths: f32 (ONNX Runtime, OpenVINO) yes; bf16 (OpenVINO) " + ("yes" if bf16 else "no: measured as N/A")
      + "; int8 Q/DQ graphs (ONNX Runtime) yes, " + ("with VNNI/AMX int8 instructions" if int8 else
      "without VNNI/AMX int8 (slower, same results)") + "; fp16 graphs (ONNX Runtime) yes")
import os, shutil
cxx = next((shutil.which(c) for c in filter(None, (os.environ.get("CXX"), "g++", "c++")) if shutil.which(c)), None)
print("--msda plugin graphs on OpenVINO (the fastest CPU path; tests/integration/test_ov_extension.py): "
      + (f"zsdeploy's extension builds with {cxx}" if cxx else "no C++ compiler: not available"
         + (" (ZSD_OV_EXTENSION is set)" if os.environ.get("ZSD_OV_EXTENSION") else "")))
PY

echo "== [1/6] export PADing panoptic (diverse stand-in weights) at ${H}x${W} -> $OUT/pading_${H}x${W}.onnx"
"$PY" -m zsdeploy.cli.export_model --model pading --task panoptic --height $H --width $W --standin diverse \
    --output "$OUT/pading_${H}x${W}.onnx" > "$OUT/export.log" 2>&1 || { cat "$OUT/export.log"; exit 2; }
tail -n 1 "$OUT/export.log"

echo "== [2/6] latency: torch vs onnxruntime (gated) and openvino f32 / bf16 (reported), ${H}x${W}, batch 1 (warm-up 1, 5 timed, interleaved)"
"$PY" -m zsdeploy.benchmarks.cli latency --model "$OUT/pading_${H}x${W}.onnx" \
    --backends torch,onnxruntime,openvino,openvino-bf16 \
    --sizes ${H}x${W} --batch 1 --warmup 1 --repeat 5 --threads "$THREADS" --output "$OUT/latency" 2> "$OUT/latency.err" \
    || { cat "$OUT/latency.err"; exit 2; }

echo "== [3/6] accuracy: onnxruntime (fp32 graph) vs pytorch on 2 synthetic small-target scenes (${H}x${W})"
acc_rc=0
"$PY" -m zsdeploy.benchmarks.cli accuracy --model "$OUT/pading_${H}x${W}.onnx" --reference pytorch \
    --dataset synthetic:2 --scene-size ${H}x${W} --threads "$THREADS" --tolerances "$TOL" \
    --output "$OUT/accuracy" 2> "$OUT/accuracy.err" || acc_rc=$?
if [ "$acc_rc" -ge 2 ]; then  # 2 bad input, 70 internal error, 130 interrupted: not an accuracy failure
    cat "$OUT/accuracy.err"; echo "CI benchmark gate: ERROR (zsd-bench accuracy exit $acc_rc)"; exit 2
fi

echo "== [4/6] fp16 and int8 graphs converted from the fp32 export (default fp32 islands; int8 calibrated on 4 scenes)"
"$PY" -m zsdeploy.cli.export_model --from-onnx "$OUT/pading_${H}x${W}.onnx" --precision fp16 \
    --output "$OUT/pading_${H}x${W}_fp16.onnx" > "$OUT/fp16.log" 2>&1 || { cat "$OUT/fp16.log"; exit 2; }
tail -n 1 "$OUT/fp16.log"
"$PY" -m zsdeploy.cli.export_model --from-onnx "$OUT/pading_${H}x${W}.onnx" --precision int8 --calib-scenes 4 \
    --output "$OUT/pading_${H}x${W}_int8.onnx" > "$OUT/int8.log" 2>&1 || { cat "$OUT/int8.log"; exit 2; }
tail -n 1 "$OUT/int8.log"

echo "== [5/6] accuracy of the fp16 and int8 graphs vs the fp32 pytorch reference, per size bucket"
for p in fp16 int8; do
    rc=0
    "$PY" -m zsdeploy.benchmarks.cli accuracy --model "$OUT/pading_${H}x${W}_$p.onnx" --reference pytorch \
        --dataset synthetic:2 --scene-size ${H}x${W} --threads "$THREADS" --tolerances "$HERE/tolerances/ci_$p.yaml" \
        --output "$OUT/accuracy_$p" 2> "$OUT/accuracy_$p.err" || rc=$?
    if [ "$rc" -ge 2 ]; then
        cat "$OUT/accuracy_$p.err"; echo "CI benchmark gate: ERROR (zsd-bench accuracy $p exit $rc)"; exit 2
    fi
    if [ "$rc" -ne 0 ]; then acc_rc=1; echo "$p graph: outside its limits (see $OUT/accuracy_$p/report.md)"; fi
done
REPORTS=("$OUT/latency/report.json" "$OUT/accuracy/report.json" "$OUT/accuracy_fp16/report.json"
         "$OUT/accuracy_int8/report.json")

if [ "${ZSD_BENCH_UPDATE_BASELINE:-0}" = "1" ]; then
    "$PY" -m zsdeploy.benchmarks.cli merge "${REPORTS[@]}" --output "$BASELINE"
fi

echo "== [6/6] gate: zsd-bench check against $BASELINE"
gate_rc=0
"$PY" -m zsdeploy.benchmarks.cli check --baseline "$BASELINE" --current "${REPORTS[@]}" --tolerances "$TOL" \
    --output "$OUT/verdict.json" || gate_rc=$?

echo "reports: $OUT/latency/report.md ($OUT/latency/latency.png), $OUT/accuracy{,_fp16,_int8}/report.md; $((SECONDS - start)) s"
if [ "$acc_rc" -ne 0 ]; then echo "CI benchmark gate: FAIL (accuracy limits, see $OUT/accuracy/report.md)"; exit 1; fi
# zsd-bench exits 1 only for a regression; 2 (bad input) and 70 (internal error) are not read as one.
if [ "$gate_rc" -ge 2 ]; then
    echo "CI benchmark gate: ERROR (zsd-bench check exit $gate_rc: no regression verdict)"; exit 2
fi
if [ "$gate_rc" -ne 0 ]; then echo "CI benchmark gate: FAIL (regression vs baseline)"; exit "$gate_rc"; fi
echo "CI benchmark gate: PASS"
