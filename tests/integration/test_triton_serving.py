"""export-triton + a real Triton server: the tritonserver binary of the nvidia-pytriton wheel (Triton 2.51, Python
backend only) serves the repository of a small PADing export on 127.0.0.1; requests go over HTTP and gRPC through
tritonclient and must equal trt-infer's results on the same images.

Skipped, with the reason, when the `serve` extra (tritonclient) or the server wheel is not installed."""
from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

INSTALL = ('install the `serve` extra and the server binary: pip install -e ".[serve]" && '
           "pip install --no-deps nvidia-pytriton")
httpclient = pytest.importorskip("tritonclient.http", reason=f"tritonclient is not installed; {INSTALL}")
grpcclient = pytest.importorskip("tritonclient.grpc", reason=f"tritonclient[grpc] is not installed; {INSTALL}")
from tritonclient.utils import InferenceServerException  # noqa: E402

from zsdeploy.runtime.errors import ZsdError  # noqa: E402
from zsdeploy.runtime.serving import local_server  # noqa: E402

try:
    local_server.find_wheel_server()
except ZsdError as e:
    pytest.skip(f"no tritonserver binary ({e.problem}); {INSTALL}", allow_module_level=True)

# The trt-infer reference and the served pre/post-processing run different numpy builds (the Python backend stub
# needs numpy<2, see local_server.ensure_stub_env); scores must still agree to the README's 1e-5.
SCORE_TOL = 1e-5
SIZES = [(128, 160), (100, 150), (240, 200), (90, 300)]  # exact canvas, smaller, larger (fitted), elongated
CLIENTS, REQUESTS_PER_CLIENT = 4, 5  # 8 x 20 takes minutes on the shared 2-core CI machine (~0.8 s per request)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    mod = {"export-model": "zsdeploy.cli.export_model", "trt-infer": "zsdeploy.cli.trt_infer",
           "export-triton": "zsdeploy.cli.export_triton"}[args[0]]
    return subprocess.run([sys.executable, "-m", mod, *args[1:]], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("triton")


@pytest.fixture(scope="module")
def export(diverse_export: Path) -> Path:
    """A static 128x160 PADing panoptic export whose stand-in weights give non-empty segments and instances: the
    session's `export-model --standin diverse` run (conftest.diverse_export)."""
    return diverse_export


@pytest.fixture(scope="module")
def images(work: Path) -> Path:
    """Synthetic scenes (flat background + rectangles) of several sizes, PNG and JPEG."""
    from PIL import Image

    d = work / "images"
    d.mkdir()
    rng = np.random.default_rng(12)
    for i, (h, w) in enumerate(SIZES):
        a = np.empty((h, w, 3), np.uint8)
        a[:] = rng.integers(0, 256, 3)
        for _ in range(8):
            y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            a[y:y + int(rng.integers(4, h // 2)), x:x + int(rng.integers(4, w // 2))] = rng.integers(0, 256, 3)
        Image.fromarray(a).save(d / f"scene{i}.{'png' if i % 2 == 0 else 'jpg'}", quality=95)
    return d


def reference(export: Path, images: Path, out: Path, task: str) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """trt-infer's id map and JSON per image name."""
    from zsdeploy.runtime.imageio import read_png, rgb_to_id

    r = run_cli("trt-infer", "--model", str(export), "--input", str(images), "--output", str(out), "--task", task,
                "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    refs = {}
    for p in sorted(images.iterdir()):
        doc = json.loads((out / f"{p.stem}.json").read_text())
        label = read_png(out / doc["label_png"])
        refs[p.name] = (rgb_to_id(label) if label.ndim == 3 else label.astype(np.int64), doc)
    return refs


@pytest.fixture(scope="module")
def expected(export: Path, images: Path, work: Path) -> dict[str, dict[str, tuple[np.ndarray, dict[str, Any]]]]:
    return {task: reference(export, images, work / f"ref_{task}", task) for task in ("panoptic", "instance")}


@pytest.fixture(scope="module")
def repos(export: Path, work: Path) -> dict[str, Path]:
    """CPU repositories served by the wheel's server (network in the Python backend), plus the native-backend
    repositories whose configs Triton parses without being able to run them (no TensorRT / ORT backend here)."""
    from zsdeploy.runtime.serving import RepositoryOptions, write_repository

    out = {"panoptic": work / "repo_panoptic"}
    r = run_cli("export-triton", "--model", str(export), "--output", str(out["panoptic"]), "--backend", "python",
                "--dynamic-batching", "--max-queue-delay-us", "500")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ensemble 'pading_panoptic'" in r.stdout
    # The rest through the Python API (the same code; saves a process start each on the shared CI machine).
    out["instance"] = write_repository(export, work / "repo_instance", RepositoryOptions(backend="python",
                                                                                         task="instance"))
    out["onnxruntime"] = write_repository(export, work / "repo_ort", RepositoryOptions(name="ort_check", threads=1,
                                                                                       instances=2))
    out["openvino"] = write_repository(export, work / "repo_ov", RepositoryOptions(name="ov_check", backend="openvino"))
    out["plan"] = write_repository(fake_plan(export, work), work / "repo_plan", RepositoryOptions(name="plan_check"))
    return out


def fake_plan(export: Path, work: Path) -> Path:
    """A .plan + sidecar as build-engine writes them, with the export's metadata. The engine bytes are not a real
    engine (no TensorRT here): only the repository written for it and its config are checked."""
    from zsdeploy.runtime.backends.onnxruntime_backend import read_onnx_metadata
    from zsdeploy.runtime.artifacts.sidecar import SIDECAR_FORMAT
    from zsdeploy.runtime.files import file_sha256

    plan = work / "pading.plan"
    plan.write_bytes(b"not a real TensorRT engine")
    side = {"format": SIDECAR_FORMAT, "builder": "zsdeploy-test", "built_at": "2025-01-01T00:00:00+00:00",
            "metadata": read_onnx_metadata(export),
            "onnx": {"path": str(export.resolve()), "sha256": file_sha256(export)}, "tensorrt_version": "10.13.0",
            "gpu_name": "NVIDIA H100", "compute_capability": "9.0", "precision": "fp16",
            "network": "weakly_typed", "graph_precision": "fp32", "workspace_mb": 4096,
            "profiles": [{"images": {"min": [1, 3, 128, 160], "opt": [1, 3, 128, 160], "max": [1, 3, 128, 160]}}],
            "plugins": [], "plugin_library": None, "calibration_cache": None}
    plan.with_name(plan.name + ".json").write_text(json.dumps(side))
    return plan


@pytest.fixture(scope="module")
def served(repos: dict[str, Path], work: Path):
    """One tritonserver on 127.0.0.1 (free ports), explicit model control: the two served ensembles are loaded at
    start, the native-backend repositories are loaded one by one by the test that checks their configs."""
    try:
        local_server.ensure_stub_env()
    except ZsdError as e:  # made once per machine with pip (numpy<2 for the Python backend stub)
        pytest.skip(f"no numpy<2 environment for Triton's Python backend stub: {e.problem}")
    server = local_server.LocalTritonServer(
        repos["panoptic"], work / "server",
        extra_args=[f"--model-repository={repos[k]}" for k in ("instance", "onnxruntime", "openvino", "plan")]
        + ["--model-control-mode=explicit", "--load-model=pading_panoptic", "--load-model=pading_instance"])
    try:
        server.start(timeout_s=180)
    except ZsdError as e:
        pytest.fail(f"tritonserver did not start: {e}")
    yield server
    server.stop()


def shows_server_log(test: Callable[..., None]) -> Callable[..., None]:
    """On failure, print the server log's tail (pytest shows it under 'Captured stdout call')."""
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            test(*args, **kwargs)
        except BaseException:
            for server in (v for v in kwargs.values() if isinstance(v, local_server.LocalTritonServer)):
                print(f"---------------- tritonserver log (tail) of {server.repository.name} ----------------")
                print(server.log()[-6000:])
            raise
    return wrapper


# ------------------------------------------------------------------------------------------------- helpers


def image_input(module: Any, blobs: list[bytes]) -> Any:
    inp = module.InferInput("IMAGE", [len(blobs), 1], "BYTES")
    inp.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
    return inp


def infer(client: Any, module: Any, model: str, blob: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    r = client.infer(model, [image_input(module, [blob])])
    id_map, segments = r.as_numpy("id_map"), r.as_numpy("segments")
    assert id_map.dtype == np.int32 and id_map.ndim == 3 and segments.shape == (1, 1)
    return id_map[0], json.loads(segments[0, 0])


def assert_same(got: tuple[np.ndarray, dict[str, Any]], want: tuple[np.ndarray, dict[str, Any]], task: str) -> None:
    (gmap, gdoc), (wmap, wdoc) = got, want
    assert gmap.shape == wmap.shape, (gmap.shape, wmap.shape)
    np.testing.assert_array_equal(gmap, wmap)
    assert (gdoc["height"], gdoc["width"]) == (wdoc["height"], wdoc["width"])
    key = "segments_info" if task == "panoptic" else "instances"
    g, w = gdoc[key], wdoc[key]
    assert len(g) == len(w) > 0
    for a, b in zip(g, w):
        assert {k: v for k, v in a.items() if k != "score" and "bbox_xyxy" not in k} == \
               {k: v for k, v in b.items() if k != "score" and "bbox_xyxy" not in k}
        if "score" in b:
            assert abs(a["score"] - b["score"]) <= SCORE_TOL
        if "bbox_xyxy" in b:
            np.testing.assert_allclose(a["bbox_xyxy"], b["bbox_xyxy"], atol=1e-3)


# ------------------------------------------------------------------------------------ repository (no server)


def test_repository_configs_parse_with_tritons_schema(repos: dict[str, Path]) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    for kind, repo in repos.items():
        marker = json.loads((repo / ".zsdeploy-triton.json").read_text())
        configs = {}
        for f in sorted(repo.glob("*/config.pbtxt")):
            configs[f.parent.name] = text_format.Parse(f.read_text(), mc.ModelConfig())  # raises on any bad field
            assert configs[f.parent.name].name == f.parent.name
        ens = configs[marker["models"]["ensemble"]]
        net = configs[marker["models"]["network"]]
        assert set(configs) == set(marker["models"].values()), kind
        assert ens.platform == "ensemble" and [s.model_name for s in ens.ensemble_scheduling.step] == \
            [marker["models"][k] for k in ("preprocess", "network", "postprocess")]
        # A static batch-1 128x160 export: batch and dims follow it.
        assert {c.max_batch_size for c in configs.values()} == {1}
        assert list(net.input[0].dims) == [3, 128, 160]
        assert [list(o.dims) for o in net.output] == [[100, 134], [100, 32, 40]]
        expect = {"panoptic": ("python", ""), "instance": ("python", ""), "onnxruntime": ("onnxruntime", ""),
                  "openvino": ("openvino", ""), "plan": ("", "tensorrt_plan")}[kind]
        assert (net.backend, net.platform) == expect
    assert set(repos) == {"panoptic", "instance", "onnxruntime", "openvino", "plan"}
    pan = text_format.Parse((repos["panoptic"] / "pading_panoptic_network" / "config.pbtxt").read_text(),
                            mc.ModelConfig())
    assert pan.HasField("dynamic_batching") and pan.dynamic_batching.max_queue_delay_microseconds == 500
    inst = text_format.Parse((repos["onnxruntime"] / "ort_check_preprocess" / "config.pbtxt").read_text(),
                             mc.ModelConfig())
    assert inst.instance_group[0].count == 2 and inst.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    plan = text_format.Parse((repos["plan"] / "plan_check_network" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert plan.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert (repos["plan"] / "plan_check_network" / "1" / "model.plan.json").is_file()


def test_rewrite_replaces_repository_as_a_whole(export: Path, work: Path, monkeypatch) -> None:
    from zsdeploy.runtime.serving import repository
    from zsdeploy.runtime.serving.repository import RepositoryOptions, write_repository

    repo = work / "rewrite"
    write_repository(export, repo, RepositoryOptions(backend="python", name="old_name"))
    (repo / "old_name_network" / "1" / "stale.txt").write_text("from the old repository")
    write_repository(export, repo, RepositoryOptions(backend="python", task="semantic"))
    assert sorted(p.name for p in repo.iterdir()) == [".zsdeploy-triton.json", "pading_semantic",
                                                      "pading_semantic_network", "pading_semantic_postprocess",
                                                      "pading_semantic_preprocess"]
    assert not list(work.glob(".rewrite.*")), "temporary directories were left behind"

    # A write that fails halfway leaves the previous repository untouched and no temporary directory.
    def broken_copy(*a: Any, **k: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(repository.shutil, "copyfile", broken_copy)
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    with pytest.raises(OSError):
        write_repository(export, repo, RepositoryOptions(backend="python", name="other"))
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before
    assert not list(work.glob(".rewrite.*"))


def test_rewrite_keeps_model_folders_the_user_added(export: Path, work: Path) -> None:
    """Was: re-running export-triton into its repository silently deleted a model folder the user had added there."""
    repo = work / "shared_repo"
    r = run_cli("export-triton", "--model", str(export), "--output", str(repo), "--backend", "python")
    assert r.returncode == 0, r.stderr[-2000:]
    mine = repo / "my_detector"
    (mine / "1").mkdir(parents=True)
    (mine / "config.pbtxt").write_text('name: "my_detector"\n')
    (mine / "1" / "model.onnx").write_bytes(b"weights of another model")
    r = run_cli("export-triton", "--model", str(export), "--output", str(repo), "--backend", "python", "--task",
                "semantic")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Kept what export-triton did not write there: my_detector." in r.stdout
    assert (mine / "config.pbtxt").read_text() == 'name: "my_detector"\n'
    assert (mine / "1" / "model.onnx").read_bytes() == b"weights of another model"
    assert sorted(p.name for p in repo.iterdir()) == [".zsdeploy-triton.json", "my_detector", "pading_semantic",
                                                      "pading_semantic_network", "pading_semantic_postprocess",
                                                      "pading_semantic_preprocess"]
    # the user's folder named like a model of the new repository: refused, nothing replaced
    clash = repo / "pading_instance"
    clash.mkdir()
    (clash / "notes.txt").write_text("mine")
    r = run_cli("export-triton", "--model", str(export), "--output", str(repo), "--backend", "python", "--task",
                "instance")
    assert r.returncode == 2 and "which export-triton did not write there" in r.stderr and "--name" in r.stderr
    assert (clash / "notes.txt").read_text() == "mine" and (repo / "pading_semantic").is_dir()


def test_cli_refuses_bad_requests_with_one_paragraph(export: Path, work: Path) -> None:
    foreign = work / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    bundle_like = work / "some_dir_model"
    bundle_like.mkdir(exist_ok=True)
    cases = [
        (["--model", str(export), "--output", str(foreign)], "not a repository written by export-triton"),
        (["--model", str(export), "--output", str(work / "r1"), "--backend", "tensorrt"], "needs a TensorRT engine"),
        (["--model", str(export), "--output", str(work / "r2"), "--max-batch", "4"], "static batch of 1"),
        (["--model", str(work / "missing.onnx"), "--output", str(work / "r3")], "does not exist"),
        (["--model", str(bundle_like), "--output", str(work / "r4")], "a directory without bundle.json"),
        (["--model", str(export), "--output", str(work / "r6"), "--max-classes", "5"], "only apply to ZegFormer"),
        (["--model", str(export), "--output", str(work / "r5"), "--instances", "0"], "--instances 0 must be >= 1"),
    ]
    for args, problem in cases:
        r = run_cli("export-triton", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("export-triton: error: ") and problem in r.stderr and " Fix: " in r.stderr
        assert "Traceback" not in r.stderr
    assert (foreign / "keep.txt").read_text() == "user data" and len(list(foreign.iterdir())) == 1
    assert not any((work / f"r{i}").exists() for i in range(1, 7))


# ------------------------------------------------------------------------------------------ against a server


@shows_server_log
def test_http_and_grpc_results_equal_trt_infer(served, images: Path, expected) -> None:
    http = httpclient.InferenceServerClient(served.http_url)
    grpc = grpcclient.InferenceServerClient(served.grpc_url)
    for task, clients in (("panoptic", ((http, httpclient), (grpc, grpcclient))), ("instance", ((http, httpclient),))):
        for p in sorted(images.iterdir()):
            blob = p.read_bytes()
            for client, module in clients:
                assert_same(infer(client, module, f"pading_{task}", blob), expected[task][p.name], task)
    http.close()
    grpc.close()


@shows_server_log
def test_concurrent_clients_all_get_correct_results(served, images: Path, expected) -> None:
    names = sorted(p.name for p in images.iterdir())
    blobs = {n: (images / n).read_bytes() for n in names}

    def client_run(k: int) -> int:
        module = httpclient if k % 2 == 0 else grpcclient
        client = module.InferenceServerClient(served.http_url if module is httpclient else served.grpc_url)
        for j in range(REQUESTS_PER_CLIENT):
            name = names[(k + j) % len(names)]
            assert_same(infer(client, module, "pading_panoptic", blobs[name]), expected["panoptic"][name],
                        "panoptic")
        client.close()
        return REQUESTS_PER_CLIENT

    with ThreadPoolExecutor(CLIENTS) as pool:
        assert sum(pool.map(client_run, range(CLIENTS))) == CLIENTS * REQUESTS_PER_CLIENT


@shows_server_log
def test_bad_input_gets_a_triton_error_and_the_server_keeps_serving(served, images: Path, expected) -> None:
    http = httpclient.InferenceServerClient(served.http_url)
    grpc = grpcclient.InferenceServerClient(served.grpc_url)
    good = sorted(images.iterdir())[0]
    text = good.read_bytes()

    def fp32(module: Any) -> Any:
        inp = module.InferInput("IMAGE", [1, 1], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 1), np.float32))
        return [inp]

    def wide(module: Any) -> Any:
        inp = module.InferInput("IMAGE", [1, 2], "BYTES")
        inp.set_data_from_numpy(np.array([[text, text]], dtype=np.object_))
        return [inp]

    cases: list[tuple[Callable[[Any], Any], str]] = [
        (fp32, "expects 'BYTES'"),  # wrong dtype: refused by Triton itself
        (wide, "shape"),  # wrong shape
        (lambda m: [image_input(m, [b"GIF89a but not really an image"])], "could not be read as an image"),
        (lambda m: [image_input(m, [text[: len(text) // 2]])], "image #0 of the request"),  # truncated
        (lambda m: [image_input(m, [b""])], "empty"),
        (lambda m: [image_input(m, [text, text])], "batch-size must be <= 1"),  # > max_batch_size
    ]
    for client, module in ((http, httpclient), (grpc, grpcclient)):
        for make, message in cases:
            with pytest.raises(InferenceServerException) as err:
                client.infer("pading_panoptic", make(module))
            assert message in str(err.value), str(err.value)
            if module is httpclient:  # ... and the next request is served correctly (gRPC: once, below)
                assert_same(infer(client, module, "pading_panoptic", text), expected["panoptic"][good.name],
                            "panoptic")
    assert_same(infer(grpc, grpcclient, "pading_panoptic", text), expected["panoptic"][good.name], "panoptic")
    assert http.is_server_live() and http.is_model_ready("pading_panoptic")
    http.close()
    grpc.close()


@shows_server_log
def test_native_backend_configs_pass_tritons_own_parsing(served) -> None:
    """The wheel's server has no TensorRT, ONNX Runtime or OpenVINO backend: loading those network models must fail
    on the missing backend library, i.e. only after Triton has parsed and accepted the config. Their Python pre/post
    steps load and become ready."""
    http = httpclient.InferenceServerClient(served.http_url)
    for name, backend in (("plan_check", "tensorrt"), ("ort_check", "onnxruntime"), ("ov_check", "openvino")):
        for step in ("preprocess", "postprocess") if name == "plan_check" else ():  # the ORT repo's are the same
            http.load_model(f"{name}_{step}")
            assert http.is_model_ready(f"{name}_{step}")
        with pytest.raises(InferenceServerException) as err:
            http.load_model(f"{name}_network")
        msg = str(err.value)
        assert f"libtriton_{backend}.so" in msg or f"backend '{backend}'" in msg, msg
        assert "pbtxt" not in msg and "parse" not in msg.lower(), msg
    for step in ("preprocess", "postprocess"):
        http.unload_model(f"plan_check_{step}")
    http.close()


def test_batch_and_dims_follow_the_exports_metadata(export: Path, work: Path) -> None:
    """Dynamic exports get variable H/W and --max-batch (default 8); a static batch > 1 only serves with zsdeploy's
    own backend (Triton's would get fewer images than the graph's fixed batch). Copies of the export with edited
    metadata stand in for those exports: the writer reads nothing else."""
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from zsdeploy.runtime.serving import RepositoryOptions, write_repository

    def variant(name: str, **meta: str) -> Path:
        proto = onnx.load(str(export))
        for p in proto.metadata_props:
            if p.key in meta:
                p.value = meta[p.key]
        path = work / f"{name}.onnx"
        onnx.save(proto, str(path))
        return path

    def network(repo: Path) -> Any:
        return text_format.Parse(next(repo.glob("*_network/config.pbtxt")).read_text(), mc.ModelConfig())

    dyn = variant("dynamic", dynamic="true")
    net = network(write_repository(dyn, work / "repo_dyn"))
    assert net.max_batch_size == 8 and list(net.input[0].dims) == [3, -1, -1]
    assert [list(o.dims) for o in net.output] == [[100, 134], [100, -1, -1]]
    assert network(write_repository(dyn, work / "repo_dyn", RepositoryOptions(max_batch=3))).max_batch_size == 3

    b2 = variant("static_b2", static_batch="2")
    with pytest.raises(ZsdError, match="static batch of 2"):
        write_repository(b2, work / "repo_b2")
    assert not (work / "repo_b2").exists()
    assert network(write_repository(b2, work / "repo_b2", RepositoryOptions(backend="python"))).max_batch_size == 2


# ------------------------------------------------------------------------------- ZegFormer: vocabulary per request
# The session's ZegFormer bundle (conftest.zegformer_bundle: gzss config, static 256x320, stand-in weights). Without
# CLIP's BPE file the bundle stores no default embeddings and no name can be embedded: skipped, as the other
# ZegFormer tests that need it.
from helpers import BPE, needs_bpe  # noqa: E402

ZEG_MODEL = "zegformer_semantic"
ZEG_CLASSES = ["corgi", "fire truck", "sky", "café table", "grass"]  # unseen and seen (COCO-Stuff) names


@pytest.fixture(scope="module")
def zeg_images(images: Path, work: Path) -> Path:
    """Two of the scenes (a PNG and an elongated JPEG, neither at the bundle's 256x320 canvas): ZegFormer's R101 is
    slow on the shared CI machine."""
    d = work / "zeg_images"
    d.mkdir()
    for p in sorted(images.iterdir())[2:]:
        shutil.copyfile(p, d / p.name)
    return d


@pytest.fixture(scope="module")
def zeg_repo(zegformer_bundle, work: Path) -> Path:
    if BPE is None:
        pytest.skip("CLIP's BPE file is needed to embed a vocabulary (see test_tokenizer.BPE)")
    out = work / "repo_zegformer"
    r = run_cli("export-triton", "--model", str(zegformer_bundle[0]), "--output", str(out), "--clip-bpe", str(BPE),
                "--vocab-cache", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"model '{ZEG_MODEL}'" in r.stdout and "CLASSES (optional" in r.stdout
    return out


@pytest.fixture(scope="module")
def zeg_served(zeg_repo: Path, work: Path):
    """One tritonserver for the ZegFormer repository (started once for all ZegFormer tests)."""
    try:
        local_server.ensure_stub_env()
    except ZsdError as e:
        pytest.skip(f"no numpy<2 environment for Triton's Python backend stub: {e.problem}")
    server = local_server.LocalTritonServer(zeg_repo, work / "zeg_server")
    try:
        server.start(timeout_s=300)
    except ZsdError as e:
        pytest.fail(f"tritonserver did not start: {e}")
    yield server
    server.stop()


def zeg_reference(bundle: Path, images: Path, out: Path, classes: list[str] | None,
                  ) -> dict[str, tuple[np.ndarray, dict[str, Any], np.ndarray]]:
    """trt-infer's label map, JSON and per-pixel winning score, per image name. The score comes from trt-infer's
    own raw outputs (--save-raw) through the bundle's post-processing (trt-infer writes no score map)."""
    from zsdeploy.runtime.imageio import read_png
    from zsdeploy.runtime.preprocess import Batch
    from zsdeploy.runtime.zegformer import open_zegformer

    vocab = ("--classes", ",".join(classes), "--clip-bpe", str(BPE)) if classes else ()
    r = run_cli("trt-infer", "--model", str(bundle), "--input", str(images), "--output", str(out), "--quiet",
                "--no-cache", "--save-raw", *vocab)
    assert r.returncode == 0, r.stderr[-3000:]
    seg = open_zegformer(bundle, classes=",".join(classes) if classes else None, bpe_path=BPE, use_cache=False,
                         say=lambda _m: None)
    refs = {}
    for p in sorted(images.iterdir()):
        doc = json.loads((out / f"{p.stem}.json").read_text())
        raw = np.load(out / f"{p.stem}_raw.npz")
        batch = Batch(np.empty((0,), np.float32), [tuple(raw["image_hw"])], [tuple(raw["output_hw"])],
                      tuple(raw["padded_hw"]))
        sem = seg.postprocess(raw["class_logits"][None], raw["mask_logits"][None], batch, 0,
                              extra={"clip_logits": raw["clip_logits"][None]})["sem_seg"]
        refs[p.name] = (read_png(out / doc["label_png"]).astype(np.int64), doc, sem.max(axis=0))
    seg.bundle.close()
    return refs


@pytest.fixture(scope="module")
def zeg_expected(zegformer_bundle, zeg_images: Path, work: Path) -> dict[str, dict[str, Any]]:
    if BPE is None:
        pytest.skip("CLIP's BPE file is needed to embed a vocabulary (see test_tokenizer.BPE)")
    bundle = zegformer_bundle[0]
    return {"default": zeg_reference(bundle, zeg_images, work / "zeg_ref_default", None),
            "request": zeg_reference(bundle, zeg_images, work / "zeg_ref_request", ZEG_CLASSES)}


def zeg_infer(client: Any, module: Any, blob: bytes, classes: str | None,
              ) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    inputs = [image_input(module, [blob])]
    if classes is not None:
        c = module.InferInput("CLASSES", [1], "BYTES")
        c.set_data_from_numpy(np.array([classes.encode()], dtype=np.object_))
        inputs.append(c)
    r = client.infer(ZEG_MODEL, inputs)
    id_map, scores, segments = r.as_numpy("id_map"), r.as_numpy("scores"), r.as_numpy("segments")
    assert id_map.dtype == np.int32 and scores.dtype == np.float32 and segments.shape == (1, 1)
    return id_map[0], json.loads(segments[0, 0]), scores[0]


def assert_same_semantic(got: tuple[np.ndarray, dict[str, Any], np.ndarray],
                         want: tuple[np.ndarray, dict[str, Any], np.ndarray]) -> None:
    (gmap, gdoc, gscore), (wmap, wdoc, wscore) = got, want
    assert gmap.shape == wmap.shape == gscore.shape == wscore.shape, (gmap.shape, wmap.shape)
    np.testing.assert_array_equal(gmap, wmap)
    np.testing.assert_allclose(gscore, wscore, rtol=0, atol=SCORE_TOL)
    assert gdoc["classes"] and gdoc["classes"] == wdoc["classes"]  # ids, names, pixel counts, unseen flags
    for k in ("task", "height", "width", "model"):
        assert gdoc[k] == wdoc[k], k
    assert {k: v for k, v in gdoc["vocabulary"].items() if k != "source"} == \
           {k: v for k, v in wdoc["vocabulary"].items() if k != "source"}


@needs_bpe
def test_zegformer_repository_is_self_contained_and_parses(zeg_repo: Path, zegformer_bundle) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse((zeg_repo / ZEG_MODEL / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.backend == "python" and config.max_batch_size == 0
    inputs = {i.name: i for i in config.input}
    assert list(inputs["IMAGE"].dims) == [-1, 1] and not inputs["IMAGE"].optional
    assert list(inputs["CLASSES"].dims) == [1] and inputs["CLASSES"].optional
    assert [o.name for o in config.output] == ["id_map", "scores", "segments"]
    version = zeg_repo / ZEG_MODEL / "1"
    copied = {p.name for p in (version / "bundle").iterdir()}
    src = zegformer_bundle[0]
    assert copied == {p.name for p in src.iterdir() if p.is_file()}  # graphs, bundle.json, stored embeddings
    for p in (version / "bundle").iterdir():
        assert p.is_file() and not p.is_symlink() and p.read_bytes() == (src / p.name).read_bytes()
    assert (version / BPE.name).read_bytes() == BPE.read_bytes()


@needs_bpe
@shows_server_log
def test_zegformer_default_and_request_vocabulary_equal_trt_infer(zeg_served, zeg_images: Path,
                                                                  zeg_expected) -> None:
    http = httpclient.InferenceServerClient(zeg_served.http_url)
    grpc = grpcclient.InferenceServerClient(zeg_served.grpc_url)
    classes = ", ".join(ZEG_CLASSES)  # spaces around commas are trimmed, as trt-infer's --classes
    for p in sorted(zeg_images.iterdir()):
        blob = p.read_bytes()
        assert_same_semantic(zeg_infer(http, httpclient, blob, None), zeg_expected["default"][p.name])
        got = zeg_infer(grpc, grpcclient, blob, classes)
        assert_same_semantic(got, zeg_expected["request"][p.name])
        assert got[1]["vocabulary"]["source"] == "CLASSES" and int(got[0].max()) < len(ZEG_CLASSES)
    # The request vocabulary was embedded once (segmenter prompts + CLIP crop prompts) and then served from the
    # server's cache for the second image.
    assert zeg_served.log().count(f"embedding {len(ZEG_CLASSES)} class name(s)") == 2, zeg_served.log()[-3000:]
    http.close()
    grpc.close()


@needs_bpe
@shows_server_log
def test_zegformer_bad_vocabulary_gets_a_triton_error_and_the_server_keeps_serving(zeg_served, zeg_images: Path,
                                                                                   zeg_expected) -> None:
    http = httpclient.InferenceServerClient(zeg_served.http_url)
    good = sorted(zeg_images.iterdir())[0]
    blob = good.read_bytes()
    cases = [("", "vocabulary (CLASSES) is empty"), (" , ,", "vocabulary (CLASSES) is empty"),
             ("cat,,dog", "empty name at position(s) [2]"), ("cat,Cat", "duplicate class name(s)")]
    for classes, message in cases:
        with pytest.raises(InferenceServerException) as err:
            zeg_infer(http, httpclient, blob, classes)
        assert message in str(err.value) and "Fix:" in str(err.value), str(err.value)
    c = httpclient.InferInput("CLASSES", [1], "BYTES")
    c.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="not UTF-8"):
        http.infer(ZEG_MODEL, [image_input(httpclient, [blob]), c])
    with pytest.raises(InferenceServerException, match="could not be read as an image"):
        zeg_infer(http, httpclient, b"not an image", "cat")
    assert_same_semantic(zeg_infer(http, httpclient, blob, None), zeg_expected["default"][good.name])
    assert http.is_server_live() and http.is_model_ready(ZEG_MODEL)
    http.close()


# ------------------------------------------------------------------------------------------ zsd-bench serve


@shows_server_log
def test_zsd_bench_serve_writes_a_well_formed_report(served, repos: dict[str, Path], images: Path,
                                                     work: Path) -> None:
    """`zsd-bench serve` end to end with tiny numbers against the running server (not a timed test)."""
    out = work / "bench_serve"
    r = subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.cli", "serve", "--repository",
                        str(repos["panoptic"]), "--url", served.grpc_url, "--protocol", "grpc", "--clients", "2",
                        "--requests", "3", "--warmup", "1", "--in-process-requests", "2", "--threads", "1",
                        "--images", str(images), "--note", "test run", "--output", str(out)],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "zsd-bench-serve/1" and report["config"]["model"] == "pading_panoptic"
    assert report["machine"]["note"] == "test run" and report["machine"]["cpus"] >= 1
    served_r, local = report["served"], report["in_process"]
    assert (served_r["requests"], served_r["errors"], local["requests"]) == (6, 0, 2)
    for run in (served_r, local):
        lat = run["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert run["requests_per_s"] > 0 and run["images_per_s"] == run["requests_per_s"]
    assert report["results_equal"] is True  # the served label maps are the in-process ones
    md = (out / "report.md").read_text()
    assert "| Triton, 2 concurrent clients | 6 | 0 |" in md and "one in-process Pipeline, sequential | 2 |" in md
    bad = subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.cli", "serve", "--repository", str(images),
                          "--output", str(work / "bench_bad")], capture_output=True, text=True, env=ENV, timeout=120)
    assert bad.returncode == 2 and "not a model repository written by export-triton" in bad.stderr
    # a --url where nothing listens: the user's setting (exit 2, one paragraph), nothing written (was: exit 70, a
    # client traceback and the generated scenes left in --output)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: connections are refused
        for protocol in ("http", "grpc"):
            r = subprocess.run([sys.executable, "-m", "zsdeploy.benchmarks.cli", "serve", "--repository",
                                str(repos["panoptic"]), "--url", dead, "--protocol", protocol, "--output",
                                str(work / f"bench_dead_{protocol}")], capture_output=True, text=True, env=ENV,
                               timeout=120)
            assert r.returncode == 2 and f"no Triton server answers at --url {dead}" in r.stderr, r.stderr[-2000:]
            assert "Traceback" not in r.stderr and not (work / f"bench_dead_{protocol}").exists()
