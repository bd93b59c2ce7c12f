/*
 * zsdeploy — torch extension binding of the MSDeformAttn kernels (used by zsdeploy.export.msda_kernel and
 * benchmarks/gpu_check.py). CPU tensors run the host kernel (msDeformAttnHost.cpp); CUDA tensors run the CUDA kernel
 * (msDeformAttnKernel.cu) when the extension is built with -DZSD_WITH_CUDA.
 * SPDX-License-Identifier: Apache-2.0
 */
#include <torch/extension.h>

#include <algorithm>
#include <vector>

#include "msDeformAttnHost.h"

#if defined(ZSD_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "msDeformAttnKernel.h"
#endif

namespace
{

struct Problem
{
    ZsdMSDAProblem p;
    int32_t dtype;
};

int32_t checkedInt32(int64_t v, char const* what)
{
    TORCH_CHECK(v >= 0 && v <= INT32_MAX, "MSDeformAttn: ", what, " = ", v, " does not fit into int32");
    return static_cast<int32_t>(v);
}

Problem checkInputs(at::Tensor const& value, at::Tensor const& spatialShapes, at::Tensor const& levelStartIndex,
    at::Tensor const& samplingLocations, at::Tensor const& attentionWeights)
{
    TORCH_CHECK(value.dim() == 4, "MSDeformAttn: value must be [N, S, M, D], got ", value.sizes());
    TORCH_CHECK(spatialShapes.dim() == 2 && spatialShapes.size(1) == 2,
        "MSDeformAttn: spatial_shapes must be [L, 2], got ", spatialShapes.sizes());
    TORCH_CHECK(levelStartIndex.dim() == 1, "MSDeformAttn: level_start_index must be [L], got ",
        levelStartIndex.sizes());
    TORCH_CHECK(samplingLocations.dim() == 6 && samplingLocations.size(5) == 2,
        "MSDeformAttn: sampling_locations must be [N, Lq, M, L, P, 2], got ", samplingLocations.sizes());
    TORCH_CHECK(attentionWeights.dim() == 5, "MSDeformAttn: attention_weights must be [N, Lq, M, L, P], got ",
        attentionWeights.sizes());

    int64_t const n = value.size(0), s = value.size(1), m = value.size(2), d = value.size(3);
    int64_t const l = spatialShapes.size(0);
    int64_t const lq = samplingLocations.size(1), p = samplingLocations.size(4);
    TORCH_CHECK(levelStartIndex.size(0) == l, "MSDeformAttn: level_start_index has ", levelStartIndex.size(0),
        " entries but spatial_shapes has ", l, " levels");
    TORCH_CHECK(samplingLocations.size(0) == n && samplingLocations.size(2) == m && samplingLocations.size(3) == l,
        "MSDeformAttn: sampling_locations ", samplingLocations.sizes(), " does not match value ", value.sizes(),
        " and L = ", l);
    TORCH_CHECK(attentionWeights.size(0) == n && attentionWeights.size(1) == lq && attentionWeights.size(2) == m
            && attentionWeights.size(3) == l && attentionWeights.size(4) == p,
        "MSDeformAttn: attention_weights ", attentionWeights.sizes(), " does not match sampling_locations ",
        samplingLocations.sizes());

    auto const st = value.scalar_type();
    TORCH_CHECK(st == at::kFloat || st == at::kHalf, "MSDeformAttn kernel supports float32 and float16, got ", st);
    auto const locType = samplingLocations.scalar_type();
    bool const mixed = st == at::kHalf && locType == at::kFloat; // fp16 value, fp32 locations and weights
    TORCH_CHECK(attentionWeights.scalar_type() == locType && (locType == st || mixed),
        "MSDeformAttn: value, sampling_locations and attention_weights must have the same dtype (or fp16 value with "
        "fp32 sampling_locations and attention_weights), got ", st, ", ", locType, ", ",
        attentionWeights.scalar_type());
    TORCH_CHECK(spatialShapes.scalar_type() == at::kInt && levelStartIndex.scalar_type() == at::kInt,
        "MSDeformAttn: spatial_shapes and level_start_index must be int32 (convert in Python)");
    for (auto const* t : {&value, &spatialShapes, &levelStartIndex, &samplingLocations, &attentionWeights})
    {
        TORCH_CHECK(t->is_contiguous(), "MSDeformAttn: inputs must be contiguous (convert in Python)");
    }

    Problem pr;
    pr.p.batch = checkedInt32(n, "N");
    pr.p.spatialSize = checkedInt32(s, "S");
    pr.p.numHeads = checkedInt32(m, "M");
    pr.p.channels = checkedInt32(d, "D");
    pr.p.numLevels = checkedInt32(l, "L");
    pr.p.numQueries = checkedInt32(lq, "Lq");
    pr.p.numPoints = checkedInt32(p, "P");
    pr.dtype = st == at::kFloat ? kZSD_MSDA_HOST_FLOAT32
        : mixed                 ? kZSD_MSDA_HOST_FLOAT16_FP32_COORDS
                                : kZSD_MSDA_HOST_FLOAT16;
    return pr;
}

void forwardCpu(at::Tensor const& value, at::Tensor const& spatialShapes, at::Tensor const& levelStartIndex,
    at::Tensor const& samplingLocations, at::Tensor const& attentionWeights, at::Tensor& out, Problem const& pr,
    int64_t numThreads)
{
    // The library's own std::thread runner (numThreads <= 0: hardware concurrency). at::parallel_for is not used:
    // with torch's OpenMP backend it would need this extension to be compiled with -fopenmp against torch's libgomp.
    int32_t const status = zsdMSDeformAttnForwardHost(value.data_ptr(), spatialShapes.data_ptr<int32_t>(),
        levelStartIndex.data_ptr<int32_t>(), samplingLocations.data_ptr(), attentionWeights.data_ptr(),
        out.data_ptr(), pr.p, pr.dtype, static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(numThreads, 0), 1024)));
    TORCH_CHECK(status == kZSD_MSDA_HOST_SUCCESS, "MSDeformAttn host kernel: ",
        zsdMSDeformAttnHostStatusString(status));
}

#if defined(ZSD_WITH_CUDA)
void forwardCuda(at::Tensor const& value, at::Tensor const& spatialShapes, at::Tensor const& levelStartIndex,
    at::Tensor const& samplingLocations, at::Tensor const& attentionWeights, at::Tensor& out, Problem const& pr)
{
    c10::cuda::CUDAGuard guard(value.device());
    int const status = zsdMSDeformAttnForward(value.data_ptr(), spatialShapes.data_ptr<int32_t>(),
        levelStartIndex.data_ptr<int32_t>(), samplingLocations.data_ptr(), attentionWeights.data_ptr(),
        out.data_ptr(), pr.p.batch, pr.p.spatialSize, pr.p.numHeads, pr.p.channels, pr.p.numLevels,
        pr.p.numQueries, pr.p.numPoints,
        pr.dtype == kZSD_MSDA_HOST_FLOAT32 ? kZSD_MSDA_FLOAT32
            : pr.dtype == kZSD_MSDA_HOST_FLOAT16 ? kZSD_MSDA_FLOAT16
                                                 : kZSD_MSDA_FLOAT16_FP32_COORDS,
        c10::cuda::getCurrentCUDAStream(value.device().index()).stream());
    TORCH_CHECK(status == 0, "MSDeformAttn CUDA kernel launch failed: ",
        cudaGetErrorString(static_cast<cudaError_t>(status)));
}
#endif

bool cudaCompiledImpl()
{
#if defined(ZSD_WITH_CUDA)
    return true;
#else
    return false;
#endif
}

//! Write the result into `out` ([N, Lq, M*D], value's dtype and device, contiguous; any storage alignment).
void forwardInto(at::Tensor const& value, at::Tensor const& spatialShapes, at::Tensor const& levelStartIndex,
    at::Tensor const& samplingLocations, at::Tensor const& attentionWeights, at::Tensor out, int64_t numThreads)
{
    Problem const pr = checkInputs(value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights);
    for (at::Tensor const* t : std::initializer_list<at::Tensor const*>{
             &spatialShapes, &levelStartIndex, &samplingLocations, &attentionWeights, &out})
    {
        TORCH_CHECK(t->device() == value.device(), "MSDeformAttn: all tensors must be on ", value.device(), ", got ",
            t->device());
    }
    std::vector<int64_t> const outShape{pr.p.batch, pr.p.numQueries, static_cast<int64_t>(pr.p.numHeads) * pr.p.channels};
    TORCH_CHECK(out.sizes() == at::IntArrayRef(outShape) && out.scalar_type() == value.scalar_type()
            && out.is_contiguous(),
        "MSDeformAttn: out must be a contiguous ", value.scalar_type(), " tensor of shape ", at::IntArrayRef(outShape),
        ", got ", out.scalar_type(), " ", out.sizes());
    if (value.device().is_cpu())
    {
        forwardCpu(value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights, out, pr, numThreads);
        return;
    }
#if defined(ZSD_WITH_CUDA)
    if (value.device().is_cuda())
    {
        forwardCuda(value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights, out, pr);
        return;
    }
#endif
    TORCH_CHECK(false, "MSDeformAttn: no kernel for device ", value.device(),
        " in this build (CUDA support compiled in: ", cudaCompiledImpl(), ")");
}

at::Tensor forward(at::Tensor const& value, at::Tensor const& spatialShapes, at::Tensor const& levelStartIndex,
    at::Tensor const& samplingLocations, at::Tensor const& attentionWeights, int64_t numThreads)
{
    TORCH_CHECK(value.dim() == 4 && samplingLocations.dim() == 6, "MSDeformAttn: value must be [N, S, M, D] and "
        "sampling_locations [N, Lq, M, L, P, 2], got ", value.sizes(), " and ", samplingLocations.sizes());
    at::Tensor out = at::empty(
        {value.size(0), samplingLocations.size(1), value.size(2) * value.size(3)}, value.options());
    forwardInto(value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights, out, numThreads);
    return out;
}

int64_t cudaVectorWidth(at::Tensor const& value, at::Tensor const& output)
{
#if defined(ZSD_WITH_CUDA)
    TORCH_CHECK(value.dim() == 4, "value must be [N, S, M, D]");
    int32_t const dtype = value.scalar_type() == at::kFloat ? kZSD_MSDA_FLOAT32
        : value.scalar_type() == at::kHalf                  ? kZSD_MSDA_FLOAT16
                                                            : -1;
    return zsdMSDeformAttnVectorWidth(value.data_ptr(), output.data_ptr(), static_cast<int32_t>(value.size(3)), dtype);
#else
    (void) value;
    (void) output;
    TORCH_CHECK(false, "CUDA support not compiled in");
#endif
}

at::Tensor floatToHalfBits(at::Tensor const& x)
{
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu(), "expects a CPU float32 tensor");
    at::Tensor src = x.contiguous();
    at::Tensor out = at::empty(src.sizes(), src.options().dtype(at::kShort));
    float const* in = src.data_ptr<float>();
    auto* o = reinterpret_cast<uint16_t*>(out.data_ptr<int16_t>());
    for (int64_t i = 0; i < src.numel(); ++i)
    {
        o[i] = zsdFloatToHalfBits(in[i]);
    }
    return out;
}

at::Tensor halfBitsToFloat(at::Tensor const& x)
{
    TORCH_CHECK(x.scalar_type() == at::kShort && x.device().is_cpu(), "expects a CPU int16 tensor");
    at::Tensor src = x.contiguous();
    at::Tensor out = at::empty(src.sizes(), src.options().dtype(at::kFloat));
    auto const* in = reinterpret_cast<uint16_t const*>(src.data_ptr<int16_t>());
    float* o = out.data_ptr<float>();
    for (int64_t i = 0; i < src.numel(); ++i)
    {
        o[i] = zsdHalfBitsToFloat(in[i]);
    }
    return out;
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.doc() = "zsdeploy MSDeformAttn kernels (host build of the CUDA kernel core; CUDA kernel when compiled in)";
    m.def("forward", &forward, "MSDeformAttn forward -> [N, Lq, M*D]", py::arg("value"), py::arg("spatial_shapes"),
        py::arg("level_start_index"), py::arg("sampling_locations"), py::arg("attention_weights"),
        py::arg("num_threads") = 0);
    m.def("forward_out", &forwardInto, "MSDeformAttn forward into a preallocated [N, Lq, M*D] tensor",
        py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"), py::arg("out"), py::arg("num_threads") = 0);
    m.def("cuda_compiled", &cudaCompiledImpl, "whether the CUDA kernel is compiled into this extension");
    m.def("cuda_vector_width", &cudaVectorWidth, "channels per thread the CUDA launcher picks for (value, output)");
    m.def("host_vector_width", &zsdMSDeformAttnHostVectorWidth, "channels per group the CPU kernel uses for D");
    m.def("float_to_half_bits", &floatToHalfBits, "the host kernel's fp32 -> fp16 rounding (int16 bit patterns)");
    m.def("half_bits_to_float", &halfBitsToFloat, "the host kernel's fp16 -> fp32 decoding (from int16 bits)");
}
