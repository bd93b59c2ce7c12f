#!/usr/bin/env bash
# Build the wheel, install it into a clean venv (no editable checkout on sys.path) and run the CLIs' smoke path from
# it: the demo weights, configs, tolerances and kernel sources must all come from the wheel's package data.
#   bash scripts/wheel_smoke.sh            (about 2 minutes; uses python3 and the local torch wheel)
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d -t zsd-wheel.XXXXXX)"
trap 'rm -rf "$work"' EXIT
python3 -m pip wheel -q --no-deps --no-build-isolation . -w "$work/dist" 2>/dev/null \
    || python3 -m pip wheel -q --no-deps . -w "$work/dist"
wheel="$(ls "$work"/dist/zsdeploy-*.whl)"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q "${wheel}[export,bench,openvino]"
cd "$work"  # away from the checkout, so nothing resolves to its folders
bin="$work/venv/bin"
"$bin/python" - <<'PY'
import zsdeploy, zsdeploy.export, zsdeploy.runtime, zsdeploy.benchmarks, zsdeploy.families, zsdeploy.cli
for m in (zsdeploy, zsdeploy.export, zsdeploy.runtime, zsdeploy.benchmarks, zsdeploy.families, zsdeploy.cli):
    assert "site-packages" in m.__path__[0], f"{m.__name__} imported from {m.__path__[0]}, not from the wheel"
print("imports from the wheel: ok")
PY
"$bin/python" -c "from zsdeploy.runtime.scenes import sample_image; sample_image('scene.png', seed=5, height=128, width=160)"
"$bin/export-model" --model pading-demo --height 128 --width 160 --output demo.onnx | tail -n 1
"$bin/trt-infer" --model demo.onnx --input scene.png --output results --task panoptic | tail -n 1
test -s results/scene.json && test -s results/scene_panoptic.png
# a --msda plugin export runs on the CPU with OpenVINO (auto): its extension compiles from the wheel's kernel sources
"$bin/export-model" --model pading-demo --msda plugin --height 128 --width 160 --output demo_msda.onnx | tail -n 1
ZSD_CACHE_DIR="$work/cache" "$bin/trt-infer" --model demo_msda.onnx --input scene.png --output results_msda \
    --task panoptic 2> msda.log | tail -n 1 || { cat msda.log; exit 1; }
grep -q "building zsdeploy's OpenVINO extension" msda.log && test -s results_msda/scene.json
"$bin/zsd-bench" accuracy --model demo.onnx --weights demo --dataset synthetic:1 --scene-size 128x160 \
    --output acc > acc.log 2>&1 || { cat acc.log; exit 1; }
test -s acc/report.json
echo "wheel smoke: ok ($(basename "$wheel"))"
