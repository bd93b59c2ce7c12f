#!/usr/bin/env bash
# Install zsdeploy and run its main job on an embedded default: export PADing panoptic to ONNX (stand-in weights
# unless WEIGHTS=path/to/model_final.pth is set), generate a small-target scene, segment it with trt-infer.
# MODEL=zegformer ./scripts/demo.sh: the same with a ZegFormer bundle and a run-time vocabulary (see below).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .venv ]; then python3 -m venv .venv; fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[export]"

mkdir -p demo
python -c "from zsdeploy.benchmarks.synthetic import sample_image; print('sample image:', sample_image('demo/scene.png', seed=0, height=640, width=960))"
weights=()
if [ -n "${WEIGHTS:-}" ]; then weights=(--weights "$WEIGHTS"); fi

if [ "${MODEL:-pading}" = "zegformer" ]; then
    # ZegFormer (COCO-Stuff R101) as a bundle, then a vocabulary of new names chosen at run time. CLIP's tokenizer
    # vocabulary is data zsdeploy does not ship: set ZSD_CLIP_BPE=/path/to/bpe_simple_vocab_16e6.txt.gz (or
    # `pip install open-clip-torch`, which ships it). CLIP=ViT-B-16.pt for OpenAI's weights (else stand-in).
    clip=()
    if [ -n "${CLIP:-}" ]; then clip=(--clip "$CLIP"); fi
    export-model --model zegformer --config cocostuff_r101 "${weights[@]}" "${clip[@]}" --dynamic \
        --output demo/zegformer_bundle
    trt-infer --model demo/zegformer_bundle --input demo/scene.png --output demo/results_zegformer --vis \
        --classes "${CLASSES:-person,corgi,fire truck,traffic cone,grass,sky}"
    echo "results: demo/results_zegformer (scene_semantic.png, scene.json, scene_vis.png)"
    exit 0
fi

export-model --model pading --task panoptic "${weights[@]}" --height 800 --width 1216 --output demo/pading_panoptic.onnx
trt-infer --model demo/pading_panoptic.onnx --input demo/scene.png --output demo/results --task semantic --vis --save-raw
echo "results: demo/results (scene_semantic.png, scene.json, scene_vis.png, scene_raw.npz)"
