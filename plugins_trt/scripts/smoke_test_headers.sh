#!/usr/bin/env bash
# Build libzsdeploy_plugins.so + zsd_plugin_smoke_test against each given TensorRT header set and run the smoke test.
# No TensorRT library or GPU is needed: the smoke test loads the plugin library as TensorRT's registry does and drives
# its IPluginV3 interfaces (on a GPU also enqueue on device buffers against the host kernel; without one, enqueue
# must fail and name the real cause). Fails (exit 1) on a configure/build error, a compiler warning in our sources,
# or a failed check. Exits 0 with a SKIP line when no header set, nvcc or cmake is there.
#
#   plugins_trt/scripts/smoke_test_headers.sh ../shared/tensorrt/v10.3.0 ../shared/tensorrt/v11.1 ...
#
# Each argument is a TensorRT root (include/NvInfer.h below it). Environment: ZSD_CUDA_ARCHS (default 87: Jetson Orin;
# one architecture keeps the build at ~10 s), ZSD_SMOKE_BUILD_DIR (default: a temp dir, removed afterwards).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$(cd "${here}/.." && pwd)"
archs="${ZSD_CUDA_ARCHS:-87}"

roots=()
for r in "$@"; do
    if [[ -f "${r}/include/NvInfer.h" ]]; then
        roots+=("$(cd "${r}" && pwd)")
    else
        echo "FAIL: ${r}: no include/NvInfer.h below it (pass TensorRT roots, e.g. ../shared/tensorrt/v10.3.0)"
        exit 1
    fi
done
if [[ ${#roots[@]} -eq 0 ]]; then
    echo "SKIP: no TensorRT header set given; the plugin was NOT compiled against TensorRT's headers"
    exit 0
fi
nvcc_bin="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "${nvcc_bin}" || ! -x "${nvcc_bin}" ]] || ! command -v cmake > /dev/null; then
    echo "SKIP: building the plugin needs nvcc and cmake (nvcc='${nvcc_bin}', cmake='$(command -v cmake || true)')"
    exit 0
fi
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)

work="${ZSD_SMOKE_BUILD_DIR:-$(mktemp -d)}"
[[ -z "${ZSD_SMOKE_BUILD_DIR:-}" ]] && trap 'rm -rf "${work}"' EXIT
mkdir -p "${work}"

failures=0
summary=()
for root in "${roots[@]}"; do
    name="$(basename "${root}")"
    build="${work}/${name}"
    log="${work}/${name}.log"
    t0=$(date +%s)
    if ! cmake -S "${src}" -B "${build}" "${generator[@]}" -DTENSORRT_ROOT="${root}" -DZSD_CUDA_ARCHS="${archs}" \
            -DCMAKE_CUDA_COMPILER="${nvcc_bin}" > "${log}" 2>&1 \
        || ! cmake --build "${build}" --parallel 2 >> "${log}" 2>&1; then
        echo "FAIL: ${name}: build failed:"; sed 's/^/    /' "${log}" | tail -40
        failures=$((failures + 1)); summary+=("${name}: build FAILED"); continue
    fi
    warnings="$(grep -E "warning[: ]" "${log}" | grep -v "^CMake Warning" || true)"
    if [[ -n "${warnings}" ]]; then
        echo "FAIL: ${name}: compiler warnings:"; echo "${warnings}" | sed 's/^/    /'
        failures=$((failures + 1)); summary+=("${name}: warnings"); continue
    fi
    version="$(sed -n 's/.*TensorRT \([0-9.]*\) headers.*/\1/p' "${log}" | head -1)"
    echo "== ${name} (TensorRT ${version:-?} headers, sm_${archs}, built in $(( $(date +%s) - t0 )) s)"
    if out="$("${build}/zsd_plugin_smoke_test" "${build}/libzsdeploy_plugins.so" 2>&1)"; then
        status="passed"
    else
        status="FAILED"; failures=$((failures + 1))
    fi
    echo "${out}" | grep -E "^(FAIL|GPU:)|checks, " | sed 's/^/    /'
    summary+=("${name} (TensorRT ${version:-?}): $(echo "${out}" | grep -E 'checks, ' | tail -1) -> ${status}")
done
echo "plugin smoke test against TensorRT headers:"
printf '  %s\n' "${summary[@]}"
[[ ${failures} -eq 0 ]] || { echo "smoke_test_headers: ${failures} FAILED"; exit 1; }
