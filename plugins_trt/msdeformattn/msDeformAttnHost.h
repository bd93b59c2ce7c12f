/*
 * zsdeploy — MSDeformAttn CPU kernel built from the same core as the CUDA kernel (msDeformAttnKernel.cuh).
 * SPDX-License-Identifier: Apache-2.0
 *
 * Plain C++17, no CUDA, no TensorRT, no torch. Used by the unit tests (through the torch binding) to check the GPU
 * arithmetic on machines without a GPU, and usable as a slow CPU fallback.
 */
#pragma once

#include <stdint.h>

//! Status codes of the host kernel.
enum ZsdMSDAHostStatus : int32_t
{
    kZSD_MSDA_HOST_SUCCESS = 0,
    kZSD_MSDA_HOST_INVALID_ARGUMENT = 1, //!< null pointer, non-positive size, unknown dtype, bad row range
    kZSD_MSDA_HOST_INVALID_LEVELS = 2,   //!< a level (H, W, start) does not fit into S
    kZSD_MSDA_HOST_THREAD_ERROR = 3      //!< a worker thread could not be started
};

//! Element type flags (same values as ZsdMSDADataType in msDeformAttnKernel.h).
//!   kZSD_MSDA_HOST_FLOAT32: value / locations / weights / output are float.
//!   kZSD_MSDA_HOST_FLOAT16: they are IEEE binary16 bit patterns (uint16_t); math is fp32, the output is rounded
//!                           to fp16 once (round-to-nearest-even) — an emulation of the CUDA fp16 path.
//!   kZSD_MSDA_HOST_FLOAT16_FP32_COORDS: value and output are fp16 bit patterns, sampling locations and attention
//!                           weights are float (the mixed mode of strongly typed fp16 graphs).
enum ZsdMSDAHostDataType : int32_t
{
    kZSD_MSDA_HOST_FLOAT32 = 0,
    kZSD_MSDA_HOST_FLOAT16 = 1,
    kZSD_MSDA_HOST_FLOAT16_FP32_COORDS = 2
};

//! Problem sizes: value [N,S,M,D], spatial_shapes [L,2], level_start_index [L], sampling_locations [N,Lq,M,L,P,2],
//! attention_weights [N,Lq,M,L,P], output [N,Lq,M*D].
struct ZsdMSDAProblem
{
    int32_t batch;      //!< N
    int32_t spatialSize; //!< S
    int32_t numHeads;   //!< M
    int32_t channels;   //!< D
    int32_t numLevels;  //!< L
    int32_t numQueries; //!< Lq
    int32_t numPoints;  //!< P
};

//! Compute output rows [rowBegin, rowEnd) where a row is one (n, q) pair, row = n * Lq + q. Single-threaded; call
//! it from any thread pool on disjoint row ranges. Validates all arguments (including every level against S) first.
int32_t zsdMSDeformAttnForwardHostRows(void const* value, int32_t const* spatialShapes,
    int32_t const* levelStartIndex, void const* samplingLocations, void const* attentionWeights, void* output,
    ZsdMSDAProblem const& problem, int32_t dtype, int64_t rowBegin, int64_t rowEnd);

//! Compute the whole output with numThreads std::threads (numThreads <= 0: std::thread::hardware_concurrency()).
int32_t zsdMSDeformAttnForwardHost(void const* value, int32_t const* spatialShapes, int32_t const* levelStartIndex,
    void const* samplingLocations, void const* attentionWeights, void* output, ZsdMSDAProblem const& problem,
    int32_t dtype, int32_t numThreads);

//! Human-readable text of a ZsdMSDAHostStatus.
char const* zsdMSDeformAttnHostStatusString(int32_t status);

//! The channel vector width the CPU kernel instantiates for D channels (largest of 32, 16, 8, 4, 2, 1 dividing D).
int32_t zsdMSDeformAttnHostVectorWidth(int32_t channels);

//! IEEE binary16 <-> binary32 conversions used by the fp16 emulation (exact decode; encode rounds to nearest even,
//! handles subnormals, overflow to infinity and NaN).
float zsdHalfBitsToFloat(uint16_t bits);
uint16_t zsdFloatToHalfBits(float value);
