/*
 * zsdeploy — why a CUDA call failed inside a plugin: no driver, an old driver, no device, or an error that an earlier
 * layer left pending.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Without a driver, every CUDA runtime call (cudaPeekAtLastError too) reports cudaErrorInsufficientDriver, which reads
 * like "update your driver" and, seen before a launch, like an error someone else left behind. The plugin asks the
 * runtime what is really there (driver version, runtime version, device count) only once something failed — never on
 * the hot path — and names that cause. The decision is a pure function of those facts so the smoke test checks every
 * branch on any machine.
 */
#pragma once

#include <cuda_runtime_api.h>

#include <string>

namespace zsd
{
namespace plugin
{

//! What the CUDA runtime reports about this process's ability to run kernels.
struct CudaEnvironment
{
    cudaError_t deviceQuery{cudaSuccess}; //!< result of cudaGetDeviceCount
    int deviceCount{0};
    int driverVersion{0};  //!< cudaDriverGetVersion: 0 when no driver (libcuda.so.1) is installed
    int runtimeVersion{0}; //!< cudaRuntimeGetVersion: the CUDA runtime this library was built with
};

inline CudaEnvironment queryCudaEnvironment() noexcept
{
    CudaEnvironment env;
    env.deviceQuery = cudaGetDeviceCount(&env.deviceCount);
    if (cudaDriverGetVersion(&env.driverVersion) != cudaSuccess)
    {
        env.driverVersion = 0;
    }
    if (cudaRuntimeGetVersion(&env.runtimeVersion) != cudaSuccess)
    {
        env.runtimeVersion = 0;
    }
    return env;
}

inline std::string cudaVersionText(int version)
{
    return std::to_string(version / 1000) + "." + std::to_string((version % 1000) / 10);
}

//! Why kernels cannot run in this process, with the fix; empty when a device is usable.
inline std::string whyCudaCannotRun(CudaEnvironment const& env)
{
    if (env.driverVersion == 0 || env.deviceQuery == cudaErrorStubLibrary)
    {
        return "no NVIDIA driver is installed (libcuda.so.1 was not found"
            + std::string(env.deviceQuery == cudaErrorStubLibrary ? ", only the toolkit's stub library" : "")
            + "), so no GPU can run TensorRT engines here. Fix: run on a machine with an NVIDIA GPU and its driver "
              "(on Jetson: JetPack); on a CPU-only machine run the .onnx with trt-infer --backend onnxruntime|openvino";
    }
    if (env.deviceQuery == cudaErrorInsufficientDriver
        || (env.deviceQuery != cudaSuccess && env.driverVersion < env.runtimeVersion))
    {
        return "the NVIDIA driver supports CUDA " + cudaVersionText(env.driverVersion)
            + ", older than the CUDA runtime " + cudaVersionText(env.runtimeVersion)
            + " this plugin was built with. Fix: update the driver, or build plugins_trt with a CUDA toolkit no newer "
              "than the driver's CUDA version (nvidia-smi shows it)";
    }
    if (env.deviceQuery == cudaErrorNoDevice || (env.deviceQuery == cudaSuccess && env.deviceCount == 0))
    {
        return "the NVIDIA driver (CUDA " + cudaVersionText(env.driverVersion)
            + ") sees no GPU. Fix: check nvidia-smi and CUDA_VISIBLE_DEVICES (a container needs --gpus)";
    }
    if (env.deviceQuery != cudaSuccess)
    {
        return std::string("CUDA could not be initialised (") + cudaGetErrorName(env.deviceQuery) + ": "
            + cudaGetErrorString(env.deviceQuery) + "). Fix: check the GPU with nvidia-smi";
    }
    return "";
}

//! The message for a CUDA error met in enqueue: found pending before the launch, or returned by the launch itself.
inline std::string describeEnqueueCudaError(cudaError_t error, bool pendingBeforeLaunch, CudaEnvironment const& env)
{
    std::string const cause = whyCudaCannotRun(env);
    std::string const code = std::string(cudaGetErrorName(error)) + ": " + cudaGetErrorString(error);
    if (!cause.empty())
    {
        return "CUDA cannot run kernels in this process: " + cause + " (CUDA reported " + code + ")";
    }
    if (pendingBeforeLaunch)
    {
        return "a CUDA error was already pending before MSDeformAttn ran (raised by an earlier layer or the "
               "application, not by this plugin): "
            + code;
    }
    return "CUDA kernel launch failed: " + code;
}

} // namespace plugin
} // namespace zsd
