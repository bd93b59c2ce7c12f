#!/usr/bin/env bash
# Install zsdeploy and run its main job on an embedded default: export PADing panoptic to ONNX (stand-in weights
# unless WEIGHTS=path/to/model_final.pth is set), generate a small-target scene, segment it with trt-infer.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .venv ]; then python3 -m venv .venv; fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[export]"

mkdir -p demo
weights=()
if [ -n "${WEIGHTS:-}" ]; then weights=(--weights "$WEIGHTS"); fi
export-model --model pading --task panoptic "${weights[@]}" --height 800 --width 1216 --output demo/pading_panoptic.onnx
python -c "from zsdeploy.benchmarks.synthetic import sample_image; print('sample image:', sample_image('demo/scene.png', seed=0, height=640, width=960))"
trt-infer --model demo/pading_panoptic.onnx --input demo/scene.png --output demo/results --task semantic --vis --save-raw
echo "results: demo/results (scene_semantic.png, scene.json, scene_vis.png, scene_raw.npz)"
