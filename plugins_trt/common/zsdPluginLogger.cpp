/*
 * zsdeploy — logging for the TensorRT plugins of libzsdeploy_plugins.so.
 * SPDX-License-Identifier: Apache-2.0
 */
#include "zsdPluginLogger.h"

#include <cstdio>
#include <mutex>

namespace zsd
{
namespace plugin
{
namespace
{

std::mutex gMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};
nvinfer1::ILogger* gLogger{nullptr};

char const* severityName(Severity severity) noexcept
{
    switch (severity)
    {
    case Severity::kINTERNAL_ERROR: return "INTERNAL_ERROR";
    case Severity::kERROR: return "ERROR";
    case Severity::kWARNING: return "WARNING";
    case Severity::kINFO: return "INFO";
    case Severity::kVERBOSE: return "VERBOSE";
    }
    return "LOG";
}

} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gMutex);
    if (gLoggerFinder == nullptr && finder != nullptr)
    {
        gLoggerFinder = finder;
    }
}

void setLogger(nvinfer1::ILogger* logger) noexcept
{
    std::lock_guard<std::mutex> lock(gMutex);
    gLogger = logger;
}

void log(Severity severity, char const* message) noexcept
{
    nvinfer1::ILogger* logger{nullptr};
    {
        std::lock_guard<std::mutex> lock(gMutex);
        // The finder must be asked from the thread the plugin method runs in, so ask it on every message.
        if (gLoggerFinder != nullptr)
        {
            logger = gLoggerFinder->findLogger();
        }
        if (logger == nullptr)
        {
            logger = gLogger;
        }
    }
    char const* text = message != nullptr ? message : "(null)";
    if (logger != nullptr)
    {
        logger->log(severity, text);
        return;
    }
    std::fprintf(stderr, "[zsdeploy plugins] [%s] %s\n", severityName(severity), text);
}

void log(Severity severity, std::string const& message) noexcept
{
    log(severity, message.c_str());
}

void reportException(char const* where, std::exception const& e) noexcept
{
    try
    {
        log(Severity::kERROR, std::string(where) + ": " + e.what());
    }
    catch (...)
    {
        log(Severity::kERROR, where);
    }
}

void reportUnknownException(char const* where) noexcept
{
    try
    {
        log(Severity::kERROR, std::string(where) + ": unknown exception");
    }
    catch (...)
    {
        log(Severity::kERROR, where);
    }
}

} // namespace plugin
} // namespace zsd
