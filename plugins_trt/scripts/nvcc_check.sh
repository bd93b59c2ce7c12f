#!/usr/bin/env bash
# Compile the MSDeformAttn CUDA kernel (plugins_trt/msdeformattn/msDeformAttnKernel.cu) with nvcc -c for a list of
# GPU architectures. No GPU is needed. Fails loudly (exit 1) on any compile error, compiler warning, register spill or
# local-memory use, or on an architecture the installed nvcc cannot target. Exits 0 with a SKIP line when nvcc is absent.
#
#   plugins_trt/scripts/nvcc_check.sh              # sm_87 (Jetson Orin) and sm_90 (H100)
#   plugins_trt/scripts/nvcc_check.sh 75 80 86     # any list (also "75;80" or ZSD_CUDA_ARCHS="75;80")
#
# Environment: NVCC (path to nvcc), CUDA_HOME / CUDA_PATH, ZSD_CUDA_ARCHS, ZSD_NVCC_KEEP=1 (keep the object files).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src_dir="$(cd "${here}/../msdeformattn" && pwd)"
kernel="${src_dir}/msDeformAttnKernel.cu"

find_nvcc() {
    local c candidates
    if [[ -n "${NVCC:-}" ]]; then
        candidates=("${NVCC}") # an explicit NVCC is the only candidate
    else
        candidates=("${CUDA_HOME:+${CUDA_HOME}/bin/nvcc}" "${CUDA_PATH:+${CUDA_PATH}/bin/nvcc}"
                    "$(command -v nvcc 2>/dev/null || true)" /usr/local/cuda/bin/nvcc)
    fi
    for c in "${candidates[@]}"; do
        if [[ -n "${c}" && -x "${c}" ]]; then
            echo "${c}"
            return 0
        fi
    done
    return 1
}

if ! nvcc_bin="$(find_nvcc)"; then
    echo "SKIP: nvcc not found (${NVCC:+NVCC=${NVCC} is not executable; }set NVCC or CUDA_HOME, or put nvcc on PATH);" \
         "the CUDA kernel was NOT compiled"
    exit 0
fi

# architectures: arguments, else ZSD_CUDA_ARCHS, else 87 90; separators: space, ';' or ','
raw="${*:-${ZSD_CUDA_ARCHS:-87 90}}"
read -r -a archs <<< "${raw//[;,]/ }"
if [[ ${#archs[@]} -eq 0 ]]; then
    echo "FAIL: empty architecture list" >&2
    exit 1
fi

nvcc_version="$("${nvcc_bin}" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
supported="$("${nvcc_bin}" --list-gpu-arch 2>/dev/null | sed -n 's/^compute_\([0-9]*[a-z]*\)$/\1/p' | tr '\n' ' ' || true)"
echo "nvcc: ${nvcc_bin} (CUDA ${nvcc_version:-?}); supported: ${supported:-unknown}"
echo "kernel: ${kernel}"

out_dir="$(mktemp -d)"
if [[ "${ZSD_NVCC_KEEP:-0}" != "1" ]]; then
    trap 'rm -rf "${out_dir}"' EXIT
fi

# Warnings are errors; ptxas reports spills and local memory, which the kernel must not need.
common=(-std=c++17 -O3 -c -Xcompiler -fPIC,-Wall,-Wextra -Werror all-warnings
        -Xptxas -v,-warn-spills,-warn-lmem-usage -I"${src_dir}")

failures=0
first_ok=""
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
compile() { # name, extra args...
    local name="$1"; shift
    local log="${out_dir}/${name}.log"
    local t0 t1
    t0=$(now_ms)
    if "${nvcc_bin}" "${common[@]}" "$@" "${kernel}" -o "${out_dir}/${name}.o" > "${log}" 2>&1; then
        t1=$(now_ms)
        local spills
        spills="$(grep -E '[1-9][0-9]* bytes spill|[1-9][0-9]* bytes stack frame' "${log}" || true)"
        if [[ -n "${spills}" ]]; then
            echo "FAIL: ${name}: spills / stack use:"
            echo "${spills}"
            failures=$((failures + 1))
            return 1
        fi
        local regs
        regs="$(grep -oE 'Used [0-9]+ registers' "${log}" | awk '{print $2}' | sort -n | tail -1)"
        printf 'ok:   %-26s %6d ms  max %s registers/thread, 0 spills, %s kernels\n' "${name}" \
            "$((t1 - t0))" "${regs:-?}" "$(grep -c 'Compiling entry function' "${log}")"
        return 0
    else
        echo "FAIL: ${name}: nvcc exited non-zero:"
        sed 's/^/    /' "${log}"
        failures=$((failures + 1))
        return 1
    fi
}

for arch in "${archs[@]}"; do
    if [[ ! "${arch}" =~ ^[0-9]+[af]?$ ]]; then
        echo "FAIL: '${arch}' is not an SM number (e.g. 87)"
        failures=$((failures + 1))
        continue
    fi
    if [[ -n "${supported}" && " ${supported} " != *" ${arch} "* ]]; then
        echo "FAIL: nvcc ${nvcc_version} cannot target sm_${arch} (supported: ${supported})"
        failures=$((failures + 1))
        continue
    fi
    if compile "sm_${arch}" -gencode "arch=compute_${arch},code=sm_${arch}"; then
        first_ok="${first_ok:-${arch}}"
    fi
done

# The flags torch.utils.cpp_extension adds when it builds the kernel into the torch extension.
if [[ -n "${first_ok}" ]]; then
    compile "sm_${first_ok}+torch-flags" -gencode "arch=compute_${first_ok},code=sm_${first_ok}" \
        -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
        -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr || true
fi

if [[ ${failures} -ne 0 ]]; then
    echo "nvcc_check: ${failures} FAILED"
    exit 1
fi
echo "nvcc_check: all passed (${archs[*]})"
[[ "${ZSD_NVCC_KEEP:-0}" == "1" ]] && echo "objects kept in ${out_dir}"
exit 0
