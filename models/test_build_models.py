"""Tests of the model tooling; they run where PyTorch and onnxruntime are installed
(`pip install -r models/requirements.txt && pytest models`). CI does not install PyTorch: the
committed models serve the Rust side, and tests/parity.rs checks them against fixtures made here."""

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_models  # noqa: E402


def test_manifests_describe_their_models(random_build):
    twins = {"int8": "int8-emulated", "int8-emulated": "int8", "fp32": None}
    for form, precision in (("fp32", "fp32"), ("int8", "int8"), ("int8-emulated", "fp32")):
        manifest = json.loads((random_build / f"random-resnet50-{form}.manifest.json").read_text())
        model = random_build / manifest["model_file"]
        assert manifest["format"] == "fashion-kiosk-model/1"
        assert manifest["precision"] == precision
        assert manifest["sha256"] == build_models.sha256(model)
        assert manifest["output"] == {"name": "embedding", "dim": 2048}
        assert manifest["input"]["width"] == manifest["input"]["height"] == 224
        assert "random weights" in manifest["provenance"]["weights"]
        if twins[form] is None:
            assert "twin" not in manifest
        else:
            twin = random_build / f"random-resnet50-{twins[form]}.onnx"
            assert manifest["twin"] == {"manifest": twin.with_suffix(".manifest.json").name,
                                        "sha256": build_models.sha256(twin)}


def test_the_emulated_twin_computes_the_int8_network_in_fp32(random_build):
    import numpy as np
    import onnx

    emulated = onnx.load(str(random_build / "random-resnet50-int8-emulated.onnx"))
    ops = {n.op_type for n in emulated.graph.node}
    assert not ops & {"QLinearConv", "QuantizeLinear"}, ops
    # The only DequantizeLinear nodes left read stored int8 weights (folded by the loader).
    stored = {t.name: t for t in emulated.graph.initializer}
    for node in emulated.graph.node:
        if node.op_type == "DequantizeLinear":
            assert stored[node.input[0]].data_type == onnx.TensorProto.INT8

    images = build_models.calibration_images(build_models.DEFAULT_IMAGES, build_models.DEFAULT_LABELS, 4)
    outputs = {}
    for form in ("fp32", "int8", "int8-emulated"):
        session = onnxruntime.InferenceSession(str(random_build / f"random-resnet50-{form}.onnx"),
                                               providers=["CPUExecutionProvider"])
        outputs[form] = [session.run(None, {"image": build_models.preprocess(p)})[0].reshape(-1) for p in images]
    cosine = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))  # noqa: E731
    for i in range(len(images)):
        twin_vs_int8 = cosine(outputs["int8-emulated"][i], outputs["int8"][i])
        fp32_vs_int8 = cosine(outputs["fp32"][i], outputs["int8"][i])
        # Far closer to the int8 network than the network before quantisation is (~10x with random
        # weights, ~80x with the fashion weights).
        assert twin_vs_int8 > 0.9999, twin_vs_int8
        assert 1 - twin_vs_int8 < (1 - fp32_vs_int8) / 5, (twin_vs_int8, fp32_vs_int8)


def test_int8_model_uses_integer_convolutions_and_tracks_fp32(random_build):
    import numpy as np
    import onnx

    int8 = onnx.load(str(random_build / "random-resnet50-int8.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
    assert all(n.domain in ("", "ai.onnx") for n in int8.graph.node), "tract cannot run com.microsoft ops"

    images = build_models.calibration_images(build_models.DEFAULT_IMAGES, build_models.DEFAULT_LABELS, 4)
    x = build_models.preprocess(images[0])
    outputs = {}
    for precision in ("fp32", "int8"):
        session = onnxruntime.InferenceSession(str(random_build / f"random-resnet50-{precision}.onnx"),
                                               providers=["CPUExecutionProvider"])
        outputs[precision] = session.run(None, {"image": x})[0].reshape(-1)
    a, b = outputs["fp32"], outputs["int8"]
    assert a.shape == (2048,)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert cosine > 0.9, cosine


def test_fp16_weight_storage_halves_the_file_and_keeps_the_output(tmp_path):
    import numpy as np

    net = build_models.load_backbone("random", build_models.DEFAULT_CHECKPOINT)
    full, half = tmp_path / "full.onnx", tmp_path / "half.onnx"
    build_models.export_fp32(net, full)
    build_models.store_weights_as_fp16(full, half)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    run = lambda p: onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    a, b = run(full).reshape(-1), run(half).reshape(-1)
    assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.999


def test_preprocess_takes_the_centred_square(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (300, 100), (0, 0, 0))
    img.paste((255, 255, 255), (100, 0, 200, 100))
    img.save(tmp_path / "wide.png")
    x = build_models.preprocess(tmp_path / "wide.png")
    assert x.shape == (1, 3, 224, 224)
    white = (1.0 - 0.485) / 0.229
    assert abs(float(x[0, 0].mean()) - white) < 1e-3
