#!/usr/bin/env python3
"""Build fashion-kiosk's embedding models: export ResNet50 to ONNX, quantise it to int8, write manifests.

The Rust service never needs Python: the models this script writes are committed under models/.
Run it to rebuild them, to try another quantisation form, or to build the ImageNet variant where
torchvision's weights can be downloaded.

    python models/build_models.py build                       # shared fashion backbone -> models/
    python models/build_models.py build --weights imagenet    # torchvision ImageNet weights
    python models/build_models.py build --weights random      # random weights (tests of this tool)
    python models/build_models.py variants --out /tmp/variants  # every int8 form tried, for benchmarking
    python models/build_models.py twin                        # int8 model's emulated fp32 twin (after `build` too)
    python models/build_models.py fixtures                    # onnxruntime reference embeddings for tests
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
DEFAULT_CHECKPOINT = SHARED / "models" / "fashion-resnet50.fp16.pt"
DEFAULT_IMAGES = SHARED / "fashion" / "images"
DEFAULT_LABELS = SHARED / "fashion" / "labels.csv"

INPUT_SIZE = 224
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
EMBEDDING_DIM = 2048
OPSET = 17


# ---------------------------------------------------------------------------------------------
# Preprocessing: the reference the Rust side must match (see the manifest written below).


def preprocess(path: Path) -> np.ndarray:
    """Decode, apply EXIF orientation, take the centred square, resize, normalise: 1x3xHxW f32."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if img.size != (INPUT_SIZE, INPUT_SIZE):
            img = img.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return x.transpose(2, 0, 1)[None].copy()


def catalogue_ids(labels: Path) -> list[str]:
    with open(labels, newline="") as f:
        return [row["id"] for row in csv.DictReader(f)]


def is_validation(item_id: str) -> bool:
    """The backbone's validation split: ids whose CRC32 mod 10 == 0 (never used for calibration)."""
    return zlib.crc32(item_id.encode()) % 10 == 0


def calibration_images(images: Path, labels: Path, count: int) -> list[Path]:
    """A deterministic spread of training-split images for static int8 calibration."""
    ids = sorted((i for i in catalogue_ids(labels) if not is_validation(i)), key=int)
    step = max(1, len(ids) // count)
    return [images / f"{i}.jpg" for i in ids[::step][:count]]


# ---------------------------------------------------------------------------------------------
# Export


def load_backbone(weights: str, checkpoint: Path):
    import torch
    import torchvision

    if weights == "imagenet":
        net = torchvision.models.resnet50(weights=torchvision.models.ResNet50_Weights.IMAGENET1K_V2)
    else:
        net = torchvision.models.resnet50(weights=None)
    net.fc = torch.nn.Identity()
    if weights == "fashion":
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        backbone = {k.removeprefix("backbone."): v.float() for k, v in state.items() if k.startswith("backbone.")}
        missing, unexpected = net.load_state_dict(backbone, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            sys.exit(f"{checkpoint}: state dict does not fit ResNet50: missing {missing[:5]}, unexpected {unexpected[:5]}")
    elif weights == "random":
        torch.manual_seed(0)
    return net.eval()


def export_fp32(net, out: Path) -> None:
    """Export the 2048-d pooled embedding (no classifier) with BatchNorm folded into the convolutions."""
    import torch

    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        torch.onnx.export(
            net,
            dummy,
            str(out),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    if any(n.op_type == "BatchNormalization" for n in model.graph.node):
        sys.exit(f"{out}: BatchNormalization survived export; expected it folded into Conv")


def store_weights_as_fp16(src: Path, dst: Path) -> None:
    """Write `src` with every float weight stored as fp16 and cast back to fp32 on load: the network
    still computes in fp32 (runtimes fold the casts), the file is half the size. The checkpoint is
    fp16 already; only the BatchNorm-folded products lose the bits below fp16's precision."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    casts, initializers = [], []
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
            initializers.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
        else:
            initializers.append(init)
    nodes = casts + list(model.graph.node)
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


# ---------------------------------------------------------------------------------------------
# Quantisation


class CatalogueReader:
    """onnxruntime CalibrationDataReader over catalogue images."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)
        self.index = 0

    def get_next(self):
        if self.index >= len(self.paths):
            return None
        x = preprocess(self.paths[self.index])
        self.index += 1
        return {INPUT_NAME: x}

    def rewind(self):
        self.index = 0


# Every int8 form tried (models/README.md has the figures). Keys: quantize_static arguments.
VARIANTS = {
    "qdq-u8s8-pt": dict(quant_format="QDQ", activation_type="QUInt8", weight_type="QInt8", per_channel=False),
    "qop-conv-u8s8-pt": dict(quant_format="QOperator", activation_type="QUInt8", weight_type="QInt8",
                             per_channel=False, op_types_to_quantize=["Conv"]),
    "qop-conv-u8s8-pc": dict(quant_format="QOperator", activation_type="QUInt8", weight_type="QInt8",
                             per_channel=True, op_types_to_quantize=["Conv"]),
    "qop-conv-s8s8-pt": dict(quant_format="QOperator", activation_type="QInt8", weight_type="QInt8",
                             per_channel=False, op_types_to_quantize=["Conv"]),
    "qop-conv-s8s8-sym": dict(quant_format="QOperator", activation_type="QInt8", weight_type="QInt8",
                              per_channel=False, op_types_to_quantize=["Conv"],
                              extra_options={"ActivationSymmetric": True, "WeightSymmetric": True}),
    "qop-conv-s8s8-sym-pc": dict(quant_format="QOperator", activation_type="QInt8", weight_type="QInt8",
                                 per_channel=True, op_types_to_quantize=["Conv"],
                                 extra_options={"ActivationSymmetric": True, "WeightSymmetric": True}),
    "qop-convrelu-u8s8-pt": dict(quant_format="QOperator", activation_type="QUInt8", weight_type="QInt8",
                                 per_channel=False, op_types_to_quantize=["Conv", "Relu", "MaxPool"]),
    "qop-all-std-u8s8-pt": dict(quant_format="QOperator", activation_type="QUInt8", weight_type="QInt8",
                                per_channel=False, rewrite_ms_ops=True),
}
DEFAULT_VARIANT = "qop-conv-u8s8-pt"


def quantise(fp32: Path, out: Path, variant: str, calibration: list[Path]) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    spec = dict(VARIANTS[variant])
    rewrite = spec.pop("rewrite_ms_ops", False)
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
        quantize_static(
            str(prepped),
            str(out),
            CatalogueReader(calibration),
            quant_format=getattr(QuantFormat, spec.pop("quant_format")),
            activation_type=getattr(QuantType, spec.pop("activation_type")),
            weight_type=getattr(QuantType, spec.pop("weight_type")),
            calibrate_method=CalibrationMethod.MinMax,
            **spec,
        )
    if rewrite:
        rewrite_microsoft_ops(out)
    return {"variant": variant, **VARIANTS[variant], "calibration_images": len(calibration), "calibration": "MinMax"}


def rewrite_microsoft_ops(path: Path) -> None:
    """Replace com.microsoft QLinearAdd / QLinearGlobalAveragePool (which tract lacks) by standard
    DequantizeLinear -> Add / GlobalAveragePool -> QuantizeLinear, leaving every QLinearConv integer."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    nodes = []
    for node in model.graph.node:
        if node.domain == "com.microsoft" and node.op_type == "QLinearAdd":
            a, a_s, a_z, b, b_s, b_z, y_s, y_z = node.input
            nodes += [
                helper.make_node("DequantizeLinear", [a, a_s, a_z], [node.name + "_a"]),
                helper.make_node("DequantizeLinear", [b, b_s, b_z], [node.name + "_b"]),
                helper.make_node("Add", [node.name + "_a", node.name + "_b"], [node.name + "_sum"]),
                helper.make_node("QuantizeLinear", [node.name + "_sum", y_s, y_z], list(node.output)),
            ]
        elif node.domain == "com.microsoft" and node.op_type == "QLinearGlobalAveragePool":
            x, x_s, x_z, y_s, y_z = node.input
            nodes += [
                helper.make_node("DequantizeLinear", [x, x_s, x_z], [node.name + "_x"]),
                helper.make_node("GlobalAveragePool", [node.name + "_x"], [node.name + "_avg"]),
                helper.make_node("QuantizeLinear", [node.name + "_avg", y_s, y_z], list(node.output)),
            ]
        elif node.domain == "com.microsoft":
            sys.exit(f"{path}: no standard rewrite for {node.domain}.{node.op_type}")
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def emulate_int8(int8: Path, out: Path) -> dict:
    """The int8 network in fp32 arithmetic: the same weights (stored int8, dequantised at load) and
    the same activation grid, so it gives the int8 model's embeddings with tract's fp32 kernels
    (faster than its int8 ones on x86 and on a Pi 4's Cortex-A72).

    Each QLinearConv becomes a Conv of the dequantised input with the dequantised weights and bias,
    then the fake quantisation of its output; each QuantizeLinear becomes that fake quantisation;
    each DequantizeLinear of an activation goes (the tensors carry dequantised values throughout).
    Fake quantisation on scale s and zero point z is clip(x / s, -z, 255 - z), rounded half to even
    by adding and taking away 1.5 * 2^23 (exact below 2^22; ONNX Round costs tract a scalar pass),
    times s: the dequantised u8 value quantisation would give."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(int8))
    graph = model.graph
    stored = {t.name: t for t in graph.initializer}

    def value(name):
        return numpy_helper.to_array(stored[name])

    nodes, constants = [], []

    def constant(name, array):
        constants.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def fake_quantise(x, scale, zero_point, out_name, tag):
        if value(zero_point).dtype != np.uint8:
            sys.exit(f"{int8}: {zero_point} is not a u8 zero point; only u8 activations are emulated")
        s, z = float(value(scale)), int(value(zero_point))
        nodes.extend([
            helper.make_node("Div", [x, constant(f"{tag}_scale", s)], [f"{tag}_scaled"]),
            helper.make_node("Clip", [f"{tag}_scaled", constant(f"{tag}_low", -z), constant(f"{tag}_high", 255 - z)],
                             [f"{tag}_clipped"]),
            helper.make_node("Add", [f"{tag}_clipped", constant(f"{tag}_shift", 1.5 * 2**23)], [f"{tag}_shifted"]),
            helper.make_node("Sub", [f"{tag}_shifted", f"{tag}_shift"], [f"{tag}_rounded"]),
            helper.make_node("Mul", [f"{tag}_rounded", f"{tag}_scale"], [out_name]),
        ])

    converted = {"QLinearConv": 0, "QuantizeLinear": 0, "DequantizeLinear": 0}
    for position, node in enumerate(graph.node):
        tag = f"emulated{position}"
        if node.op_type == "QuantizeLinear":
            fake_quantise(node.input[0], node.input[1], node.input[2], node.output[0], tag)
        elif node.op_type == "DequantizeLinear":
            nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]]))
        elif node.op_type == "QLinearConv":
            x, x_scale, _, w, w_scale, w_zero_point, y_scale, y_zero_point = node.input[:8]
            if value(w_scale).size != 1 or int(value(w_zero_point)) != 0:
                sys.exit(f"{int8}: {node.name} has per-channel or asymmetric weights; not emulated")
            nodes.append(helper.make_node("DequantizeLinear", [w, w_scale, w_zero_point], [f"{tag}_weight"]))
            inputs = [x, f"{tag}_weight"]
            if len(node.input) > 8 and node.input[8]:
                bias = value(node.input[8]).astype(np.float64) * float(value(x_scale)) * float(value(w_scale))
                inputs.append(constant(f"{tag}_bias", bias))
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            nodes.append(helper.make_node("Conv", inputs, [f"{tag}_sum"], name=node.name, **attributes))
            fake_quantise(f"{tag}_sum", y_scale, y_zero_point, node.output[0], tag)
        elif node.domain not in ("", "ai.onnx"):
            sys.exit(f"{int8}: no emulation of {node.domain}.{node.op_type}")
        else:
            nodes.append(node)
            continue
        converted[node.op_type] += 1
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    read = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]  # the quantised tensors are f32 now
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return {"emulates": {"model": int8.name, "sha256": sha256(int8)}, "converted": converted,
            "weights_storage": "int8 with one scale each, dequantised at load; computes in fp32"}


# ---------------------------------------------------------------------------------------------
# Manifest


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(model: Path, precision: str, provenance: dict) -> Path:
    manifest = {
        "format": "fashion-kiosk-model/1",
        "name": model.stem,
        "model_file": model.name,
        "precision": precision,
        "sha256": sha256(model),
        "input": {
            "name": INPUT_NAME,
            "width": INPUT_SIZE,
            "height": INPUT_SIZE,
            "layout": "NCHW",
            "colour_order": "RGB",
            "value_scale": 255.0,
            "mean": MEAN,
            "std": STD,
            "crop": "centre-square",
            "resize": "bilinear",
        },
        "output": {"name": OUTPUT_NAME, "dim": EMBEDDING_DIM},
        "provenance": provenance,
    }
    return save_manifest(model, manifest)


def save_manifest(model: Path, manifest: dict) -> Path:
    """Writes MODEL.manifest.json beside `model`, atomically (a temporary file renamed into place)."""
    path = model.with_suffix(".manifest.json")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def pair_twins(first: Path, second: Path) -> None:
    """Names each model as the other's `twin` in its manifest: the same network computed in another
    precision, whose tables it reads (the kiosk runs whichever is faster on its CPU)."""
    for model, twin in ((first, second), (second, first)):
        path = model.with_suffix(".manifest.json")
        manifest = json.loads(path.read_text())
        manifest["twin"] = {"manifest": twin.with_suffix(".manifest.json").name, "sha256": sha256(twin)}
        save_manifest(model, manifest)


# ---------------------------------------------------------------------------------------------
# Commands


def provenance_for(args) -> dict:
    source = {
        "fashion": f"shared/models/{DEFAULT_CHECKPOINT.name} (torchvision ResNet50 trained on the fashion catalogue)",
        "imagenet": "torchvision ResNet50_Weights.IMAGENET1K_V2",
        "random": "torchvision ResNet50, random weights (seed 0): for tests only",
    }[args.weights]
    import torch

    return {"weights": source, "exported_by": "models/build_models.py", "torch": torch.__version__, "opset": OPSET}


def cmd_build(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = f"{args.prefix}-resnet50"
    fp32 = out / f"{base}-fp32.onnx"
    int8 = out / f"{base}-int8.onnx"
    provenance = provenance_for(args)
    calibration = calibration_images(Path(args.images), Path(args.labels), args.calibration)
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full-precision.onnx"
        export_fp32(load_backbone(args.weights, Path(args.checkpoint)), full)
        quant = quantise(full, int8, args.variant, calibration)
        store_weights_as_fp16(full, fp32)
    write_manifest(fp32, "fp32", {**provenance, "weights_storage": "fp16, cast to fp32 at load; computes in fp32"})
    import onnxruntime

    write_manifest(int8, "int8", {**provenance, "quantisation": quant, "onnxruntime": onnxruntime.__version__})
    emulated = write_emulated_twin(int8)
    print(f"wrote {fp32}, {int8} and {emulated} with manifests")


def write_emulated_twin(int8: Path) -> Path:
    """Writes PREFIX-resnet50-int8-emulated.onnx beside an int8 model that has its manifest (the
    int8 network in fp32 arithmetic, `emulate_int8`), with its manifest, and pairs them as twins."""
    emulated = int8.with_name(int8.stem + "-emulated.onnx")
    emulation = emulate_int8(int8, emulated)
    provenance = json.loads(int8.with_suffix(".manifest.json").read_text())["provenance"]
    write_manifest(emulated, "fp32", {**provenance, "emulation": emulation})
    pair_twins(int8, emulated)
    return emulated


def cmd_twin(args) -> None:
    emulated = write_emulated_twin(Path(args.int8))
    print(f"wrote {emulated} and its manifest; it and {args.int8} name each other as twins")


def cmd_variants(args) -> None:
    """Every int8 form in VARIANTS, plus the full-precision fp32 export they were made from."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "fashion-resnet50-fp32-full.onnx"
    export_fp32(load_backbone("fashion", Path(args.checkpoint)), fp32)
    write_manifest(fp32, "fp32", {"weights": "fashion"})
    calibration = calibration_images(Path(args.images), Path(args.labels), args.calibration)
    for name in args.only or VARIANTS:
        model = out / f"fashion-resnet50-{name}.onnx"
        quant = quantise(fp32, model, name, calibration)
        write_manifest(model, "int8", {"weights": "fashion", "quantisation": quant})
        print(f"wrote {model}")


def cmd_fixtures(args) -> None:
    """Reference embeddings from onnxruntime for the Rust parity test."""
    import onnxruntime

    # Pairs of look-alikes (same articleType and baseColour), so each image has a clear nearest
    # neighbour among the others for the Rust test to compare.
    groups: dict = {}
    for row in csv.DictReader(open(args.labels, newline="")):
        groups.setdefault((row["articleType"], row["baseColour"]), []).append(row["filename"])
    pairs = sorted((g for g in groups.values() if len(g) >= 2), key=lambda g: (-len(g), g[0]))
    kinds = {}
    for group in pairs:
        kind = next(k for k, g in groups.items() if g is group)[0]
        kinds.setdefault(kind, sorted(group)[:2])
    chosen = [Path(args.images) / name for group in list(kinds.values())[: args.count // 2] for name in group]
    fixture = {"images": [p.name for p in chosen], "onnxruntime": onnxruntime.__version__, "embeddings": {}}
    for manifest_path in args.manifests:
        manifest = json.loads(Path(manifest_path).read_text())
        session = onnxruntime.InferenceSession(str(Path(manifest_path).parent / manifest["model_file"]),
                                               providers=["CPUExecutionProvider"])
        vectors = [session.run(None, {INPUT_NAME: preprocess(p)})[0].reshape(-1) for p in chosen]
        form = "emulated" if "emulation" in manifest["provenance"] else manifest["precision"]
        fixture["embeddings"][form] = {
            "model_sha256": manifest["sha256"],
            "vectors": [[float(f"{v:.6g}") for v in vec] for vec in vectors],
        }
    out = Path(args.out)
    out.write_text(json.dumps(fixture) + "\n")
    print(f"wrote {out}: {len(chosen)} images x {list(fixture['embeddings'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--images", default=str(DEFAULT_IMAGES), help="catalogue images for calibration")
    common.add_argument("--labels", default=str(DEFAULT_LABELS), help="labels.csv of the catalogue")
    common.add_argument("--calibration", type=int, default=256, help="number of calibration images")

    build = sub.add_parser("build", parents=[common], help="export fp32 + int8 models with manifests")
    build.add_argument("--weights", choices=["fashion", "imagenet", "random"], default="fashion")
    build.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    build.add_argument("--variant", choices=list(VARIANTS), default=DEFAULT_VARIANT)
    build.add_argument("--prefix", default="fashion", help="file name prefix: PREFIX-resnet50-{fp32,int8}.onnx")
    build.add_argument("--out", default=str(HERE))
    build.set_defaults(func=cmd_build)

    variants = sub.add_parser("variants", parents=[common], help="write every int8 form for benchmarking")
    variants.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    variants.add_argument("--only", nargs="*", choices=list(VARIANTS))
    variants.add_argument("--out", required=True)
    variants.set_defaults(func=cmd_variants)

    twin = sub.add_parser("twin", help="write an int8 model's emulated fp32 twin beside it")
    twin.add_argument("--int8", default=str(HERE / "fashion-resnet50-int8.onnx"))
    twin.set_defaults(func=cmd_twin)

    fixtures = sub.add_parser("fixtures", help="onnxruntime reference embeddings for the Rust parity test")
    fixtures.add_argument("--images", default=str(REPO / "demo" / "catalogue"))
    fixtures.add_argument("--labels", default=str(REPO / "demo" / "labels.csv"))
    fixtures.add_argument("--count", type=int, default=12)
    fixtures.add_argument("--manifests", nargs="+", default=[str(HERE / "fashion-resnet50-int8.manifest.json"),
                                                             str(HERE / "fashion-resnet50-fp32.manifest.json"),
                                                             str(HERE / "fashion-resnet50-int8-emulated.manifest.json")])
    fixtures.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "parity.json"))
    fixtures.set_defaults(func=cmd_fixtures)

    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
