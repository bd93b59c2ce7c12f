/*
 * zsdeploy — MSDeformAttn kernel core.
 * SPDX-License-Identifier: Apache-2.0
 *
 * The per-sample arithmetic of multi-scale deformable attention, written once as host+device inline functions.
 * The CUDA kernel (msDeformAttnKernel.cu, nvcc) and the CPU kernel (msDeformAttnHost.cpp, g++) both instantiate
 * these templates, so the CPU unit tests exercise exactly the arithmetic the GPU runs. Only the memory access
 * policy ("IO": how a group of channels is loaded/stored and converted to float) differs between the two builds.
 *
 * Semantics (identical to torch.nn.functional.grid_sample(mode="bilinear", padding_mode="zeros",
 * align_corners=False) applied to grid = 2 * loc - 1):
 *     x = loc_x * W - 0.5,  y = loc_y * H - 0.5      (pixel centres at integer coordinates)
 *     4 taps (floor(y)+{0,1}, floor(x)+{0,1}); a tap outside [0,H)x[0,W) contributes exactly 0.
 * All coordinate math and all accumulation is fp32, also when the tensors are fp16.
 *
 * Layouts (row-major, no padding):
 *     value               [N, S, M, D]           S = sum_l H_l * W_l
 *     spatial_shapes      [L, 2] int32 (H, W)
 *     level_start_index   [L]    int32
 *     sampling_locations  [N, Lq, M, L, P, 2]    (x, y) normalised to [0, 1] (values outside are allowed)
 *     attention_weights   [N, Lq, M, L, P]
 *     output              [N, Lq, M * D]
 *
 * This header must stay includable by a plain C++17 compiler: no CUDA headers, no CUDA-only syntax outside the
 * ZSD_* macros.
 */
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define ZSD_HD __host__ __device__
#define ZSD_INLINE __forceinline__
#else
#define ZSD_HD
#define ZSD_INLINE inline
#endif

#if defined(__CUDA_ARCH__)
#define ZSD_UNROLL _Pragma("unroll")
#else
#define ZSD_UNROLL
#endif

namespace zsd
{
namespace msda
{

//! One feature level as the kernels see it. A level whose description is inconsistent with the value tensor is
//! stored as {0, 0, 0}; every sample on it then lies outside the map and contributes 0 (no out-of-bounds reads).
struct LevelDesc
{
    int32_t height;
    int32_t width;
    int32_t start;
};

//! Validate one level against the flattened spatial size S.
ZSD_HD ZSD_INLINE bool levelIsValid(int32_t height, int32_t width, int32_t start, int32_t spatialSize)
{
    return height > 0 && width > 0 && start >= 0
        && static_cast<int64_t>(start) + static_cast<int64_t>(height) * static_cast<int64_t>(width)
        <= static_cast<int64_t>(spatialSize);
}

ZSD_HD ZSD_INLINE LevelDesc makeLevel(int32_t height, int32_t width, int32_t start, int32_t spatialSize)
{
    LevelDesc lv;
    bool const ok = levelIsValid(height, width, start, spatialSize);
    lv.height = ok ? height : 0;
    lv.width = ok ? width : 0;
    lv.start = ok ? start : 0;
    return lv;
}

//! The four bilinear taps of one sample. index[k] is the spatial index y * W + x inside the level, or -1 when the
//! tap lies outside the map (zero padding). weight[k] is the bilinear weight (meaningful only where index >= 0).
//! Tap order: (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1).
struct BilinearTaps
{
    int32_t index[4];
    float weight[4];
};

//! Compute the taps of a sample at normalised location (locX, locY) on an H x W map.
//! Returns false when the whole 2x2 footprint lies outside the map (the sample contributes nothing). This test also
//! rejects NaN/Inf locations and keeps the float->int conversion below in range.
//!
//! Precision: x = locX * W - 0.5 is kept as the unevaluated sum x + xErr, where xErr is the exact rounding error of
//! the product (one fma). Plain fp32 would round x to ulp(x) / 2 (~4e-6 px at x ~ 100, i.e. up to ~1e-5 relative
//! error in the output on PADing's 100x152 level); with the correction the bilinear weights carry full fp32
//! precision. For fp16 inputs the product is exact and xErr is 0.
ZSD_HD ZSD_INLINE bool computeBilinearTaps(float locX, float locY, int32_t height, int32_t width, BilinearTaps& taps)
{
    float const w = static_cast<float>(width);
    float const h = static_cast<float>(height);
    float const px = locX * w;
    float const py = locY * h;
    float const xErr = fmaf(locX, w, -px); // px + xErr == locX * W exactly
    float const yErr = fmaf(locY, h, -py);
    float const x = px - 0.5f;
    float const y = py - 0.5f;
    if (!(x > -1.0f && y > -1.0f && x < w && y < h))
    {
        return false;
    }
    float const xf = floorf(x);
    float const yf = floorf(y);
    int32_t const x0 = static_cast<int32_t>(xf);
    int32_t const y0 = static_cast<int32_t>(yf);
    // Same weight formulation as grid_sample (east x - x0, west (x0 + 1) - x), plus the product's rounding error.
    float const wEast = (x - xf) + xErr;
    float const wWest = ((xf + 1.0f) - x) - xErr;
    float const wSouth = (y - yf) + yErr;
    float const wNorth = ((yf + 1.0f) - y) - yErr;

    bool const x0In = x0 >= 0;
    bool const x1In = x0 + 1 < width;
    bool const y0In = y0 >= 0;
    bool const y1In = y0 + 1 < height;
    int32_t const row0 = y0 * width;
    int32_t const row1 = row0 + width;

    taps.index[0] = (y0In && x0In) ? row0 + x0 : -1;
    taps.index[1] = (y0In && x1In) ? row0 + x0 + 1 : -1;
    taps.index[2] = (y1In && x0In) ? row1 + x0 : -1;
    taps.index[3] = (y1In && x1In) ? row1 + x0 + 1 : -1;
    taps.weight[0] = wNorth * wWest;
    taps.weight[1] = wNorth * wEast;
    taps.weight[2] = wSouth * wWest;
    taps.weight[3] = wSouth * wEast;
    return true;
}

//! acc[0..VEC) += attn * sum_k weight_k * value[tap_k][0..VEC).
//! levelBase points at channel 0 of this channel group at spatial index 0 of the level; spatialStride = M * D.
template <int VEC, typename IO>
ZSD_HD ZSD_INLINE void accumulateTaps(typename IO::Elem const* levelBase, int64_t spatialStride,
    BilinearTaps const& taps, float attn, float* acc)
{
    float s[VEC];
    ZSD_UNROLL
    for (int c = 0; c < VEC; ++c)
    {
        s[c] = 0.0f;
    }
    ZSD_UNROLL
    for (int k = 0; k < 4; ++k)
    {
        if (taps.index[k] >= 0)
        {
            float v[VEC];
            IO::template load<VEC>(levelBase + static_cast<int64_t>(taps.index[k]) * spatialStride, v);
            float const w = taps.weight[k];
            ZSD_UNROLL
            for (int c = 0; c < VEC; ++c)
            {
                s[c] += w * v[c];
            }
        }
    }
    ZSD_UNROLL
    for (int c = 0; c < VEC; ++c)
    {
        acc[c] += attn * s[c];
    }
}

//! Accumulate one attention head of one query over all levels and points, for numGroups consecutive channel
//! groups of VEC channels each (the CUDA kernel: one group per thread; the CPU kernel: all D / VEC groups).
//!   valueHead : &value[n][0][m][c0]
//!   locHead   : &sampling_locations[n][q][m][0][0][0]
//!   attnHead  : &attention_weights[n][q][m][0][0]
//!   acc       : numGroups * VEC floats, zero-initialised by the caller
//! IO reads value; LocIO reads sampling locations and attention weights. They differ in the mixed mode of
//! reduced-precision graphs: fp16 value with fp32 locations and weights (an fp16 location at x ~ 150 px is only
//! good to ~0.06 px, so strongly typed fp16 graphs keep that math in fp32).
template <int VEC, typename IO, typename LocIO = IO>
ZSD_HD ZSD_INLINE void sampleHead(typename IO::Elem const* valueHead, int64_t spatialStride, LevelDesc const* levels,
    int32_t numLevels, int32_t numPoints, typename LocIO::Elem const* locHead, typename LocIO::Elem const* attnHead,
    int32_t numGroups, float* acc)
{
    for (int32_t l = 0; l < numLevels; ++l)
    {
        LevelDesc const lv = levels[l];
        typename IO::Elem const* levelBase = valueHead + static_cast<int64_t>(lv.start) * spatialStride;
        for (int32_t p = 0; p < numPoints; ++p)
        {
            int32_t const sample = l * numPoints + p;
            float const locX = LocIO::loadScalar(locHead + 2 * sample);
            float const locY = LocIO::loadScalar(locHead + 2 * sample + 1);
            float const attn = LocIO::loadScalar(attnHead + sample);
            BilinearTaps taps;
            if (!computeBilinearTaps(locX, locY, lv.height, lv.width, taps))
            {
                continue;
            }
            for (int32_t g = 0; g < numGroups; ++g)
            {
                accumulateTaps<VEC, IO>(levelBase + g * VEC, spatialStride, taps, attn, acc + g * VEC);
            }
        }
    }
}

} // namespace msda
} // namespace zsd
