"""The console scripts (export-model, build-engine, trt-infer, export-triton; zsd-bench is zsdeploy.benchmarks.cli):
each parses its arguments, calls the Python API and ends through `zsdeploy.runtime.cli_core.run_main`."""
