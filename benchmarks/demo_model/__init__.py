"""The demo PADing: a reduced PADing-architecture network trained by zsdeploy on generated small-target scenes.

- `data`: training samples (scenes with scale jitter, crops and flips) and the fixed held-out set;
- `criterion`: Mask2Former's Hungarian matcher and set criterion (point-sampled losses, deep supervision);
- `train`: the training loop (`python -m zsdeploy.benchmarks.demo_model.train`), seeded and resumable;
- `weights`: the shipped checkpoint (`export-model --model pading --weights demo`) and its model card.
"""
