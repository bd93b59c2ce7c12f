/*
 * zsdeploy — MSDeformAttn CPU kernel (g++), instantiating the shared core of msDeformAttnKernel.cuh.
 * SPDX-License-Identifier: Apache-2.0
 */
#include "msDeformAttnHost.h"
#include "msDeformAttnKernel.cuh"

#include <algorithm>
#include <cstring>
#include <exception>
#include <system_error>
#include <thread>
#include <vector>

namespace zsd
{
namespace msda
{
namespace
{

struct HostFloatIO
{
    using Elem = float;

    static inline float loadScalar(float const* p)
    {
        return *p;
    }

    template <int VEC>
    static inline void load(float const* p, float* v)
    {
        for (int c = 0; c < VEC; ++c)
        {
            v[c] = p[c];
        }
    }

    template <int VEC>
    static inline void store(float* p, float const* v)
    {
        for (int c = 0; c < VEC; ++c)
        {
            p[c] = v[c];
        }
    }
};

struct HostHalfIO
{
    using Elem = uint16_t;

    static inline float loadScalar(uint16_t const* p)
    {
        return zsdHalfBitsToFloat(*p);
    }

    template <int VEC>
    static inline void load(uint16_t const* p, float* v)
    {
        for (int c = 0; c < VEC; ++c)
        {
            v[c] = zsdHalfBitsToFloat(p[c]);
        }
    }

    template <int VEC>
    static inline void store(uint16_t* p, float const* v)
    {
        for (int c = 0; c < VEC; ++c)
        {
            p[c] = zsdFloatToHalfBits(v[c]);
        }
    }
};

struct HostArgs
{
    void const* value;
    void const* samplingLocations;
    void const* attentionWeights;
    void* output;
    LevelDesc const* levels;
    ZsdMSDAProblem problem;
};

template <int VEC, typename IO, typename LocIO>
void runRowsTyped(HostArgs const& a, int64_t rowBegin, int64_t rowEnd)
{
    using Elem = typename IO::Elem;
    using LocElem = typename LocIO::Elem;
    ZsdMSDAProblem const& p = a.problem;
    auto const* value = static_cast<Elem const*>(a.value);
    auto const* loc = static_cast<LocElem const*>(a.samplingLocations);
    auto const* attn = static_cast<LocElem const*>(a.attentionWeights);
    auto* out = static_cast<Elem*>(a.output);

    int64_t const spatialStride = static_cast<int64_t>(p.numHeads) * p.channels;
    int64_t const batchStride = static_cast<int64_t>(p.spatialSize) * spatialStride;
    int64_t const samplesPerHead = static_cast<int64_t>(p.numLevels) * p.numPoints;
    int32_t const numGroups = p.channels / VEC;

    std::vector<float> acc(static_cast<size_t>(p.channels));
    for (int64_t row = rowBegin; row < rowEnd; ++row)
    {
        int64_t const n = row / p.numQueries;
        for (int32_t m = 0; m < p.numHeads; ++m)
        {
            int64_t const head = row * p.numHeads + m;
            std::fill(acc.begin(), acc.end(), 0.0f);
            sampleHead<VEC, IO, LocIO>(value + n * batchStride + static_cast<int64_t>(m) * p.channels, spatialStride,
                a.levels, p.numLevels, p.numPoints, loc + head * samplesPerHead * 2, attn + head * samplesPerHead,
                numGroups, acc.data());
            Elem* outHead = out + head * p.channels;
            for (int32_t g = 0; g < numGroups; ++g)
            {
                IO::template store<VEC>(outHead + g * VEC, acc.data() + g * VEC);
            }
        }
    }
}

template <typename IO, typename LocIO>
void runRowsDispatch(HostArgs const& a, int64_t rowBegin, int64_t rowEnd)
{
    switch (zsdMSDeformAttnHostVectorWidth(a.problem.channels))
    {
    case 32: runRowsTyped<32, IO, LocIO>(a, rowBegin, rowEnd); break;
    case 16: runRowsTyped<16, IO, LocIO>(a, rowBegin, rowEnd); break;
    case 8: runRowsTyped<8, IO, LocIO>(a, rowBegin, rowEnd); break;
    case 4: runRowsTyped<4, IO, LocIO>(a, rowBegin, rowEnd); break;
    case 2: runRowsTyped<2, IO, LocIO>(a, rowBegin, rowEnd); break;
    default: runRowsTyped<1, IO, LocIO>(a, rowBegin, rowEnd); break;
    }
}

void runRows(HostArgs const& a, int32_t dtype, int64_t rowBegin, int64_t rowEnd)
{
    if (dtype == kZSD_MSDA_HOST_FLOAT32)
    {
        runRowsDispatch<HostFloatIO, HostFloatIO>(a, rowBegin, rowEnd);
    }
    else if (dtype == kZSD_MSDA_HOST_FLOAT16)
    {
        runRowsDispatch<HostHalfIO, HostHalfIO>(a, rowBegin, rowEnd);
    }
    else
    {
        runRowsDispatch<HostHalfIO, HostFloatIO>(a, rowBegin, rowEnd);
    }
}

//! Validate the arguments and build the level table. Returns a ZsdMSDAHostStatus.
int32_t prepare(void const* value, int32_t const* spatialShapes, int32_t const* levelStartIndex,
    void const* samplingLocations, void const* attentionWeights, void* output, ZsdMSDAProblem const& problem,
    int32_t dtype, std::vector<LevelDesc>& levels)
{
    ZsdMSDAProblem const& p = problem;
    if (p.batch < 0 || p.numQueries < 0 || p.spatialSize <= 0 || p.numHeads <= 0 || p.channels <= 0
        || p.numLevels <= 0 || p.numPoints <= 0 || static_cast<int64_t>(p.numLevels) * p.numPoints > (int64_t{1} << 29))
    {
        return kZSD_MSDA_HOST_INVALID_ARGUMENT;
    }
    if (dtype != kZSD_MSDA_HOST_FLOAT32 && dtype != kZSD_MSDA_HOST_FLOAT16
        && dtype != kZSD_MSDA_HOST_FLOAT16_FP32_COORDS)
    {
        return kZSD_MSDA_HOST_INVALID_ARGUMENT;
    }
    if (value == nullptr || spatialShapes == nullptr || levelStartIndex == nullptr || samplingLocations == nullptr
        || attentionWeights == nullptr || output == nullptr)
    {
        return kZSD_MSDA_HOST_INVALID_ARGUMENT;
    }
    levels.resize(static_cast<size_t>(p.numLevels));
    for (int32_t l = 0; l < p.numLevels; ++l)
    {
        int32_t const h = spatialShapes[2 * l];
        int32_t const w = spatialShapes[2 * l + 1];
        int32_t const start = levelStartIndex[l];
        if (!levelIsValid(h, w, start, p.spatialSize))
        {
            return kZSD_MSDA_HOST_INVALID_LEVELS;
        }
        levels[static_cast<size_t>(l)] = makeLevel(h, w, start, p.spatialSize);
    }
    return kZSD_MSDA_HOST_SUCCESS;
}

} // namespace
} // namespace msda
} // namespace zsd

int32_t zsdMSDeformAttnHostVectorWidth(int32_t channels)
{
    if (channels <= 0)
    {
        return 0;
    }
    for (int32_t vec = 32; vec > 1; vec /= 2)
    {
        if (channels % vec == 0)
        {
            return vec;
        }
    }
    return 1;
}

int32_t zsdMSDeformAttnForwardHostRows(void const* value, int32_t const* spatialShapes,
    int32_t const* levelStartIndex, void const* samplingLocations, void const* attentionWeights, void* output,
    ZsdMSDAProblem const& problem, int32_t dtype, int64_t rowBegin, int64_t rowEnd)
{
    using namespace zsd::msda;
    std::vector<LevelDesc> levels;
    int32_t const status = prepare(value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights, output,
        problem, dtype, levels);
    if (status != kZSD_MSDA_HOST_SUCCESS)
    {
        return status;
    }
    int64_t const numRows = static_cast<int64_t>(problem.batch) * problem.numQueries;
    if (rowBegin < 0 || rowEnd < rowBegin || rowEnd > numRows)
    {
        return kZSD_MSDA_HOST_INVALID_ARGUMENT;
    }
    HostArgs const args{value, samplingLocations, attentionWeights, output, levels.data(), problem};
    runRows(args, dtype, rowBegin, rowEnd);
    return kZSD_MSDA_HOST_SUCCESS;
}

int32_t zsdMSDeformAttnForwardHost(void const* value, int32_t const* spatialShapes, int32_t const* levelStartIndex,
    void const* samplingLocations, void const* attentionWeights, void* output, ZsdMSDAProblem const& problem,
    int32_t dtype, int32_t numThreads)
{
    using namespace zsd::msda;
    std::vector<LevelDesc> levels;
    int32_t const status = prepare(value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights, output,
        problem, dtype, levels);
    if (status != kZSD_MSDA_HOST_SUCCESS)
    {
        return status;
    }
    int64_t const numRows = static_cast<int64_t>(problem.batch) * problem.numQueries;
    HostArgs const args{value, samplingLocations, attentionWeights, output, levels.data(), problem};

    int64_t threads = numThreads > 0 ? numThreads : static_cast<int64_t>(std::thread::hardware_concurrency());
    threads = std::max<int64_t>(1, std::min<int64_t>(threads, numRows));
    if (threads <= 1)
    {
        runRows(args, dtype, 0, numRows);
        return kZSD_MSDA_HOST_SUCCESS;
    }

    int64_t const chunk = (numRows + threads - 1) / threads;
    std::vector<std::thread> workers;
    int32_t result = kZSD_MSDA_HOST_SUCCESS;
    try
    {
        workers.reserve(static_cast<size_t>(threads - 1));
        for (int64_t t = 1; t < threads; ++t)
        {
            int64_t const begin = std::min(numRows, t * chunk);
            int64_t const end = std::min(numRows, begin + chunk);
            workers.emplace_back([&args, dtype, begin, end]() { runRows(args, dtype, begin, end); });
        }
    }
    catch (std::system_error const&)
    {
        result = kZSD_MSDA_HOST_THREAD_ERROR;
    }
    if (result == kZSD_MSDA_HOST_SUCCESS)
    {
        runRows(args, dtype, 0, std::min(numRows, chunk));
    }
    for (auto& w : workers)
    {
        w.join();
    }
    return result;
}

char const* zsdMSDeformAttnHostStatusString(int32_t status)
{
    switch (status)
    {
    case kZSD_MSDA_HOST_SUCCESS: return "success";
    case kZSD_MSDA_HOST_INVALID_ARGUMENT:
        return "invalid argument (null pointer, non-positive size, unknown dtype or bad row range)";
    case kZSD_MSDA_HOST_INVALID_LEVELS:
        return "invalid levels: a level's (H, W, level_start_index) does not fit into the value tensor's S";
    case kZSD_MSDA_HOST_THREAD_ERROR: return "could not start worker threads";
    default: return "unknown status";
    }
}

float zsdHalfBitsToFloat(uint16_t bits)
{
    uint32_t const sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
    uint32_t const exponent = (bits >> 10) & 0x1fu;
    uint32_t const mantissa = bits & 0x3ffu;
    uint32_t out;
    if (exponent == 0)
    {
        // zero or subnormal: mantissa * 2^-24, exact in fp32
        float const magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
        uint32_t magBits;
        std::memcpy(&magBits, &magnitude, sizeof(magBits));
        out = sign | magBits;
    }
    else if (exponent == 0x1f)
    {
        out = sign | 0x7f800000u | (mantissa << 13); // inf / NaN (payload kept)
    }
    else
    {
        out = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    float result;
    std::memcpy(&result, &out, sizeof(result));
    return result;
}

uint16_t zsdFloatToHalfBits(float value)
{
    uint32_t u;
    std::memcpy(&u, &value, sizeof(u));
    uint16_t const sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u)
    {
        // NaN: keep the top payload bits, force a quiet NaN
        return static_cast<uint16_t>(sign | 0x7e00u | ((u >> 13) & 0x3ffu));
    }
    if (u >= 0x477ff000u)
    {
        // >= 65520 (halfway between 65504 and 2^16, ties to even = up) or infinity
        return static_cast<uint16_t>(sign | 0x7c00u);
    }
    uint32_t const exponent = u >> 23;
    uint32_t const mantissa = u & 0x7fffffu;
    if (exponent < 113)
    {
        // result is a half subnormal (or zero / the smallest normal after rounding up)
        if (exponent < 102)
        {
            return sign; // |value| < 2^-25 rounds to zero
        }
        uint32_t const full = mantissa | 0x800000u;
        uint32_t const shift = 126u - exponent; // 14 .. 24
        uint32_t q = full >> shift;
        uint32_t const rem = full & ((1u << shift) - 1u);
        uint32_t const halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (q & 1u)))
        {
            ++q;
        }
        return static_cast<uint16_t>(sign | q);
    }
    uint32_t h = ((exponent - 112u) << 10) | (mantissa >> 13);
    uint32_t const rem = mantissa & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
    {
        ++h; // may carry into the exponent, which is the correct encoding
    }
    return static_cast<uint16_t>(sign | h);
}
