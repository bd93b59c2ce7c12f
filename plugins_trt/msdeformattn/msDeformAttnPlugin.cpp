/*
 * zsdeploy — MSDeformAttn TensorRT plugin (IPluginV3, TensorRT >= 10.0).
 * SPDX-License-Identifier: Apache-2.0
 */
#include "msDeformAttnPlugin.h"

#include "msDeformAttnKernel.h"
#include "zsdCudaStatus.h"
#include "zsdPluginLogger.h"

#include <cstring>
#include <limits>
#include <memory>
#include <sstream>

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace zsd
{
namespace plugin
{
namespace
{

constexpr int32_t kSTATUS_SUCCESS = 0;
constexpr int32_t kSTATUS_FAILURE = -1;

std::string dimsToString(Dims const& d)
{
    std::ostringstream os;
    os << "[";
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        os << (i ? ", " : "") << d.d[i];
    }
    os << "]";
    return os.str();
}

char const* typeName(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return "fp32";
    case DataType::kHALF: return "fp16";
    case DataType::kINT32: return "int32";
    default: return "unsupported type";
    }
}

bool isFloatIo(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF;
}

//! Supported (value, sampling locations + attention weights) types: both fp32, both fp16, or fp16 value with fp32
//! locations and weights (strongly typed fp16 graphs keep the sampling math in fp32; see msDeformAttnKernel.cuh).
bool isSupportedTypePair(DataType valueType, DataType coordType)
{
    return isFloatIo(valueType) && (coordType == valueType || (valueType == DataType::kHALF
        && coordType == DataType::kFLOAT));
}

int32_t kernelDataType(DataType valueType, DataType coordType)
{
    if (valueType == DataType::kFLOAT)
    {
        return kZSD_MSDA_FLOAT32;
    }
    return coordType == DataType::kFLOAT ? kZSD_MSDA_FLOAT16_FP32_COORDS : kZSD_MSDA_FLOAT16;
}

//! Equal unless one side is still unknown (-1 during the build phase).
bool compatible(int64_t a, int64_t b)
{
    return a < 0 || b < 0 || a == b;
}

//! Sizes of one call, extracted from the five input dims.
struct Sizes
{
    int64_t batch, spatialSize, numHeads, channels, numLevels, numQueries, numPoints;
};

//! Check ranks and the consistency of the input dims (unknown = -1 allowed when allowUnknown), return the sizes.
Sizes checkInputDims(Dims const* in, bool allowUnknown)
{
    using P = MSDeformAttnPlugin;
    Dims const& value = in[P::kVALUE];
    Dims const& shapes = in[P::kSPATIAL_SHAPES];
    Dims const& starts = in[P::kLEVEL_START_INDEX];
    Dims const& loc = in[P::kSAMPLING_LOCATIONS];
    Dims const& attn = in[P::kATTENTION_WEIGHTS];
    ZSD_PLUGIN_CHECK(value.nbDims == 4, "value must be 4-D [N,S,M,D], got " + dimsToString(value));
    ZSD_PLUGIN_CHECK(shapes.nbDims == 2, "spatial_shapes must be 2-D [L,2], got " + dimsToString(shapes));
    ZSD_PLUGIN_CHECK(starts.nbDims == 1, "level_start_index must be 1-D [L], got " + dimsToString(starts));
    ZSD_PLUGIN_CHECK(loc.nbDims == 6, "sampling_locations must be 6-D [N,Lq,M,L,P,2], got " + dimsToString(loc));
    ZSD_PLUGIN_CHECK(attn.nbDims == 5, "attention_weights must be 5-D [N,Lq,M,L,P], got " + dimsToString(attn));

    Sizes s{value.d[0], value.d[1], value.d[2], value.d[3], shapes.d[0], loc.d[1], loc.d[4]};
    bool const ok = compatible(shapes.d[1], 2) && compatible(loc.d[5], 2) && compatible(starts.d[0], s.numLevels)
        && compatible(loc.d[0], s.batch) && compatible(loc.d[2], s.numHeads) && compatible(loc.d[3], s.numLevels)
        && compatible(attn.d[0], s.batch) && compatible(attn.d[1], s.numQueries) && compatible(attn.d[2], s.numHeads)
        && compatible(attn.d[3], s.numLevels) && compatible(attn.d[4], s.numPoints);
    ZSD_PLUGIN_CHECK(ok,
        "inconsistent input dims: value " + dimsToString(value) + ", spatial_shapes " + dimsToString(shapes)
            + ", level_start_index " + dimsToString(starts) + ", sampling_locations " + dimsToString(loc)
            + ", attention_weights " + dimsToString(attn));
    if (!allowUnknown)
    {
        for (int64_t v : {s.batch, s.spatialSize, s.numHeads, s.channels, s.numLevels, s.numQueries, s.numPoints})
        {
            ZSD_PLUGIN_CHECK(v >= 0 && v <= std::numeric_limits<int32_t>::max(),
                "input dims must be known and fit into int32: value " + dimsToString(value) + ", sampling_locations "
                    + dimsToString(loc));
        }
        ZSD_PLUGIN_CHECK(s.numHeads > 0 && s.channels > 0 && s.numLevels > 0 && s.numPoints > 0,
            "M, D, L and P must be positive: value " + dimsToString(value) + ", sampling_locations "
                + dimsToString(loc));
        ZSD_PLUGIN_CHECK(s.numLevels <= kZSD_MSDA_MAX_LEVELS,
            "at most " + std::to_string(kZSD_MSDA_MAX_LEVELS) + " levels are supported");
    }
    return s;
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------------
// MSDeformAttnPlugin

MSDeformAttnPlugin::MSDeformAttnPlugin(std::string pluginNamespace)
    : mNamespace(std::move(pluginNamespace))
{
    mFieldsToSerialize.nbFields = 0;
    mFieldsToSerialize.fields = nullptr;
}

nvinfer1::IPluginCapability* MSDeformAttnPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        ZSD_PLUGIN_CHECK(false, "unknown PluginCapabilityType " + std::to_string(static_cast<int32_t>(type)));
    }
    ZSD_PLUGIN_CATCH("MSDeformAttnPlugin::getCapabilityInterface")
    return nullptr;
}

nvinfer1::IPluginV3* MSDeformAttnPlugin::clone() noexcept
{
    try
    {
        return std::make_unique<MSDeformAttnPlugin>(mNamespace).release();
    }
    ZSD_PLUGIN_CATCH("MSDeformAttnPlugin::clone")
    return nullptr;
}

// The name/version/namespace/count getters only return constants or std::string::c_str() and cannot throw.
char const* MSDeformAttnPlugin::getPluginName() const noexcept
{
    return kMSDA_PLUGIN_NAME;
}

char const* MSDeformAttnPlugin::getPluginVersion() const noexcept
{
    return kMSDA_PLUGIN_VERSION;
}

char const* MSDeformAttnPlugin::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

int32_t MSDeformAttnPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

int32_t MSDeformAttnPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        ZSD_PLUGIN_CHECK(outputTypes != nullptr && inputTypes != nullptr, "null type array");
        ZSD_PLUGIN_CHECK(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS,
            "expected 5 inputs and 1 output, got " + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
        ZSD_PLUGIN_CHECK(isFloatIo(inputTypes[kVALUE]),
            std::string("value must be fp32 or fp16, got ") + typeName(inputTypes[kVALUE]));
        ZSD_PLUGIN_CHECK(isSupportedTypePair(inputTypes[kVALUE], inputTypes[kSAMPLING_LOCATIONS])
                && inputTypes[kATTENTION_WEIGHTS] == inputTypes[kSAMPLING_LOCATIONS],
            std::string("unsupported types: value ") + typeName(inputTypes[kVALUE]) + ", sampling_locations "
                + typeName(inputTypes[kSAMPLING_LOCATIONS]) + ", attention_weights "
                + typeName(inputTypes[kATTENTION_WEIGHTS])
                + " (supported: all fp32, all fp16, or fp16 value with fp32 locations and weights)");
        outputTypes[0] = inputTypes[kVALUE]; // the output follows value (fp16 in the mixed mode)
        return kSTATUS_SUCCESS;
    }
    ZSD_PLUGIN_CATCH("MSDeformAttnPlugin::getOutputDataTypes")
    return kSTATUS_FAILURE;
}

int32_t MSDeformAttnPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    try
    {
        ZSD_PLUGIN_CHECK(inputs != nullptr && outputs != nullptr, "null dims array");
        ZSD_PLUGIN_CHECK(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS,
            "expected 5 inputs and 1 output, got " + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
        ZSD_PLUGIN_CHECK(inputs[kVALUE].nbDims == 4, "value must be 4-D [N,S,M,D]");
        ZSD_PLUGIN_CHECK(inputs[kSAMPLING_LOCATIONS].nbDims == 6, "sampling_locations must be 6-D [N,Lq,M,L,P,2]");
        nvinfer1::IDimensionExpr const* headsTimesChannels = exprBuilder.operation(
            nvinfer1::DimensionOperation::kPROD, *inputs[kVALUE].d[2], *inputs[kVALUE].d[3]);
        ZSD_PLUGIN_CHECK(headsTimesChannels != nullptr, "IExprBuilder::operation(kPROD) failed");
        outputs[0].nbDims = 3;
        outputs[0].d[0] = inputs[kVALUE].d[0];              // N
        outputs[0].d[1] = inputs[kSAMPLING_LOCATIONS].d[1]; // Lq
        outputs[0].d[2] = headsTimesChannels;               // M * D
        return kSTATUS_SUCCESS;
    }
    ZSD_PLUGIN_CATCH("MSDeformAttnPlugin::getOutputShapes")
    return kSTATUS_FAILURE;
}

bool MSDeformAttnPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        ZSD_PLUGIN_CHECK(inOut != nullptr, "null inOut");
        ZSD_PLUGIN_CHECK(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS,
            "expected 5 inputs and 1 output, got " + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
        ZSD_PLUGIN_CHECK(pos >= 0 && pos < nbInputs + nbOutputs, "position out of range: " + std::to_string(pos));
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        switch (pos)
        {
        case kSPATIAL_SHAPES:
        case kLEVEL_START_INDEX: return desc.type == DataType::kINT32;
        case kVALUE: return isFloatIo(desc.type);
        // value's type is decided at pos 0: locations as value, or fp32 with an fp16 value (mixed mode)
        case kSAMPLING_LOCATIONS: return isSupportedTypePair(inOut[kVALUE].desc.type, desc.type);
        case kATTENTION_WEIGHTS: return desc.type == inOut[kSAMPLING_LOCATIONS].desc.type;
        default: // output: same type as value
            return desc.type == inOut[kVALUE].desc.type;
        }
    }
    ZSD_PLUGIN_CATCH("MSDeformAttnPlugin::supportsFormatCombination")
    return false;
}

int32_t MSDeformAttnPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        ZSD_PLUGIN_CHECK(in != nullptr && out != nullptr, "null tensor descriptions");
        ZSD_PLUGIN_CHECK(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS,
            "expected 5 inputs and 1 output, got " + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
        Dims dims[kNB_INPUTS];
        for (int32_t i = 0; i < kNB_INPUTS; ++i)
        {
            dims[i] = in[i].desc.dims;
        }
        Sizes const s = checkInputDims(dims, /*allowUnknown=*/true);
        Dims const& o = out[0].desc.dims;
        ZSD_PLUGIN_CHECK(o.nbDims == 3, "output must be 3-D [N,Lq,M*D], got " + dimsToString(o));
        bool const knownMD = s.numHeads >= 0 && s.channels >= 0;
        ZSD_PLUGIN_CHECK(compatible(o.d[0], s.batch) && compatible(o.d[1], s.numQueries)
                && (!knownMD || compatible(o.d[2], s.numHeads * s.channels)),
            "output dims " + dimsToString(o) + " do not match [N, Lq, M*D]");
        return kSTATUS_SUCCESS;
    }
    ZSD_PLUGIN_CATCH("MSDeformAttnPlugin::configurePlugin")
    return kSTATUS_FAILURE;
}

size_t MSDeformAttnPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0; // the level table is read from device memory by the kernel; no scratch needed (cannot throw)
}

int32_t MSDeformAttnPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        ZSD_PLUGIN_CHECK(in != nullptr && out != nullptr, "null tensor descriptions");
        ZSD_PLUGIN_CHECK(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS,
            "expected 5 inputs and 1 output, got " + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
        Dims dims[kNB_INPUTS];
        for (int32_t i = 0; i < kNB_INPUTS; ++i)
        {
            dims[i] = in[i].dims;
        }
        Sizes const s = checkInputDims(dims, /*allowUnknown=*/false);
        Dims const& o = out[0].dims;
        ZSD_PLUGIN_CHECK(o.nbDims == 3 && o.d[0] == s.batch && o.d[1] == s.numQueries
                && o.d[2] == s.numHeads * s.channels,
            "output dims " + dimsToString(o) + " do not match [N, Lq, M*D]");
        ZSD_PLUGIN_CHECK(isSupportedTypePair(in[kVALUE].type, in[kSAMPLING_LOCATIONS].type)
                && in[kATTENTION_WEIGHTS].type == in[kSAMPLING_LOCATIONS].type && out[0].type == in[kVALUE].type,
            "value, sampling_locations, attention_weights and output must be all fp32, all fp16, or fp16 value and "
            "output with fp32 sampling_locations and attention_weights");
        ZSD_PLUGIN_CHECK(in[kSPATIAL_SHAPES].type == DataType::kINT32 && in[kLEVEL_START_INDEX].type == DataType::kINT32,
            "spatial_shapes and level_start_index must be int32");
        return kSTATUS_SUCCESS;
    }
    ZSD_PLUGIN_CATCH("MSDeformAttnPlugin::onShapeChange")
    return kSTATUS_FAILURE;
}

int32_t MSDeformAttnPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        ZSD_PLUGIN_CHECK(inputDesc != nullptr && outputDesc != nullptr && inputs != nullptr && outputs != nullptr,
            "null pointer argument");
        Dims dims[kNB_INPUTS];
        for (int32_t i = 0; i < kNB_INPUTS; ++i)
        {
            dims[i] = inputDesc[i].dims;
        }
        Sizes const s = checkInputDims(dims, /*allowUnknown=*/false);
        DataType const type = inputDesc[kVALUE].type;
        DataType const coordType = inputDesc[kSAMPLING_LOCATIONS].type;
        ZSD_PLUGIN_CHECK(isSupportedTypePair(type, coordType) && inputDesc[kATTENTION_WEIGHTS].type == coordType
                && outputDesc[0].type == type,
            std::string("unsupported I/O types: value ") + typeName(type) + ", sampling_locations "
                + typeName(coordType));
        int32_t const dtype = kernelDataType(type, coordType);
        // An error left pending by an earlier layer (or the application) would otherwise be returned by the
        // launch check below and blamed on this plugin. Without a driver or device every call reports an error too:
        // describeEnqueueCudaError asks the runtime which of these it is (only on this failure path).
        cudaError_t const pending = cudaPeekAtLastError();
        ZSD_PLUGIN_CHECK(pending == cudaSuccess, describeEnqueueCudaError(pending, true, queryCudaEnvironment()));
        int const status = zsdMSDeformAttnForward(inputs[kVALUE], static_cast<int32_t const*>(inputs[kSPATIAL_SHAPES]),
            static_cast<int32_t const*>(inputs[kLEVEL_START_INDEX]), inputs[kSAMPLING_LOCATIONS],
            inputs[kATTENTION_WEIGHTS], outputs[0], static_cast<int32_t>(s.batch), static_cast<int32_t>(s.spatialSize),
            static_cast<int32_t>(s.numHeads), static_cast<int32_t>(s.channels), static_cast<int32_t>(s.numLevels),
            static_cast<int32_t>(s.numQueries), static_cast<int32_t>(s.numPoints), dtype, stream);
        ZSD_PLUGIN_CHECK(status == 0,
            describeEnqueueCudaError(static_cast<cudaError_t>(status), false, queryCudaEnvironment()));
        return kSTATUS_SUCCESS;
    }
    ZSD_PLUGIN_CATCH("MSDeformAttnPlugin::enqueue")
    return kSTATUS_FAILURE;
}

nvinfer1::IPluginV3* MSDeformAttnPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    try
    {
        return std::make_unique<MSDeformAttnPlugin>(mNamespace).release(); // no per-context resources
    }
    ZSD_PLUGIN_CATCH("MSDeformAttnPlugin::attachToContext")
    return nullptr;
}

nvinfer1::PluginFieldCollection const* MSDeformAttnPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mFieldsToSerialize.nbFields = 0; // no attributes: the engine stores nothing for this plugin
        mFieldsToSerialize.fields = nullptr;
        return &mFieldsToSerialize;
    }
    ZSD_PLUGIN_CATCH("MSDeformAttnPlugin::getFieldsToSerialize")
    return nullptr;
}

// ---------------------------------------------------------------------------------------------------------------------
// MSDeformAttnPluginCreator

MSDeformAttnPluginCreator::MSDeformAttnPluginCreator()
    : mNamespace(kMSDA_PLUGIN_NAMESPACE)
{
    mFieldNames.nbFields = 0;
    mFieldNames.fields = nullptr;
}

char const* MSDeformAttnPluginCreator::getPluginName() const noexcept
{
    return kMSDA_PLUGIN_NAME;
}

char const* MSDeformAttnPluginCreator::getPluginVersion() const noexcept
{
    return kMSDA_PLUGIN_VERSION;
}

char const* MSDeformAttnPluginCreator::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

nvinfer1::PluginFieldCollection const* MSDeformAttnPluginCreator::getFieldNames() noexcept
{
    return &mFieldNames;
}

nvinfer1::IPluginV3* MSDeformAttnPluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept
{
    try
    {
        ZSD_PLUGIN_CHECK(phase == nvinfer1::TensorRTPhase::kBUILD || phase == nvinfer1::TensorRTPhase::kRUNTIME,
            "unknown TensorRTPhase " + std::to_string(static_cast<int32_t>(phase)));
        if (fc != nullptr)
        {
            ZSD_PLUGIN_CHECK(fc->nbFields >= 0 && (fc->nbFields == 0 || fc->fields != nullptr),
                "malformed PluginFieldCollection");
            for (int32_t i = 0; i < fc->nbFields; ++i)
            {
                char const* field = fc->fields[i].name != nullptr ? fc->fields[i].name : "(null)";
                // Routing attributes of the ONNX node are tolerated; the plugin has no parameters.
                bool const routing = std::strcmp(field, "plugin_version") == 0
                    || std::strcmp(field, "plugin_namespace") == 0;
                ZSD_PLUGIN_CHECK(routing,
                    std::string("MSDeformAttn takes no attributes, got field '") + field + "' for layer '"
                        + (name != nullptr ? name : "") + "'");
            }
        }
        return std::make_unique<MSDeformAttnPlugin>(mNamespace).release();
    }
    ZSD_PLUGIN_CATCH("MSDeformAttnPluginCreator::createPlugin")
    return nullptr;
}

void MSDeformAttnPluginCreator::setPluginNamespace(char const* pluginNamespace) noexcept
{
    try
    {
        mNamespace = pluginNamespace != nullptr ? pluginNamespace : "";
    }
    ZSD_PLUGIN_CATCH("MSDeformAttnPluginCreator::setPluginNamespace")
}

} // namespace plugin
} // namespace zsd
