/*
 * zsdeploy — smoke test of libzsdeploy_plugins.so through the TensorRT plugin interfaces, without libnvinfer.
 * SPDX-License-Identifier: Apache-2.0
 *
 *   zsd_plugin_smoke_test [path/to/libzsdeploy_plugins.so]
 *
 * Loads the library with dlopen exactly as IPluginRegistry::loadLibrary does (setLoggerFinder + getCreators), then
 * drives the creator and the IPluginV3 capability interfaces the way the builder and runtime do. TensorRT's
 * IExprBuilder is replaced by a small constant-folding stand-in (TensorRT's own implementation lives in libnvinfer);
 * it is a test double of TensorRT, not of the plugin.
 *
 * With a CUDA device, enqueue() runs on real device buffers (NaN-poisoned outputs) and is compared with the CPU build of
 * the same kernel core (fp32: 1e-5 abs; fp16: at most 1 fp16 ulp). Without one, enqueue() must fail cleanly and log.
 * Exit status 0 = all checks passed.
 */
#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include "msDeformAttnHost.h"
#include "zsdCudaStatus.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

using namespace nvinfer1;

#define ZSD_STR2(x) #x
#define ZSD_STR(x) ZSD_STR2(x)
#define ZSD_TRT_MAJOR_STR ZSD_STR(NV_TENSORRT_MAJOR)

namespace
{

int gFailures = 0;
int gChecks = 0;

void check(bool cond, std::string const& what)
{
    ++gChecks;
    if (!cond)
    {
        ++gFailures;
        std::printf("FAIL: %s\n", what.c_str());
    }
    else
    {
        std::printf("ok:   %s\n", what.c_str());
    }
}

// ---- logger plumbing ------------------------------------------------------------------------------------------------
class CapturingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        messages.emplace_back(msg != nullptr ? msg : "");
        std::printf("      [plugin log %d] %s\n", static_cast<int>(severity), msg != nullptr ? msg : "");
    }
    bool contains(char const* needle) const
    {
        for (auto const& m : messages)
        {
            if (m.find(needle) != std::string::npos)
            {
                return true;
            }
        }
        return false;
    }
    std::vector<std::string> messages;
};

class TestLoggerFinder : public ILoggerFinder
{
public:
    explicit TestLoggerFinder(ILogger* logger)
        : mLogger(logger)
    {
    }
    ~TestLoggerFinder() override = default;
    ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    ILogger* mLogger;
};

// ---- stand-in for TensorRT's expression builder ---------------------------------------------------------------------
struct ExprImpl : public apiv::VDimensionExpr
{
    bool constant{false};
    int64_t value{0};
    std::string repr;
    bool isConstant() const override
    {
        return constant;
    }
    int64_t getConstantValue() const override
    {
        return constant ? value : std::numeric_limits<int64_t>::min();
    }
    bool isSizeTensor() const override
    {
        return false;
    }
};

class Expr : public IDimensionExpr
{
public:
    explicit Expr(ExprImpl* impl)
    {
        mImpl = impl;
    }
    ~Expr() noexcept override = default;
};

struct ExprNode
{
    ExprImpl impl;
    Expr expr{&impl};
};

class ExprPool
{
public:
    IDimensionExpr const* make(bool constant, int64_t value, std::string repr)
    {
        mNodes.emplace_back(std::make_unique<ExprNode>());
        ExprNode& n = *mNodes.back();
        n.impl.constant = constant;
        n.impl.value = value;
        n.impl.repr = std::move(repr);
        mByExpr[&n.expr] = &n.impl;
        return &n.expr;
    }
    ExprImpl const* lookup(IDimensionExpr const* e) const
    {
        auto it = mByExpr.find(e);
        return it == mByExpr.end() ? nullptr : it->second;
    }

private:
    std::deque<std::unique_ptr<ExprNode>> mNodes;
    std::map<IDimensionExpr const*, ExprImpl const*> mByExpr;
};

struct BuilderImpl : public apiv::VExprBuilder
{
    ExprPool* pool{nullptr};
    IDimensionExpr const* constant(int64_t value) override
    {
        return pool->make(true, value, std::to_string(value));
    }
    IDimensionExpr const* operation(
        DimensionOperation op, IDimensionExpr const& first, IDimensionExpr const& second) override
    {
        ExprImpl const* a = pool->lookup(&first);
        ExprImpl const* b = pool->lookup(&second);
        if (a == nullptr || b == nullptr)
        {
            return nullptr;
        }
        char const* sym = op == DimensionOperation::kPROD ? "*" : (op == DimensionOperation::kSUM ? "+" : "?");
        std::string const repr = "(" + a->repr + sym + b->repr + ")";
        if (a->constant && b->constant && (op == DimensionOperation::kPROD || op == DimensionOperation::kSUM))
        {
            int64_t const v = op == DimensionOperation::kPROD ? a->value * b->value : a->value + b->value;
            return pool->make(true, v, repr);
        }
        return pool->make(false, 0, repr);
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
};

class ExprBuilder : public IExprBuilder
{
public:
    explicit ExprBuilder(ExprPool& pool)
    {
        mBuilder.pool = &pool;
        mImpl = &mBuilder;
    }
    ~ExprBuilder() noexcept override = default;

private:
    BuilderImpl mBuilder;
};

// ---- helpers --------------------------------------------------------------------------------------------------------
Dims makeDims(std::vector<int64_t> const& v)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(v.size());
    for (size_t i = 0; i < v.size(); ++i)
    {
        d.d[i] = v[i];
    }
    return d;
}

PluginTensorDesc makeDesc(std::vector<int64_t> const& dims, DataType type, TensorFormat format = TensorFormat::kLINEAR)
{
    PluginTensorDesc desc{};
    desc.dims = makeDims(dims);
    desc.type = type;
    desc.format = format;
    desc.scale = 1.0F;
    return desc;
}

DynamicPluginTensorDesc makeDynDesc(std::vector<int64_t> const& dims, DataType type,
    TensorFormat format = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc d{};
    d.desc = makeDesc(dims, type, format);
    d.min = d.desc.dims;
    d.max = d.desc.dims;
    d.opt = d.desc.dims;
    return d;
}

struct Problem
{
    int32_t n, m, d, lq, p;
    std::vector<int32_t> shapes; // H0, W0, H1, W1, ...
    int32_t levels() const
    {
        return static_cast<int32_t>(shapes.size() / 2);
    }
    int32_t spatial() const
    {
        int32_t s = 0;
        for (int32_t l = 0; l < levels(); ++l)
        {
            s += shapes[2 * l] * shapes[2 * l + 1];
        }
        return s;
    }
    std::vector<int32_t> starts() const
    {
        std::vector<int32_t> st;
        int32_t s = 0;
        for (int32_t l = 0; l < levels(); ++l)
        {
            st.push_back(s);
            s += shapes[2 * l] * shapes[2 * l + 1];
        }
        return st;
    }
    std::vector<PluginTensorDesc> inputDescs(DataType t) const
    {
        int64_t const L = levels();
        return {makeDesc({n, spatial(), m, d}, t), makeDesc({L, 2}, DataType::kINT32),
            makeDesc({L}, DataType::kINT32), makeDesc({n, lq, m, L, p, 2}, t), makeDesc({n, lq, m, L, p}, t)};
    }
    PluginTensorDesc outputDesc(DataType t) const
    {
        return makeDesc({n, lq, static_cast<int64_t>(m) * d}, t);
    }
};

template <typename T>
T* toDevice(std::vector<T> const& host)
{
    void* p = nullptr;
    if (cudaMalloc(&p, host.size() * sizeof(T)) != cudaSuccess)
    {
        return nullptr;
    }
    cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    return static_cast<T*>(p);
}

//! Run the plugin on the GPU and compare with the host kernel. Returns the max error (fp32: abs; fp16: in ulps).
void gpuCheck(IPluginV3OneRuntime* runtime, Problem const& pr, bool half, std::mt19937& rng)
{
    int32_t const L = pr.levels();
    int32_t const S = pr.spatial();
    std::uniform_real_distribution<float> uni(0.0F, 1.0F);
    std::normal_distribution<float> gauss(0.0F, 1.0F);
    std::vector<float> value(static_cast<size_t>(pr.n) * S * pr.m * pr.d);
    std::vector<float> loc(static_cast<size_t>(pr.n) * pr.lq * pr.m * L * pr.p * 2);
    std::vector<float> attn(static_cast<size_t>(pr.n) * pr.lq * pr.m * L * pr.p);
    for (auto& v : value)
    {
        v = gauss(rng);
    }
    for (auto& v : loc)
    {
        v = -0.2F + 1.4F * uni(rng);
    }
    for (auto& v : attn)
    {
        v = uni(rng) / static_cast<float>(L * pr.p);
    }
    loc[0] = 0.0F; // exactly on the borders
    loc[1] = 1.0F;
    std::vector<int32_t> const starts = pr.starts();
    size_t const outCount = static_cast<size_t>(pr.n) * pr.lq * pr.m * pr.d;
    ZsdMSDAProblem const hp{pr.n, S, pr.m, pr.d, L, pr.lq, pr.p};

    std::vector<uint16_t> value16, loc16, attn16;
    auto toHalf = [](std::vector<float> const& src, std::vector<uint16_t>& dst) {
        dst.resize(src.size());
        for (size_t i = 0; i < src.size(); ++i)
        {
            dst[i] = zsdFloatToHalfBits(src[i]);
        }
    };
    void* dValue;
    void* dLoc;
    void* dAttn;
    size_t const elem = half ? 2 : 4;
    if (half)
    {
        toHalf(value, value16);
        toHalf(loc, loc16);
        toHalf(attn, attn16);
        dValue = toDevice(value16);
        dLoc = toDevice(loc16);
        dAttn = toDevice(attn16);
    }
    else
    {
        dValue = toDevice(value);
        dLoc = toDevice(loc);
        dAttn = toDevice(attn);
    }
    int32_t* dShapes = toDevice(pr.shapes);
    int32_t* dStarts = toDevice(starts);
    void* dOut = nullptr;
    cudaMalloc(&dOut, outCount * elem);
    cudaMemset(dOut, 0xFF, outCount * elem); // NaN poison

    DataType const t = half ? DataType::kHALF : DataType::kFLOAT;
    std::vector<PluginTensorDesc> in = pr.inputDescs(t);
    PluginTensorDesc out = pr.outputDesc(t);
    check(runtime->onShapeChange(in.data(), 5, &out, 1) == 0, "onShapeChange accepts concrete shapes");
    void const* inputs[5] = {dValue, dShapes, dStarts, dLoc, dAttn};
    void* outputs[1] = {dOut};
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    int32_t const rc = runtime->enqueue(in.data(), &out, inputs, outputs, nullptr, stream);
    cudaError_t const syncErr = cudaStreamSynchronize(stream);
    check(rc == 0 && syncErr == cudaSuccess,
        std::string("enqueue on GPU (") + (half ? "fp16" : "fp32") + ", D=" + std::to_string(pr.d)
            + "): " + cudaGetErrorString(syncErr));

    std::vector<float> got(outCount);
    std::vector<float> want(outCount);
    if (half)
    {
        std::vector<uint16_t> got16(outCount), want16(outCount);
        cudaMemcpy(got16.data(), dOut, outCount * 2, cudaMemcpyDeviceToHost);
        zsdMSDeformAttnForwardHost(value16.data(), pr.shapes.data(), starts.data(), loc16.data(), attn16.data(),
            want16.data(), hp, kZSD_MSDA_HOST_FLOAT16, 0);
        double maxUlps = 0.0;
        for (size_t i = 0; i < outCount; ++i)
        {
            float const g = zsdHalfBitsToFloat(got16[i]);
            float const w = zsdHalfBitsToFloat(want16[i]);
            float const ulp = std::ldexp(1.0F, std::max(std::ilogb(std::fabs(w) + 1e-30F), -14) - 10);
            double const ulps = std::isfinite(g) ? std::fabs(g - w) / ulp : 1e30;
            maxUlps = std::max(maxUlps, ulps);
        }
        std::printf("      fp16 D=%d: max difference GPU vs host emulation = %.2f fp16 ulp\n", pr.d, maxUlps);
        check(maxUlps <= 1.0, "fp16 GPU output within 1 ulp of the host emulation");
    }
    else
    {
        cudaMemcpy(got.data(), dOut, outCount * 4, cudaMemcpyDeviceToHost);
        zsdMSDeformAttnForwardHost(value.data(), pr.shapes.data(), starts.data(), loc.data(), attn.data(),
            want.data(), hp, kZSD_MSDA_HOST_FLOAT32, 0);
        double maxAbs = 0.0;
        for (size_t i = 0; i < outCount; ++i)
        {
            double const e = std::isfinite(got[i]) ? std::fabs(static_cast<double>(got[i]) - want[i]) : 1e30;
            maxAbs = std::max(maxAbs, e);
        }
        std::printf("      fp32 D=%d: max |GPU - host| = %.3g\n", pr.d, maxAbs);
        check(maxAbs < 1e-5, "fp32 GPU output matches the host kernel (< 1e-5)");
    }
    cudaStreamDestroy(stream);
    for (void* p : {dValue, dLoc, dAttn, static_cast<void*>(dShapes), static_cast<void*>(dStarts), dOut})
    {
        cudaFree(p);
    }
}

} // namespace

int main(int argc, char** argv)
{
    std::string libPath = argc > 1 ? argv[1] : "./libzsdeploy_plugins.so";
    void* lib = dlopen(libPath.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::printf("FAIL: dlopen(%s): %s\n", libPath.c_str(), dlerror());
        return 2;
    }
    using SetLoggerFinderFn = void (*)(ILoggerFinder*);
    using GetCreatorsFn = IPluginCreatorInterface* const* (*) (int32_t&);
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinderFn>(dlsym(lib, "setLoggerFinder"));
    auto getCreators = reinterpret_cast<GetCreatorsFn>(dlsym(lib, "getCreators"));
    void* initPlugins = dlsym(lib, "zsdeployInitPlugins");
    check(setLoggerFinder != nullptr, "exports setLoggerFinder");
    check(getCreators != nullptr, "exports getCreators");
    check(initPlugins != nullptr, "exports zsdeployInitPlugins");
    if (setLoggerFinder == nullptr || getCreators == nullptr)
    {
        return 1;
    }
    CapturingLogger logger;
    TestLoggerFinder finder(&logger);
    setLoggerFinder(&finder);

    // zsdeployInitPlugins needs the libnvinfer of the process; this test process has none loaded.
    if (initPlugins != nullptr && dlopen("libnvinfer.so." ZSD_TRT_MAJOR_STR, RTLD_LAZY | RTLD_NOLOAD) == nullptr)
    {
        using InitFn = bool (*)(void*, char const*);
        logger.messages.clear();
        check(!reinterpret_cast<InitFn>(initPlugins)(nullptr, nullptr) && logger.contains("is not loaded"),
            "zsdeployInitPlugins without libnvinfer returns false and says why");
    }

    int32_t nbCreators = -1;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    check(nbCreators == 1 && creators != nullptr && creators[0] != nullptr, "getCreators returns one creator");
    if (nbCreators != 1 || creators == nullptr || creators[0] == nullptr)
    {
        return 1;
    }
    InterfaceInfo const info = creators[0]->getInterfaceInfo();
    check(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0, std::string("creator kind is ") + info.kind);
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    check(std::strcmp(creator->getPluginName(), "MSDeformAttn") == 0, "creator name MSDeformAttn");
    check(std::strcmp(creator->getPluginVersion(), "1") == 0, "creator version 1");
    check(std::strcmp(creator->getPluginNamespace(), "zsdeploy") == 0, "creator namespace zsdeploy");
    PluginFieldCollection const* fieldNames = creator->getFieldNames();
    check(fieldNames != nullptr && fieldNames->nbFields == 0, "creator advertises no fields");

    // unknown attribute -> nullptr + logged error; routing attributes are tolerated
    PluginField bogus{"bogus", nullptr, PluginFieldType::kINT32, 1};
    PluginFieldCollection bogusFc{1, &bogus};
    check(creator->createPlugin("layer", &bogusFc, TensorRTPhase::kBUILD) == nullptr
            && logger.contains("takes no attributes"),
        "createPlugin rejects an unknown field and logs why");
    char const version[] = "1";
    PluginField routing{"plugin_version", version, PluginFieldType::kCHAR, 1};
    PluginFieldCollection routingFc{1, &routing};
    std::unique_ptr<IPluginV3> routed(creator->createPlugin("layer", &routingFc, TensorRTPhase::kBUILD));
    check(routed != nullptr, "createPlugin tolerates the plugin_version routing field");

    PluginFieldCollection emptyFc{0, nullptr};
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("msda", &emptyFc, TensorRTPhase::kBUILD));
    std::unique_ptr<IPluginV3> runtimePlugin(creator->createPlugin("msda", &emptyFc, TensorRTPhase::kRUNTIME));
    check(plugin != nullptr && runtimePlugin != nullptr, "createPlugin in build and runtime phase");
    if (!plugin)
    {
        return 1;
    }
    check(std::strcmp(plugin->getInterfaceInfo().kind, "PLUGIN") == 0, "plugin kind PLUGIN");
    IPluginCapability* coreCap = plugin->getCapabilityInterface(PluginCapabilityType::kCORE);
    IPluginCapability* buildCap = plugin->getCapabilityInterface(PluginCapabilityType::kBUILD);
    IPluginCapability* runtimeCap = plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME);
    check(coreCap && buildCap && runtimeCap, "all three capability interfaces");
    if (!(coreCap && buildCap && runtimeCap))
    {
        return 1;
    }
    check(std::strcmp(coreCap->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0, "core capability kind");
    check(std::strcmp(buildCap->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0, "build capability kind");
    check(std::strcmp(runtimeCap->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0, "runtime capability kind");
    auto* core = static_cast<IPluginV3OneCore*>(coreCap);
    auto* build = static_cast<IPluginV3OneBuild*>(buildCap);
    auto* runtime = static_cast<IPluginV3OneRuntime*>(runtimeCap);
    check(std::strcmp(core->getPluginName(), "MSDeformAttn") == 0 && std::strcmp(core->getPluginVersion(), "1") == 0
            && std::strcmp(core->getPluginNamespace(), "zsdeploy") == 0,
        "core name/version/namespace match the creator");

    // build interface
    check(build->getNbOutputs() == 1, "one output");
    for (DataType t : {DataType::kFLOAT, DataType::kHALF})
    {
        DataType inTypes[5] = {t, DataType::kINT32, DataType::kINT32, t, t};
        DataType outType = DataType::kINT8;
        check(build->getOutputDataTypes(&outType, 1, inTypes, 5) == 0 && outType == t, "output type follows value");
    }
    {
        DataType inTypes[5] = {DataType::kINT8, DataType::kINT32, DataType::kINT32, DataType::kINT8, DataType::kINT8};
        DataType outType;
        check(build->getOutputDataTypes(&outType, 1, inTypes, 5) != 0, "getOutputDataTypes rejects int8 value");
    }
    {
        DataType inTypes[5] = {DataType::kHALF, DataType::kINT32, DataType::kINT32, DataType::kFLOAT, DataType::kFLOAT};
        DataType outType = DataType::kINT8;
        check(build->getOutputDataTypes(&outType, 1, inTypes, 5) == 0 && outType == DataType::kHALF,
            "fp16 value with fp32 locations/weights gives an fp16 output");
        inTypes[4] = DataType::kHALF;
        check(build->getOutputDataTypes(&outType, 1, inTypes, 5) != 0, "getOutputDataTypes rejects fp32 loc + fp16 "
                                                                       "weights");
    }

    ExprPool pool;
    ExprBuilder eb(pool);
    auto sym = [&](char const* name) { return pool.make(false, 0, name); };
    auto cst = [&](int64_t v) { return pool.make(true, v, std::to_string(v)); };
    IDimensionExpr const* N = sym("N");
    IDimensionExpr const* S = sym("S");
    IDimensionExpr const* Lq = sym("Lq");
    DimsExprs inExprs[5];
    inExprs[0].nbDims = 4;
    inExprs[0].d[0] = N;
    inExprs[0].d[1] = S;
    inExprs[0].d[2] = cst(8);
    inExprs[0].d[3] = cst(32);
    inExprs[1].nbDims = 2;
    inExprs[1].d[0] = cst(3);
    inExprs[1].d[1] = cst(2);
    inExprs[2].nbDims = 1;
    inExprs[2].d[0] = cst(3);
    inExprs[3].nbDims = 6;
    IDimensionExpr const* locDims[6] = {N, Lq, cst(8), cst(3), cst(4), cst(2)};
    for (int i = 0; i < 6; ++i)
    {
        inExprs[3].d[i] = locDims[i];
    }
    inExprs[4].nbDims = 5;
    for (int i = 0; i < 5; ++i)
    {
        inExprs[4].d[i] = locDims[i];
    }
    DimsExprs outExprs[1];
    int32_t const shapeRc = build->getOutputShapes(inExprs, 5, nullptr, 0, outExprs, 1, eb);
    ExprImpl const* md = shapeRc == 0 ? pool.lookup(outExprs[0].d[2]) : nullptr;
    check(shapeRc == 0 && outExprs[0].nbDims == 3 && outExprs[0].d[0] == N && outExprs[0].d[1] == Lq && md != nullptr
            && md->constant && md->value == 256,
        "getOutputShapes gives [N, Lq, M*D] = [N, Lq, 256]");
    inExprs[0].d[2] = sym("M");
    check(build->getOutputShapes(inExprs, 5, nullptr, 0, outExprs, 1, eb) == 0
            && pool.lookup(outExprs[0].d[2]) != nullptr && pool.lookup(outExprs[0].d[2])->repr == "(M*32)",
        "getOutputShapes with symbolic M gives M*D");
    check(build->getOutputShapes(inExprs, 4, nullptr, 0, outExprs, 1, eb) != 0, "getOutputShapes rejects 4 inputs");

    // supportsFormatCombination, queried in TensorRT's order (pos decides with inOut[0..pos] only)
    auto combo = [&](DataType v, DataType s, DataType l, DataType loc, DataType a, DataType o,
                     TensorFormat fmt = TensorFormat::kLINEAR) {
        std::vector<DynamicPluginTensorDesc> io = {makeDynDesc({1, 10, 8, 32}, v, fmt), makeDynDesc({1, 2}, s),
            makeDynDesc({1}, l), makeDynDesc({1, 5, 8, 1, 4, 2}, loc), makeDynDesc({1, 5, 8, 1, 4}, a),
            makeDynDesc({1, 5, 256}, o)};
        for (int32_t pos = 0; pos < 6; ++pos)
        {
            if (!build->supportsFormatCombination(pos, io.data(), 5, 1))
            {
                return false;
            }
        }
        return true;
    };
    DataType const F = DataType::kFLOAT, H = DataType::kHALF, I = DataType::kINT32;
    check(combo(F, I, I, F, F, F), "supports all-fp32 + int32 shapes");
    check(combo(H, I, I, H, H, H), "supports all-fp16 + int32 shapes");
    check(!combo(F, I, I, H, F, F), "rejects fp32 value with fp16 locations");
    check(combo(H, I, I, F, F, H), "supports fp16 value/output with fp32 locations and weights");
    check(!combo(H, I, I, F, H, H), "rejects weights typed unlike the locations");
    check(!combo(H, I, I, F, F, F), "rejects an fp32 output with an fp16 value");
    check(!combo(H, I, I, H, H, F), "rejects fp16 in / fp32 out");
    check(!combo(F, F, I, F, F, F), "rejects float spatial_shapes");
    check(!combo(F, I, DataType::kINT64, F, F, F), "rejects int64 level_start_index");
    check(!combo(I, I, I, I, I, I), "rejects int32 value");
    check(!combo(F, I, I, F, F, F, TensorFormat::kCHW32), "rejects non-linear format");

    // configurePlugin with build-time wildcards
    {
        std::vector<DynamicPluginTensorDesc> in = {makeDynDesc({-1, -1, 8, 32}, F), makeDynDesc({3, 2}, I),
            makeDynDesc({3}, I), makeDynDesc({-1, -1, 8, 3, 4, 2}, F), makeDynDesc({-1, -1, 8, 3, 4}, F)};
        std::vector<DynamicPluginTensorDesc> out = {makeDynDesc({-1, -1, 256}, F)};
        check(build->configurePlugin(in.data(), 5, out.data(), 1) == 0, "configurePlugin with -1 dims");
        in[3] = makeDynDesc({-1, -1, 4, 3, 4, 2}, F);
        check(build->configurePlugin(in.data(), 5, out.data(), 1) != 0, "configurePlugin rejects M mismatch");
        check(build->getWorkspaceSize(in.data(), 5, out.data(), 1) == 0, "no workspace");
    }

    // runtime interface
    Problem const pr{2, 8, 32, 37, 4, {6, 9, 3, 5, 2, 2}};
    {
        std::vector<PluginTensorDesc> in = pr.inputDescs(F);
        PluginTensorDesc out = pr.outputDesc(F);
        check(runtime->onShapeChange(in.data(), 5, &out, 1) == 0, "onShapeChange with consistent shapes");
        PluginTensorDesc badOut = makeDesc({2, 37, 255}, F);
        check(runtime->onShapeChange(in.data(), 5, &badOut, 1) != 0, "onShapeChange rejects a wrong output shape");
    }
    PluginFieldCollection const* ser = runtime->getFieldsToSerialize();
    check(ser != nullptr && ser->nbFields == 0, "nothing to serialize");
    std::unique_ptr<IPluginV3> cloned(plugin->clone());
    check(cloned != nullptr
            && std::strcmp(static_cast<IPluginV3OneCore*>(cloned->getCapabilityInterface(PluginCapabilityType::kCORE))
                               ->getPluginNamespace(),
                   "zsdeploy")
                == 0,
        "clone keeps the namespace");
    std::unique_ptr<IPluginV3> attached(runtime->attachToContext(nullptr));
    check(attached != nullptr && attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME) != nullptr,
        "attachToContext returns a runtime-capable clone");

    // How a CUDA failure in enqueue is told: every branch of the decision, on any machine.
    {
        using zsd::plugin::CudaEnvironment;
        using zsd::plugin::describeEnqueueCudaError;
        CudaEnvironment const healthy{cudaSuccess, 1, 13000, 13000};
        CudaEnvironment const noDriver{cudaErrorInsufficientDriver, 0, 0, 13000};
        CudaEnvironment const oldDriver{cudaErrorInsufficientDriver, 0, 12040, 13000};
        CudaEnvironment const noDevice{cudaErrorNoDevice, 0, 13000, 13000};
        auto has = [](std::string const& text, char const* needle) { return text.find(needle) != std::string::npos; };
        std::string m = describeEnqueueCudaError(cudaErrorMemoryAllocation, true, healthy);
        check(has(m, "already pending") && has(m, "earlier layer") && has(m, "cudaErrorMemoryAllocation"),
            "an error pending on a working device is blamed on an earlier layer");
        m = describeEnqueueCudaError(cudaErrorInsufficientDriver, true, noDriver);
        check(has(m, "no NVIDIA driver is installed") && !has(m, "already pending") && has(m, "Fix:"),
            "no driver: named as such, with the fix, not as a pending error");
        m = describeEnqueueCudaError(cudaErrorInsufficientDriver, true, oldDriver);
        check(has(m, "supports CUDA 12.4, older than the CUDA runtime 13.0") && !has(m, "already pending"),
            "an old driver: both CUDA versions named");
        m = describeEnqueueCudaError(cudaErrorNoDevice, true, noDevice);
        check(has(m, "sees no GPU") && has(m, "CUDA_VISIBLE_DEVICES") && !has(m, "already pending"),
            "a driver without a device: CUDA_VISIBLE_DEVICES named");
        m = describeEnqueueCudaError(cudaErrorInvalidConfiguration, false, healthy);
        check(has(m, "CUDA kernel launch failed") && has(m, "cudaErrorInvalidConfiguration"),
            "a failed launch on a working device is the plugin's own error");
    }

    // enqueue
    zsd::plugin::CudaEnvironment const env = zsd::plugin::queryCudaEnvironment();
    std::string const noGpu = zsd::plugin::whyCudaCannotRun(env);
    std::vector<PluginTensorDesc> const inF = pr.inputDescs(F);
    PluginTensorDesc const outF = pr.outputDesc(F);
    std::vector<char> dummy(64); // never dereferenced: enqueue stops before any kernel runs
    void const* dummyInputs[5] = {dummy.data(), dummy.data(), dummy.data(), dummy.data(), dummy.data()};
    void* dummyOutputs[1] = {dummy.data()};
    if (!noGpu.empty())
    {
        std::printf("GPU: not available (driver CUDA %d, runtime CUDA %d, cudaGetDeviceCount: %s); checking that "
                    "enqueue fails cleanly and names the cause\n",
            env.driverVersion, env.runtimeVersion, cudaGetErrorName(env.deviceQuery));
        logger.messages.clear();
        check(runtime->enqueue(inF.data(), &outF, dummyInputs, dummyOutputs, nullptr, nullptr) != 0
                && logger.contains("CUDA cannot run kernels in this process") && logger.contains(noGpu.c_str())
                && !logger.contains("already pending"),
            "enqueue without a GPU returns an error and names the real cause (" + noGpu.substr(0, 40) + " ...)");
    }
    else
    {
        std::printf("GPU: %d device(s); running enqueue against the host kernel\n", env.deviceCount);
        // An error really left pending by someone else (a failed allocation is not sticky) is told apart.
        void* tooLarge = nullptr;
        cudaError_t const allocErr = cudaMalloc(&tooLarge, static_cast<size_t>(1) << 62);
        logger.messages.clear();
        check(allocErr != cudaSuccess
                && runtime->enqueue(inF.data(), &outF, dummyInputs, dummyOutputs, nullptr, nullptr) != 0
                && logger.contains("already pending") && logger.contains(cudaGetErrorName(allocErr)),
            "an error left pending by the application is named as such, not as the plugin's");
        (void) cudaGetLastError();
        std::mt19937 rng(1234);
        gpuCheck(runtime, pr, false, rng);
        gpuCheck(runtime, pr, true, rng);
        Problem const odd{1, 2, 6, 19, 3, {5, 7, 2, 3}};
        gpuCheck(runtime, odd, false, rng);
        gpuCheck(runtime, odd, true, rng);
        Problem const scalar{1, 3, 5, 11, 2, {4, 4}};
        gpuCheck(runtime, scalar, false, rng);
        gpuCheck(runtime, scalar, true, rng);
    }

    // Release plugin objects before the library that owns their code is unloaded.
    attached.reset();
    cloned.reset();
    routed.reset();
    runtimePlugin.reset();
    plugin.reset();
    std::printf("%d checks, %d failures\n", gChecks, gFailures);
    return gFailures == 0 ? 0 : 1;
}
