/*
 * A LOADER SHIM, NOT TensorRT: it only lets the dynamic loader resolve the nine C entry points that the real
 * TensorRT Python bindings (tensorrt_bindings/tensorrt.so) import from libnvinfer, libnvinfer_plugin and
 * libnvonnxparser, so that `import tensorrt` works on a machine where NVIDIA's libraries cannot be installed.
 * Every entry point returns null / 0 / false and does nothing else: no Builder, Runtime, parser or registry exists.
 * scripts/check_tensorrt_bindings.py builds it from this source (as libnvinfer.so.N etc.) into a throwaway folder;
 * tests never assert on what it returns, only on the real module's contents and on zsdeploy's own decisions.
 * SPDX-License-Identifier: Apache-2.0
 */
#include <stddef.h>

void* createInferBuilder_INTERNAL(void* logger, int version) { (void) logger; (void) version; return NULL; }
void* createInferRuntime_INTERNAL(void* logger, int version) { (void) logger; (void) version; return NULL; }
void* createInferRefitter_INTERNAL(void* engine, void* logger, int version)
{
    (void) engine; (void) logger; (void) version;
    return NULL;
}
void* getPluginRegistry(void) { return NULL; }
void* getBuilderPluginRegistry(int capability) { (void) capability; return NULL; }
int initLibNvInferPlugins(void* logger, char const* libNamespace) { (void) logger; (void) libNamespace; return 0; }
void* createNvOnnxParser_INTERNAL(void* network, void* logger, int version)
{
    (void) network; (void) logger; (void) version;
    return NULL;
}
void* createNvOnnxParserRefitter_INTERNAL(void* refitter, void* logger, int version)
{
    (void) refitter; (void) logger; (void) version;
    return NULL;
}
int getNvOnnxParserVersion(void) { return 0; }
