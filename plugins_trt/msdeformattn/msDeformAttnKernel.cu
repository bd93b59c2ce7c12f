/*
 * zsdeploy — MSDeformAttn forward CUDA kernels (fp32 and fp16 I/O, fp32 math).
 * SPDX-License-Identifier: Apache-2.0
 *
 * Work decomposition: one thread per (n, q, m, channel group). A channel group is VEC consecutive channels of one
 * head, loaded with one vector instruction per bilinear tap (fp32: float4 / float2 / float; fp16: 16-byte = 8 halves,
 * 8-byte = 4 halves, half2, half). Consecutive threads own consecutive channel groups, so the D channels of one head
 * (one tap) are read by D / VEC neighbouring threads as one contiguous segment and the output row is written with
 * coalesced vector stores. The threads of one head read the same sampling location / attention weight (served as a
 * broadcast). The level table (H, W, start) is copied once per block from device memory into shared memory and
 * validated against S there. Accumulation is in fp32 registers; fp16 outputs are rounded once (round-to-nearest-even).
 * The arithmetic itself lives in msDeformAttnKernel.cuh and is shared with the CPU build.
 */
#include "msDeformAttnKernel.cuh"
#include "msDeformAttnKernel.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>
#include <string.h>

namespace zsd
{
namespace msda
{
namespace
{

constexpr int32_t kBlockSize = 256;

// The IO policies are __host__ __device__ so that the host pass of nvcc sees callable functions when it compiles the
// (host+device) core templates; only the device versions are ever executed.

template <typename T>
ZSD_HD ZSD_INLINE T readOnlyLoad(T const* p)
{
#if defined(__CUDA_ARCH__)
    return __ldg(p);
#else
    return *p;
#endif
}

struct DeviceFloatIO
{
    using Elem = float;

    static ZSD_HD ZSD_INLINE float loadScalar(float const* p)
    {
        return readOnlyLoad(p);
    }

    template <int VEC>
    static ZSD_HD ZSD_INLINE void load(float const* p, float* v)
    {
        if constexpr (VEC == 4)
        {
            float4 const t = readOnlyLoad(reinterpret_cast<float4 const*>(p));
            v[0] = t.x;
            v[1] = t.y;
            v[2] = t.z;
            v[3] = t.w;
        }
        else if constexpr (VEC == 2)
        {
            float2 const t = readOnlyLoad(reinterpret_cast<float2 const*>(p));
            v[0] = t.x;
            v[1] = t.y;
        }
        else
        {
            static_assert(VEC == 1, "fp32 vector width must be 1, 2 or 4");
            v[0] = readOnlyLoad(p);
        }
    }

    template <int VEC>
    static ZSD_HD ZSD_INLINE void store(float* p, float const* v)
    {
        if constexpr (VEC == 4)
        {
            *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
        }
        else if constexpr (VEC == 2)
        {
            *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
        }
        else
        {
            static_assert(VEC == 1, "fp32 vector width must be 1, 2 or 4");
            p[0] = v[0];
        }
    }
};

struct DeviceHalfIO
{
    using Elem = __half;

    static ZSD_HD ZSD_INLINE float loadScalar(__half const* p)
    {
        return __half2float(readOnlyLoad(p));
    }

    //! Unpack NPAIRS half2 words (raw bits) into 2 * NPAIRS floats.
    template <int NPAIRS, typename Raw>
    static ZSD_HD ZSD_INLINE void unpack(Raw const& raw, float* v)
    {
        static_assert(sizeof(Raw) == NPAIRS * sizeof(__half2), "raw size mismatch");
        __half2 h[NPAIRS];
        memcpy(h, &raw, sizeof(Raw));
        ZSD_UNROLL
        for (int i = 0; i < NPAIRS; ++i)
        {
            float2 const f = __half22float2(h[i]);
            v[2 * i] = f.x;
            v[2 * i + 1] = f.y;
        }
    }

    template <int NPAIRS, typename Raw>
    static ZSD_HD ZSD_INLINE Raw pack(float const* v)
    {
        static_assert(sizeof(Raw) == NPAIRS * sizeof(__half2), "raw size mismatch");
        __half2 h[NPAIRS];
        ZSD_UNROLL
        for (int i = 0; i < NPAIRS; ++i)
        {
            h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
        }
        Raw raw;
        memcpy(&raw, h, sizeof(Raw));
        return raw;
    }

    template <int VEC>
    static ZSD_HD ZSD_INLINE void load(__half const* p, float* v)
    {
        if constexpr (VEC == 8)
        {
            unpack<4>(readOnlyLoad(reinterpret_cast<uint4 const*>(p)), v);
        }
        else if constexpr (VEC == 4)
        {
            unpack<2>(readOnlyLoad(reinterpret_cast<uint2 const*>(p)), v);
        }
        else if constexpr (VEC == 2)
        {
            unpack<1>(readOnlyLoad(reinterpret_cast<unsigned int const*>(p)), v);
        }
        else
        {
            static_assert(VEC == 1, "fp16 vector width must be 1, 2, 4 or 8");
            v[0] = __half2float(readOnlyLoad(p));
        }
    }

    template <int VEC>
    static ZSD_HD ZSD_INLINE void store(__half* p, float const* v)
    {
        if constexpr (VEC == 8)
        {
            *reinterpret_cast<uint4*>(p) = pack<4, uint4>(v);
        }
        else if constexpr (VEC == 4)
        {
            *reinterpret_cast<uint2*>(p) = pack<2, uint2>(v);
        }
        else if constexpr (VEC == 2)
        {
            *reinterpret_cast<unsigned int*>(p) = pack<1, unsigned int>(v);
        }
        else
        {
            static_assert(VEC == 1, "fp16 vector width must be 1, 2, 4 or 8");
            p[0] = __float2half_rn(v[0]);
        }
    }
};

template <typename IO, typename LocIO, int VEC>
__global__ void __launch_bounds__(kBlockSize) msDeformAttnForwardKernel(typename IO::Elem const* __restrict__ value,
    int32_t const* __restrict__ spatialShapes, int32_t const* __restrict__ levelStartIndex,
    typename LocIO::Elem const* __restrict__ samplingLocations,
    typename LocIO::Elem const* __restrict__ attentionWeights,
    typename IO::Elem* __restrict__ output, int32_t batch, int32_t spatialSize, int32_t numHeads, int32_t channels,
    int32_t numLevels, int32_t numQueries, int32_t numPoints)
{
    extern __shared__ LevelDesc sLevels[];
    for (int32_t l = static_cast<int32_t>(threadIdx.x); l < numLevels; l += static_cast<int32_t>(blockDim.x))
    {
        sLevels[l] = makeLevel(__ldg(spatialShapes + 2 * l), __ldg(spatialShapes + 2 * l + 1),
            __ldg(levelStartIndex + l), spatialSize);
    }
    __syncthreads();

    int32_t const groupsPerHead = channels / VEC;
    int64_t const spatialStride = static_cast<int64_t>(numHeads) * channels;
    int64_t const batchStride = static_cast<int64_t>(spatialSize) * spatialStride;
    int64_t const samplesPerHead = static_cast<int64_t>(numLevels) * numPoints;
    int64_t const numWork = static_cast<int64_t>(batch) * numQueries * numHeads * groupsPerHead;
    int64_t const gridStride = static_cast<int64_t>(gridDim.x) * blockDim.x;

    for (int64_t work = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; work < numWork;
         work += gridStride)
    {
        int32_t const group = static_cast<int32_t>(work % groupsPerHead);
        int64_t const head = work / groupsPerHead; // ((n * Lq) + q) * M + m
        int32_t const m = static_cast<int32_t>(head % numHeads);
        int64_t const n = head / numHeads / numQueries;

        typename IO::Elem const* valueHead
            = value + n * batchStride + static_cast<int64_t>(m) * channels + static_cast<int64_t>(group) * VEC;

        float acc[VEC];
        ZSD_UNROLL
        for (int c = 0; c < VEC; ++c)
        {
            acc[c] = 0.0f;
        }
        sampleHead<VEC, IO, LocIO>(valueHead, spatialStride, sLevels, numLevels, numPoints,
            samplingLocations + head * samplesPerHead * 2, attentionWeights + head * samplesPerHead, 1, acc);
        IO::template store<VEC>(output + head * channels + static_cast<int64_t>(group) * VEC, acc);
    }
}

bool isAligned(void const* p, size_t bytes)
{
    return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

template <typename IO, typename LocIO, int VEC>
cudaError_t launch(void const* value, int32_t const* spatialShapes, int32_t const* levelStartIndex,
    void const* samplingLocations, void const* attentionWeights, void* output, int32_t batch, int32_t spatialSize,
    int32_t numHeads, int32_t channels, int32_t numLevels, int32_t numQueries, int32_t numPoints, cudaStream_t stream)
{
    using Elem = typename IO::Elem;
    using LocElem = typename LocIO::Elem;
    int64_t const numWork = static_cast<int64_t>(batch) * numQueries * numHeads * (channels / VEC);
    int64_t const maxBlocks = 0x7fffffff;
    int64_t blocks = (numWork + kBlockSize - 1) / kBlockSize;
    blocks = blocks < maxBlocks ? blocks : maxBlocks;
    size_t const sharedBytes = static_cast<size_t>(numLevels) * sizeof(LevelDesc);
    msDeformAttnForwardKernel<IO, LocIO, VEC><<<static_cast<unsigned int>(blocks), kBlockSize, sharedBytes, stream>>>(
        static_cast<Elem const*>(value), spatialShapes, levelStartIndex, static_cast<LocElem const*>(samplingLocations),
        static_cast<LocElem const*>(attentionWeights), static_cast<Elem*>(output), batch, spatialSize, numHeads,
        channels, numLevels, numQueries, numPoints);
    return cudaGetLastError();
}

} // namespace
} // namespace msda
} // namespace zsd

int32_t zsdMSDeformAttnVectorWidth(void const* value, void const* output, int32_t channels, int32_t dtype)
{
    using zsd::msda::isAligned;
    if (channels <= 0)
    {
        return 0;
    }
    // value/output element size (the vector loads and stores are on value and output only)
    size_t const elemBytes = dtype == kZSD_MSDA_FLOAT32
        ? 4
        : ((dtype == kZSD_MSDA_FLOAT16 || dtype == kZSD_MSDA_FLOAT16_FP32_COORDS) ? 2 : 0);
    if (elemBytes == 0)
    {
        return 0;
    }
    int32_t const maxVec = dtype == kZSD_MSDA_FLOAT32 ? 4 : 8;
    for (int32_t vec = maxVec; vec > 1; vec /= 2)
    {
        size_t const bytes = elemBytes * static_cast<size_t>(vec);
        if (channels % vec == 0 && isAligned(value, bytes) && isAligned(output, bytes))
        {
            return vec;
        }
    }
    return 1;
}

int zsdMSDeformAttnForward(void const* value, int32_t const* spatialShapes, int32_t const* levelStartIndex,
    void const* samplingLocations, void const* attentionWeights, void* output, int32_t batch, int32_t spatialSize,
    int32_t numHeads, int32_t channels, int32_t numLevels, int32_t numQueries, int32_t numPoints, int32_t dtype,
    cudaStream_t stream)
{
    using namespace zsd::msda;
    if (batch < 0 || numQueries < 0 || spatialSize < 0 || numHeads <= 0 || channels <= 0 || numLevels <= 0
        || numLevels > kZSD_MSDA_MAX_LEVELS || numPoints <= 0
        || static_cast<int64_t>(numLevels) * numPoints > (int64_t{1} << 29))
    {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    if (dtype != kZSD_MSDA_FLOAT32 && dtype != kZSD_MSDA_FLOAT16 && dtype != kZSD_MSDA_FLOAT16_FP32_COORDS)
    {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    if (batch == 0 || numQueries == 0)
    {
        return static_cast<int>(cudaSuccess); // empty output, nothing to launch
    }
    if (value == nullptr || spatialShapes == nullptr || levelStartIndex == nullptr || samplingLocations == nullptr
        || attentionWeights == nullptr || output == nullptr)
    {
        return static_cast<int>(cudaErrorInvalidValue);
    }

    int32_t const vec = zsdMSDeformAttnVectorWidth(value, output, channels, dtype);
#define ZSD_MSDA_LAUNCH(IO_, LOCIO_, VEC_)                                                                            \
    launch<IO_, LOCIO_, VEC_>(value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights, output, batch,      \
        spatialSize, numHeads, channels, numLevels, numQueries, numPoints, stream)

    cudaError_t status = cudaErrorInvalidValue;
    if (dtype == kZSD_MSDA_FLOAT32)
    {
        switch (vec)
        {
        case 4: status = ZSD_MSDA_LAUNCH(DeviceFloatIO, DeviceFloatIO, 4); break;
        case 2: status = ZSD_MSDA_LAUNCH(DeviceFloatIO, DeviceFloatIO, 2); break;
        default: status = ZSD_MSDA_LAUNCH(DeviceFloatIO, DeviceFloatIO, 1); break;
        }
    }
    else if (dtype == kZSD_MSDA_FLOAT16)
    {
        switch (vec)
        {
        case 8: status = ZSD_MSDA_LAUNCH(DeviceHalfIO, DeviceHalfIO, 8); break;
        case 4: status = ZSD_MSDA_LAUNCH(DeviceHalfIO, DeviceHalfIO, 4); break;
        case 2: status = ZSD_MSDA_LAUNCH(DeviceHalfIO, DeviceHalfIO, 2); break;
        default: status = ZSD_MSDA_LAUNCH(DeviceHalfIO, DeviceHalfIO, 1); break;
        }
    }
    else // fp16 value/output, fp32 sampling locations and attention weights
    {
        switch (vec)
        {
        case 8: status = ZSD_MSDA_LAUNCH(DeviceHalfIO, DeviceFloatIO, 8); break;
        case 4: status = ZSD_MSDA_LAUNCH(DeviceHalfIO, DeviceFloatIO, 4); break;
        case 2: status = ZSD_MSDA_LAUNCH(DeviceHalfIO, DeviceFloatIO, 2); break;
        default: status = ZSD_MSDA_LAUNCH(DeviceHalfIO, DeviceFloatIO, 1); break;
        }
    }
#undef ZSD_MSDA_LAUNCH
    return static_cast<int>(status);
}
