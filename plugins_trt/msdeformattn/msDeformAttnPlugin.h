/*
 * zsdeploy — MSDeformAttn TensorRT plugin (IPluginV3, TensorRT >= 10.0).
 * SPDX-License-Identifier: Apache-2.0
 *
 * ONNX node: op_type "MSDeformAttn", attributes plugin_version="1", plugin_namespace="zsdeploy" (routing only).
 * Inputs:  0 value [N,S,M,D]  1 spatial_shapes [L,2] int32  2 level_start_index [L] int32
 *          3 sampling_locations [N,Lq,M,L,P,2]  4 attention_weights [N,Lq,M,L,P]
 * Output:  0 [N, Lq, M*D]
 * value, sampling_locations, attention_weights and the output share one type: fp32 or fp16. Linear format only.
 */
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace zsd
{
namespace plugin
{

constexpr char const* kMSDA_PLUGIN_NAME{"MSDeformAttn"};
constexpr char const* kMSDA_PLUGIN_VERSION{"1"};
constexpr char const* kMSDA_PLUGIN_NAMESPACE{"zsdeploy"};

class MSDeformAttnPlugin : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuild,
                           public nvinfer1::IPluginV3OneRuntime
{
public:
    static constexpr int32_t kVALUE = 0;
    static constexpr int32_t kSPATIAL_SHAPES = 1;
    static constexpr int32_t kLEVEL_START_INDEX = 2;
    static constexpr int32_t kSAMPLING_LOCATIONS = 3;
    static constexpr int32_t kATTENTION_WEIGHTS = 4;
    static constexpr int32_t kNB_INPUTS = 5;
    static constexpr int32_t kNB_OUTPUTS = 1;

    explicit MSDeformAttnPlugin(std::string pluginNamespace);
    MSDeformAttnPlugin(MSDeformAttnPlugin const&) = delete;
    MSDeformAttnPlugin& operator=(MSDeformAttnPlugin const&) = delete;
    ~MSDeformAttnPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    std::string mNamespace;
    nvinfer1::PluginFieldCollection mFieldsToSerialize{};
};

class MSDeformAttnPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    MSDeformAttnPluginCreator();
    ~MSDeformAttnPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

    //! Namespace given to the plugins this creator makes (default "zsdeploy"); not part of the TensorRT interface.
    void setPluginNamespace(char const* pluginNamespace) noexcept;

private:
    std::string mNamespace;
    nvinfer1::PluginFieldCollection mFieldNames{};
};

} // namespace plugin
} // namespace zsd
