/*
 * zsdeploy — MSDeformAttn as an OpenVINO extension (CPU).
 * SPDX-License-Identifier: Apache-2.0
 *
 * OpenVINO's ONNX frontend reads the TensorRT plugin nodes of `export-model --msda plugin|nvidia` graphs
 * (zsdeploy::MSDeformAttn -> [N, Lq, M*D]; trt.plugins::MultiscaleDeformableAttnPlugin_TRT -> [N, Lq, M, D]) as
 * the ops below, and the CPU plugin runs them through `evaluate`: the host build of the TensorRT plugin's kernel
 * core (msDeformAttnHost.cpp, the arithmetic the CUDA kernel runs), split into row blocks on OpenVINO's own TBB
 * threads, so INFERENCE_NUM_THREADS bounds it like every other op. Why: OpenVINO lowers the portable GridSample
 * formulation to an f32-only GridSample plus reorders around it (about a third of PADing's network time in bf16);
 * this op reads the [N, S, M, D] value once per sample and writes the reduced output directly.
 *
 * Built at first use by zsdeploy.runtime.backends.ov_extension (g++, against the openvino wheel's headers).
 */
#include "msDeformAttnHost.h"

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>
#include <openvino/op/op.hpp>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <atomic>
#include <vector>

namespace zsd
{
namespace ov_ext
{

//! Rows (one (n, q) pair each) per TBB task: large enough that a task outweighs its scheduling, small enough to
//! balance a 64x64 level's 4096 queries over 16+ threads.
constexpr int64_t kRowsPerTask = 64;

//! The op with output rank OutRank (3: [N, Lq, M*D]; 4: [N, Lq, M, D]); Self is the registered subclass.
template <class Self, int OutRank>
class MSDeformAttnOp : public ov::op::Op
{
public:
    MSDeformAttnOp() = default;

    explicit MSDeformAttnOp(ov::OutputVector const& args)
        : ov::op::Op(args)
    {
    }

    void validate_and_infer_types() override
    {
        NODE_VALIDATION_CHECK(this, get_input_size() == 5,
            "takes 5 inputs (value, spatial_shapes, level_start_index, sampling_locations, attention_weights), got ",
            get_input_size());
        auto const& value = get_input_partial_shape(0);
        auto const& loc = get_input_partial_shape(3);
        ov::PartialShape out = ov::PartialShape::dynamic(OutRank);
        if (value.rank().is_static() && loc.rank().is_static())
        {
            NODE_VALIDATION_CHECK(this, value.size() == 4, "value must be [N, S, M, D], got ", value);
            NODE_VALIDATION_CHECK(this, loc.size() == 6, "sampling_locations must be [N, Lq, M, L, P, 2], got ", loc);
            out = OutRank == 3 ? ov::PartialShape{loc[0], loc[1], value[2] * value[3]}
                               : ov::PartialShape{loc[0], loc[1], value[2], value[3]};
        }
        set_output_type(0, get_input_element_type(0), out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(ov::OutputVector const& newArgs) const override
    {
        check_new_args_count(this, newArgs);
        return std::make_shared<Self>(newArgs);
    }

    bool visit_attributes(ov::AttributeVisitor&) override
    {
        // plugin_version / plugin_namespace only address TensorRT's plugin registry: nothing to keep here.
        return true;
    }

    bool has_evaluate() const override
    {
        auto const f32 = ov::element::f32;
        return get_input_element_type(0) == f32 && get_input_element_type(3) == f32
            && get_input_element_type(4) == f32;
    }

    bool evaluate(ov::TensorVector& outputs, ov::TensorVector const& inputs) const override
    {
        ov::Shape const& vs = inputs[0].get_shape();
        ov::Shape const& ls = inputs[3].get_shape();
        OPENVINO_ASSERT(vs.size() == 4 && ls.size() == 6 && ls[0] == vs[0] && ls[2] == vs[2] && ls[5] == 2,
            "MSDeformAttn: value ", vs, " and sampling_locations ", ls, " do not fit together");
        OPENVINO_ASSERT(inputs[1].get_size() == 2 * ls[3] && inputs[2].get_size() == ls[3],
            "MSDeformAttn: spatial_shapes / level_start_index do not hold ", ls[3], " levels");
        OPENVINO_ASSERT(inputs[4].get_size() == ov::shape_size(ls) / 2, "MSDeformAttn: attention_weights ",
            inputs[4].get_shape(), " do not fit sampling_locations ", ls);
        ZsdMSDAProblem problem{};
        problem.batch = static_cast<int32_t>(vs[0]);
        problem.spatialSize = static_cast<int32_t>(vs[1]);
        problem.numHeads = static_cast<int32_t>(vs[2]);
        problem.channels = static_cast<int32_t>(vs[3]);
        problem.numQueries = static_cast<int32_t>(ls[1]);
        problem.numLevels = static_cast<int32_t>(ls[3]);
        problem.numPoints = static_cast<int32_t>(ls[4]);
        outputs[0].set_shape(OutRank == 3 ? ov::Shape{ls[0], ls[1], vs[2] * vs[3]}
                                          : ov::Shape{ls[0], ls[1], vs[2], vs[3]});
        std::vector<int32_t> const shapes = toInt32(inputs[1]);
        std::vector<int32_t> const starts = toInt32(inputs[2]);

        int64_t const rows = static_cast<int64_t>(problem.batch) * problem.numQueries;
        std::atomic<int32_t> status{kZSD_MSDA_HOST_SUCCESS};
        tbb::parallel_for(tbb::blocked_range<int64_t>(0, rows, kRowsPerTask),
            [&](tbb::blocked_range<int64_t> const& r)
            {
                int32_t const s = zsdMSDeformAttnForwardHostRows(inputs[0].data(), shapes.data(), starts.data(),
                    inputs[3].data(), inputs[4].data(), outputs[0].data(), problem, kZSD_MSDA_HOST_FLOAT32,
                    static_cast<int64_t>(r.begin()), static_cast<int64_t>(r.end()));
                if (s != kZSD_MSDA_HOST_SUCCESS)
                {
                    status.store(s);
                }
            });
        OPENVINO_ASSERT(status.load() == kZSD_MSDA_HOST_SUCCESS, "MSDeformAttn: ",
            zsdMSDeformAttnHostStatusString(status.load()));
        return true;
    }

private:
    static std::vector<int32_t> toInt32(ov::Tensor const& t)
    {
        std::vector<int32_t> out(t.get_size());
        if (t.get_element_type() == ov::element::i32)
        {
            std::copy_n(t.data<int32_t const>(), out.size(), out.begin());
        }
        else if (t.get_element_type() == ov::element::i64)
        {
            std::copy_n(t.data<int64_t const>(), out.size(), out.begin());
        }
        else
        {
            OPENVINO_THROW("MSDeformAttn: level shapes must be int32 or int64, got ", t.get_element_type());
        }
        return out;
    }
};

//! zsdeploy's plugin node (`--msda plugin`): output [N, Lq, M*D].
class MSDeformAttn final : public MSDeformAttnOp<MSDeformAttn, 3>
{
public:
    OPENVINO_OP("MSDeformAttn", "zsdeploy", ov::op::Op);
    MSDeformAttn() = default;
    explicit MSDeformAttn(ov::OutputVector const& args)
        : MSDeformAttnOp(args)
    {
        constructor_validate_and_infer_types();
    }
};

//! TensorRT's built-in plugin node (`--msda nvidia`): output [N, Lq, M, D].
class MultiscaleDeformableAttnTRT final : public MSDeformAttnOp<MultiscaleDeformableAttnTRT, 4>
{
public:
    OPENVINO_OP("MultiscaleDeformableAttnPlugin_TRT", "zsdeploy", ov::op::Op);
    MultiscaleDeformableAttnTRT() = default;
    explicit MultiscaleDeformableAttnTRT(ov::OutputVector const& args)
        : MSDeformAttnOp(args)
    {
        constructor_validate_and_infer_types();
    }
};

} // namespace ov_ext
} // namespace zsd

// Both ops (so IR and compiled-model caches can name them) and their ONNX mappings (op type + domain as
// export/plugin_lowering.py writes them).
OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<zsd::ov_ext::MSDeformAttn>>(),
    std::make_shared<ov::OpExtension<zsd::ov_ext::MultiscaleDeformableAttnTRT>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<zsd::ov_ext::MSDeformAttn>>("MSDeformAttn", "zsdeploy"),
    std::make_shared<ov::frontend::onnx::OpExtension<zsd::ov_ext::MultiscaleDeformableAttnTRT>>(
        "MultiscaleDeformableAttnPlugin_TRT", "trt.plugins"),
}));
