"""The artifact contract: the one place that writes and reads what zsdeploy's files say about themselves.

- `onnx_metadata`: ONNX `metadata_props` (ModelInfo) written by export-model, read by every runtime.
- `sidecar`: a TensorRT engine's JSON sidecar (`<plan>.json`) written by build-engine, read by the TensorRT runner.
- `bundle_manifest`: a ZegFormer bundle's `bundle.json`.

Each is typed, carries a format version, parses strictly (a missing or malformed field is a ZsdError naming the
field and the file), and records what the artifact was made from (sha256), so a stale derived file is caught.
"""
