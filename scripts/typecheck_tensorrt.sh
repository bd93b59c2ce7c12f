#!/usr/bin/env bash
# mypy check of the TensorRT / cuda-python code against tensorrt-stubs (no TensorRT or GPU needed).
#
# 1. installs tensorrt-stubs 10.13 without its dependencies (they would pull the TensorRT wheels, which cannot be
#    installed here) and mypy, into the active Python environment;
# 2. fixes the installed stubs (scripts/fix_tensorrt_stubs.py: `in` parameters, a missing default, the
#    `tensorrt_libs` import, py.typed markers);
# 3. runs mypy on the TensorRT modules (FILES below). cuda-python ships no stubs (Cython extensions): its modules are
#    treated as Any, and runtime/cuda_utils.py is the typed boundary around them. Imported project modules are
#    analysed but their own errors are not reported here (--follow-imports=silent).
#
# Usage: bash scripts/typecheck_tensorrt.sh   (from any directory; uses $PYTHON or the repo's .venv or python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="python3"
fi

STUBS_VERSION="10.13.0.35.1"
have_stubs="$("$PY" -c 'import importlib.metadata as m
try: print(m.version("tensorrt-stubs"))
except m.PackageNotFoundError: print("")')"
if [[ "$have_stubs" != "$STUBS_VERSION" ]]; then
    "$PY" -m pip install --quiet --no-deps "tensorrt-stubs==$STUBS_VERSION"
fi
if ! "$PY" -c 'import mypy' 2>/dev/null; then
    "$PY" -m pip install --quiet "mypy>=1.10"
fi

"$PY" scripts/fix_tensorrt_stubs.py

# Every module of runtime/tensorrt/ (builder, runner-side loaders, precision, profiles, ...), the sidecar contract,
# the bundle builds and the backend that use them (the CLIs are thin layers over these, in zsdeploy/cli/).
FILES=(runtime/tensorrt/*.py runtime/artifacts/sidecar.py
       runtime/bundle_engines.py runtime/backends/tensorrt_backend.py runtime/cuda_utils.py)

# The project is imported as `zsdeploy.runtime` (package-dir mapping); mypy needs no install for it because the
# files are passed by path and use relative imports. A throwaway config keeps the flags in one place.
CONFIG="$(mktemp)"
trap 'rm -f "$CONFIG"' EXIT
cat > "$CONFIG" <<'CFG'
[mypy]
python_version = 3.10
follow_imports = silent
warn_unused_ignores = True
warn_redundant_casts = True
warn_return_any = False
check_untyped_defs = True
disallow_untyped_defs = True
disallow_incomplete_defs = True
no_implicit_optional = True
strict_equality = True

# cuda-python: compiled modules without type information; wrapped by runtime/cuda_utils.py.
[mypy-cuda.*]
ignore_missing_imports = True
CFG

"$PY" -m mypy --config-file "$CONFIG" "${FILES[@]}"
