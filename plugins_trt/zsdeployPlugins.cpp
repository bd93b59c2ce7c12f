/*
 * zsdeploy — entry points of libzsdeploy_plugins.so.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Three ways to make the plugins known to TensorRT:
 *   1. Dynamic plugin library (TensorRT >= 10): `trtexec --dynamicPlugins=libzsdeploy_plugins.so`,
 *      `IPluginRegistry::loadLibrary(path)` or, in Python, `trt.get_plugin_registry().load_library(path)`.
 *      TensorRT calls the two C entry points below: setLoggerFinder() and getCreators().
 *   2. Explicit registration: load the library (dlopen / ctypes.CDLL) in a process that has loaded libnvinfer
 *      and call zsdeployInitPlugins(logger, namespace).
 *   3. `--setPluginsToSerialize` / IBuilderConfig::setPluginsToSerialize to embed the library in the engine.
 */
#include "msdeformattn/msDeformAttnPlugin.h"
#include "zsdPluginLogger.h"

#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <dlfcn.h>

#include <string>

namespace
{

zsd::plugin::MSDeformAttnPluginCreator& msDeformAttnCreator()
{
    static zsd::plugin::MSDeformAttnPluginCreator creator;
    return creator;
}

#define ZSD_STR2(x) #x
#define ZSD_STR(x) ZSD_STR2(x)

using GetPluginRegistryFn = nvinfer1::IPluginRegistry* (*) ();

//! Find getPluginRegistry() of the libnvinfer already loaded into this process (no link-time dependency, so the
//! library also loads where only the TensorRT headers were available at build time).
GetPluginRegistryFn findGetPluginRegistry()
{
    char const* const candidates[] = {"libnvinfer.so." ZSD_STR(NV_TENSORRT_MAJOR), "libnvinfer.so"};
    for (char const* lib : candidates)
    {
        void* handle = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD);
        if (handle != nullptr)
        {
            void* sym = dlsym(handle, "getPluginRegistry");
            dlclose(handle); // drops only the reference NOLOAD took
            if (sym != nullptr)
            {
                return reinterpret_cast<GetPluginRegistryFn>(sym);
            }
        }
    }
    return reinterpret_cast<GetPluginRegistryFn>(dlsym(RTLD_DEFAULT, "getPluginRegistry"));
}

} // namespace

extern "C" ZSD_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    zsd::plugin::setLoggerFinder(finder);
}

extern "C" ZSD_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const kCreators[] = {&msDeformAttnCreator()};
    nbCreators = static_cast<int32_t>(sizeof(kCreators) / sizeof(kCreators[0]));
    return kCreators;
}

//! Register all plugin creators of this library with TensorRT's global plugin registry.
//! \param logger          an nvinfer1::ILogger* (may be null: messages then go to stderr)
//! \param pluginNamespace registry namespace; null means "zsdeploy" (what the exporter writes as plugin_namespace)
//! \return true when every creator is registered (or already was, under the same name/version/namespace)
extern "C" ZSD_EXPORT bool zsdeployInitPlugins(void* logger, char const* pluginNamespace)
{
    using zsd::plugin::Severity;
    try
    {
        if (logger != nullptr)
        {
            zsd::plugin::setLogger(static_cast<nvinfer1::ILogger*>(logger));
        }
        std::string const ns = pluginNamespace != nullptr ? pluginNamespace : zsd::plugin::kMSDA_PLUGIN_NAMESPACE;
        GetPluginRegistryFn getRegistry = findGetPluginRegistry();
        if (getRegistry == nullptr)
        {
            zsd::plugin::log(Severity::kERROR,
                "zsdeployInitPlugins: libnvinfer.so." ZSD_STR(NV_TENSORRT_MAJOR) " is not loaded in this process "
                "(import tensorrt first), or use IPluginRegistry::loadLibrary / trtexec --dynamicPlugins instead");
            return false;
        }
        nvinfer1::IPluginRegistry* registry = getRegistry();
        if (registry == nullptr)
        {
            zsd::plugin::log(Severity::kERROR, "zsdeployInitPlugins: getPluginRegistry() returned null");
            return false;
        }
        auto& creator = msDeformAttnCreator();
        creator.setPluginNamespace(ns.c_str());
        if (registry->registerCreator(creator, ns.c_str()))
        {
            zsd::plugin::log(Severity::kVERBOSE,
                std::string("zsdeploy: registered ") + creator.getPluginName() + " version "
                    + creator.getPluginVersion() + " in namespace '" + ns + "'");
            return true;
        }
        if (registry->getCreator(creator.getPluginName(), creator.getPluginVersion(), ns.c_str()) != nullptr)
        {
            zsd::plugin::log(Severity::kWARNING,
                std::string("zsdeploy: ") + creator.getPluginName() + " version " + creator.getPluginVersion()
                    + " is already registered in namespace '" + ns + "'");
            return true;
        }
        zsd::plugin::log(Severity::kERROR,
            std::string("zsdeployInitPlugins: registering ") + creator.getPluginName() + " failed");
        return false;
    }
    ZSD_PLUGIN_CATCH("zsdeployInitPlugins")
    return false;
}
