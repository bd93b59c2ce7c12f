/*
 * zsdeploy — logging for the TensorRT plugins of libzsdeploy_plugins.so.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Messages go to the logger TensorRT hands over through setLoggerFinder() (dynamic plugin loading), else to the
 * logger given to zsdeployInitPlugins(), else to stderr.
 */
#pragma once

#include <NvInferRuntime.h>

#include <stdexcept>
#include <string>

#if defined(_WIN32)
#define ZSD_EXPORT __declspec(dllexport)
#else
#define ZSD_EXPORT __attribute__((visibility("default")))
#endif

namespace zsd
{
namespace plugin
{

using Severity = nvinfer1::ILogger::Severity;

//! Store the ILoggerFinder TensorRT passes to setLoggerFinder() (first non-null one wins).
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! Store an explicit logger (from zsdeployInitPlugins); used when no logger finder is available.
void setLogger(nvinfer1::ILogger* logger) noexcept;

//! Log a message; never throws.
void log(Severity severity, char const* message) noexcept;
void log(Severity severity, std::string const& message) noexcept;

//! Report an exception caught in a noexcept plugin method: "<where>: <what>".
void reportException(char const* where, std::exception const& e) noexcept;
void reportUnknownException(char const* where) noexcept;

//! Thrown by ZSD_PLUGIN_CHECK; caught and reported by every noexcept plugin method.
class PluginError : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

} // namespace plugin
} // namespace zsd

//! Throw zsd::plugin::PluginError(message) unless cond holds. `message` may be any expression convertible to
//! std::string.
#define ZSD_PLUGIN_CHECK(cond, message)                                                                               \
    do                                                                                                                \
    {                                                                                                                 \
        if (!(cond))                                                                                                  \
        {                                                                                                             \
            throw ::zsd::plugin::PluginError(std::string(message));                                                  \
        }                                                                                                             \
    } while (0)

//! The catch clauses every noexcept plugin method ends with.
#define ZSD_PLUGIN_CATCH(where)                                                                                       \
    catch (std::exception const& e)                                                                                   \
    {                                                                                                                 \
        ::zsd::plugin::reportException(where, e);                                                                     \
    }                                                                                                                 \
    catch (...)                                                                                                       \
    {                                                                                                                 \
        ::zsd::plugin::reportUnknownException(where);                                                                 \
    }
