#!/usr/bin/env bash
# Install zsdeploy and run its main job on an embedded default: export the demo PADing (trained by zsdeploy on
# generated small-target scenes; WEIGHTS=path/to/model_final.pth for the official PADing checkpoint instead) to ONNX,
# generate a scene it has never seen, and segment it with trt-infer (panoptic, instance and semantic results).
# MODEL=zegformer ./scripts/demo.sh: the same with a ZegFormer bundle and a run-time vocabulary (see below).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .venv ]; then python3 -m venv .venv; fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[export]"

mkdir -p demo
weights=()
if [ -n "${WEIGHTS:-}" ]; then weights=(--weights "$WEIGHTS"); fi

if [ "${MODEL:-pading}" = "zegformer" ]; then
    # ZegFormer (COCO-Stuff R101) as a bundle, then a vocabulary of new names chosen at run time. CLIP's tokenizer
    # vocabulary is data zsdeploy does not ship: set ZSD_CLIP_BPE=/path/to/bpe_simple_vocab_16e6.txt.gz (or
    # `pip install open-clip-torch`, which ships it). CLIP=ViT-B-16.pt for OpenAI's weights (else stand-in).
    python -c "from zsdeploy.runtime.scenes import sample_image; print('sample image:', sample_image('demo/scene.png', seed=0, height=640, width=960))"
    clip=()
    if [ -n "${CLIP:-}" ]; then clip=(--clip "$CLIP"); fi
    export-model --model zegformer --config cocostuff_r101 "${weights[@]}" "${clip[@]}" --dynamic \
        --output demo/zegformer_bundle
    trt-infer --model demo/zegformer_bundle --input demo/scene.png --output demo/results_zegformer --vis \
        --classes "${CLASSES:-person,corgi,fire truck,traffic cone,grass,sky}"
    echo "results: demo/results_zegformer (scene_semantic.png, scene.json, scene_vis.png)"
    exit 0
fi

if [ -n "${WEIGHTS:-}" ]; then
    # The official checkpoint: COCO-trained PADing at its test resolution (scenes are not COCO photos: expect little).
    python -c "from zsdeploy.runtime.scenes import sample_image; print('sample image:', sample_image('demo/scene.png', seed=0, height=640, width=960))"
    export-model --model pading --task panoptic "${weights[@]}" --height 800 --width 1216 --output demo/pading_panoptic.onnx
    model=demo/pading_panoptic.onnx
else
    # The demo model at its training resolution (short edge 256): a scene from the same generator, never trained on.
    python -c "from zsdeploy.runtime.scenes import sample_image; print('sample image:', sample_image('demo/scene.png', seed=0, height=256, width=384, n_objects=24, size_range=(8, 110)))"
    export-model --model pading-demo --height 256 --width 384 --output demo/pading_demo.onnx
    model=demo/pading_demo.onnx
fi
for task in panoptic instance semantic; do
    trt-infer --model "$model" --input demo/scene.png --output "demo/results/$task" --task "$task" --vis
done
python - <<'PY'
import json
pan = json.load(open("demo/results/panoptic/scene.json"))
inst = json.load(open("demo/results/instance/scene.json"))
print(f"panoptic: {len(pan['segments_info'])} segments: " + ", ".join(sorted({s['name'] for s in pan['segments_info']})))
print(f"instance: {sum(i['score'] >= 0.5 for i in inst['instances'])} instances with score >= 0.5")
PY
echo "results: demo/results/{panoptic,instance,semantic}/ (scene_<task>.png, scene.json, scene_vis.png)"
