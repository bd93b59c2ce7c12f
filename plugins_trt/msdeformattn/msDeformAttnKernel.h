/*
 * zsdeploy — MSDeformAttn CUDA launcher (host-callable).
 * SPDX-License-Identifier: Apache-2.0
 */
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

//! Element types of (value, output) and (sampling_locations, attention_weights).
enum ZsdMSDADataType : int32_t
{
    kZSD_MSDA_FLOAT32 = 0,            //!< all four fp32
    kZSD_MSDA_FLOAT16 = 1,            //!< all four fp16
    kZSD_MSDA_FLOAT16_FP32_COORDS = 2 //!< value and output fp16; sampling_locations and attention_weights fp32
};

//! Largest number of levels the CUDA kernel accepts (level descriptors live in shared memory).
constexpr int32_t kZSD_MSDA_MAX_LEVELS = 1024;

//! Launch the MSDeformAttn forward kernel on `stream` (asynchronous; nothing is synchronised).
//!
//! All pointers are device pointers in the layouts of msDeformAttnKernel.cuh; value, samplingLocations,
//! attentionWeights and output have the element types given by `dtype` (ZsdMSDADataType); spatialShapes [L,2] and
//! levelStartIndex [L] are int32. The level table is read from device memory inside the kernel, so N, Lq and the level shapes may change
//! between launches without any host-side state. A level whose (H, W, start) does not fit into spatialSize is treated
//! as empty (its samples contribute 0) instead of being read out of bounds.
//!
//! Channel vectorisation is chosen from D and pointer alignment: fp32 float4 / float2 / scalar, fp16 8 x half
//! (16-byte) / 4 x half / half2 / scalar.
//!
//! \return cudaSuccess (0), cudaErrorInvalidValue for invalid arguments, or the launch error.
int zsdMSDeformAttnForward(void const* value, int32_t const* spatialShapes, int32_t const* levelStartIndex,
    void const* samplingLocations, void const* attentionWeights, void* output, int32_t batch, int32_t spatialSize,
    int32_t numHeads, int32_t channels, int32_t numLevels, int32_t numQueries, int32_t numPoints, int32_t dtype,
    cudaStream_t stream);

//! The channel vector width (channels per thread) the launcher would use for these arguments; 0 if invalid.
//! Exposed for tests and benchmarks.
int32_t zsdMSDeformAttnVectorWidth(
    void const* value, void const* output, int32_t channels, int32_t dtype);
