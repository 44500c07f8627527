"""Tests of the garment parser's tooling (models/garment_parser.py, models/pretrained.py): the class
grouping, the split, the person region the Rust side crops the same way, the IoU arithmetic, the mobile
parser's shapes, training augmentation, resumable training and export + manifest end to end (random
weights, small inputs: quick)."""

import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import garment_parser as gp  # noqa: E402
import pretrained as pt  # noqa: E402

OUTFITS = gp.OUTFITS


@pytest.mark.skipif(not (OUTFITS / "labels.txt").exists(), reason="shared/outfits is not here")
def test_every_outfits_label_is_in_exactly_one_class():
    names = gp.read_labels(OUTFITS / "labels.txt")
    lut = gp.class_lut(names)
    assert lut[: len(names)].max() < len(gp.CLASSES)
    assert (lut[len(names):] == gp.IGNORE).all()
    grouped = [label for labels in gp.GROUPS.values() for label in labels]
    assert len(grouped) == len(set(grouped))
    assert gp.CLASSES[:3] == ["background", "skin", "hair"]


def test_the_validation_split_is_a_fifth_by_crc32_as_the_rust_eval_takes_it():
    names = [f"{i:04d}" for i in range(1, 1005)]
    validation = [n for n in names if gp.is_validation(n)]
    assert 150 <= len(validation) <= 250
    assert all((zlib.crc32(n.encode()) % 5 == 0) == gp.is_validation(n) for n in names)
    # The demo's street photo is a validation photo (never trained on).
    assert gp.is_validation("0770")


def test_person_region_matches_the_rust_second_pass():
    """The numbers of src/outfit/mod.rs's test `the_second_pass_looks_at_the_person_grown_to_the_parsers_shape`."""
    person = np.zeros((150, 100), bool)
    person[50:100, 40:60] = True
    assert gp.person_region(person, 2 / 3) == (31, 47, 38, 56)
    edge = np.zeros((150, 100), bool)
    edge[:, :20] = True
    assert gp.person_region(edge, 2 / 3) == (0, 0, 65, 150)
    assert gp.person_region(np.zeros((10, 10), bool), 1.0) is None
    assert gp.centre_aspect((10, 0, 300, 300), 2 / 3) == (60, 0, 200, 300)


def test_iou_counts_each_class_against_its_own_union():
    truth = np.array([0, 0, 1, 1, 2, gp.IGNORE], np.uint8)
    pred = np.array([0, 1, 1, 1, 0, 2], np.uint8)
    conf = gp.confusion(pred, truth, n=3)
    assert conf.sum() == 5  # the ignored pixel is left out
    np.testing.assert_allclose(gp.iou(conf), [1 / 3, 2 / 3, 0.0])


def test_export_writes_a_model_onnxruntime_runs_like_pytorch_and_a_manifest_that_describes_it(tmp_path):
    torch.manual_seed(0)
    net = gp.ResNetParser(gp.resnet_trunk("random"), gp.resnet_decoder(16)).eval()
    width, height = 64, 96
    model = tmp_path / "parser.onnx"
    gp.export_onnx(net, model, width, height)
    x = np.random.default_rng(0).normal(size=(1, 3, height, width)).astype(np.float32)
    got = gp.onnx_scores(model, 1)(x)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert got.shape == (1, len(gp.CLASSES), height // 8, width // 8)
    np.testing.assert_allclose(got, want, atol=1e-2 * max(1.0, float(np.abs(want).max())))
    manifest = json.loads(gp.write_manifest(model, width, height, got.shape, 8, {"note": "test"}).read_text())
    assert manifest["format"] == "fashion-kiosk-parser/1"
    assert manifest["classes"] == gp.CLASSES
    assert manifest["input"]["crop"] == "centre-aspect"
    assert manifest["output"]["shape"] == [1, len(gp.CLASSES), height // 8, width // 8]
    assert manifest["sha256"] == gp.bm.sha256(Path(model))


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "efficientnet_lite0"])
@pytest.mark.parametrize("stride", [4, 8])
def test_the_mobile_parser_scores_every_class_at_its_stride(backbone, stride):
    net = gp.MobileParser(backbone, 16, stride, pretrained=False).eval()
    assert [c for c in net.trunk.channels][-1] == 1280
    with torch.no_grad():
        feats = net.trunk(torch.zeros(1, 3, 96, 64))
        scores = net(torch.zeros(1, 3, 96, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]  # strides 4, 8, 16, 32
    assert [f.shape[1] for f in feats] == net.trunk.channels
    assert scores.shape == (1, len(gp.CLASSES), 96 // stride, 64 // stride)


def test_pretrained_sources_name_a_pinned_package_and_a_full_sha256():
    for name, source in pt.SOURCES.items():
        assert len(source["sha256"]) == 64 and int(source["sha256"], 16) >= 0, name
        assert source["version"].count(".") == 2 and source["licence"], name
    assert set(pt.SOURCES) == set(pt.CONVERT)


@pytest.mark.skipif(not pt.state_dict_path("mobilenet_v2").exists(), reason="run models/pretrained.py first")
def test_the_converted_mobilenet_v2_loads_into_torchvisions_features():
    trunk = gp.mobile_trunk("mobilenet_v2", pretrained=True)
    bn = trunk.stages[0][0][1]  # features.0's BatchNorm: ImageNet statistics, not the initial ones
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_the_mobilenet_v2_conversion_maps_tonylins_names_in_order(tmp_path):
    """tonylins' layout (features.N.conv.K flat) -> torchvision's (features.N.conv.J.K): same tensors, in order."""
    import torchvision

    want = torchvision.models.mobilenet_v2().features.state_dict()
    flat = {}
    for key, value in want.items():
        parts = key.split(".")
        if parts[2] == "conv" and len(parts) == 6:  # conv.J.K.param -> conv.(3J+K).param
            parts = parts[:3] + [str(3 * int(parts[3]) + int(parts[4])), parts[5]]
        flat[".".join(parts)] = torch.randn(value.shape) if value.dtype.is_floating_point else value
    path = tmp_path / "tonylins.pt"
    torch.save(flat, path)
    got = pt.convert_mobilenet_v2(path)
    assert list(got) == list(want)
    assert all(torch.equal(a, b) for a, b in zip(got.values(), flat.values()))


def test_training_samples_are_the_kiosks_view_or_crops_of_it_with_their_masks(tmp_path):
    photos = gp.TrainPhotos.__new__(gp.TrainPhotos)
    rng = np.random.default_rng(0)
    photos.images = [rng.integers(0, 256, size=(90, 60, 3), dtype=np.uint8)]
    mask = np.zeros((90, 60), np.uint8)
    mask[30:60, 20:40] = 3
    photos.masks = [mask]
    from PIL import Image
    whole = gp.to_input(Image.fromarray(photos.images[0]), 32, 48)
    for seed in range(8):
        x, m = photos.sample(0, np.random.default_rng(seed), 32, 48, zoom=2.0, whole=1.0)
        assert x.shape == (48, 32, 3) and m.shape == (48, 32)
        assert np.array_equal(x, whole) or np.array_equal(x, whole[:, ::-1])
        assert set(np.unique(m)) == {0, 3}
    x, target = photos.batch([0, 0, 0], np.random.default_rng(1), 32, 48, zoom=2.0, whole=0.0, jitter=0.25)
    assert x.shape == (3, 3, 48, 32) and x.dtype == torch.float32
    assert target.shape == (3, 48, 32) and target.dtype == torch.int64
    assert set(np.unique(target.numpy())) <= {0, 3}


def test_mobile_parser_exports_to_onnx_with_its_stride_and_runs_like_pytorch(tmp_path):
    torch.manual_seed(0)
    net = gp.MobileParser("mobilenet_v2", 16, 4, pretrained=False)
    net.train()  # move BatchNorm statistics off their initial values so that folding them matters
    with torch.no_grad():
        net(torch.randn(2, 3, 96, 64))
    net.eval()
    width, height = 64, 96
    model = tmp_path / "parser.onnx"
    gp.export_onnx(net, model, width, height)
    import onnx
    assert {n.op_type for n in onnx.load(str(model)).graph.node} <= gp.ALLOWED_OPS
    x = np.random.default_rng(0).normal(size=(1, 3, height, width)).astype(np.float32)
    got = gp.onnx_scores(model, 1)(x)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert got.shape == (1, len(gp.CLASSES), height // 4, width // 4)
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, float(np.abs(want).max())))
    assert gp.count_macs(model) > 0
    manifest = json.loads(gp.write_manifest(model, width, height, got.shape, 4, {"note": "test"}).read_text())
    assert manifest["output"]["stride"] == 4
    assert manifest["output"]["shape"] == [1, len(gp.CLASSES), height // 4, width // 4]


def fake_outfits(root: Path, count: int = 10) -> Path:
    """A small stand-in for shared/outfits: photos, masks and the labels of the real one's grouping."""
    from PIL import Image
    labels = [label for group in gp.GROUPS.values() for label in group]
    (root / "photos").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "labels.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(labels)))
    rng = np.random.default_rng(0)
    for i in range(1, count + 1):
        Image.fromarray(rng.integers(0, 256, size=(72, 48, 3), dtype=np.uint8)).save(root / "photos" / f"{i:04d}.jpg")
        mask = np.zeros((72, 48), np.uint8)
        mask[10:40, 10:38] = labels.index("shirt")
        mask[40:66, 12:36] = labels.index("jeans")
        Image.fromarray(mask).save(root / "masks" / f"{i:04d}.png")
    return root


def test_training_resumes_from_its_checkpoint_and_the_result_exports(tmp_path):
    outfits = fake_outfits(tmp_path / "outfits")
    work = tmp_path / "work"
    script = str(Path(gp.__file__))
    common = ["--work", str(work), "--outfits", str(outfits), "--width", "64", "--height", "96", "--threads", "1"]
    subprocess.run([sys.executable, script, "cache", "data", *common], check=True)
    train = [sys.executable, script, "train", *common, "--name", "t", "--random-init", "--batch", "2",
             "--decoder-width", "8", "--checkpoint-minutes", "0"]
    first = subprocess.run(train + ["--epochs", "2"], check=True, capture_output=True, text=True).stdout
    assert (work / "t.state.pt").exists() and (work / "t.pt").exists()
    assert '"epoch": 2' in first and "val_garment_miou" in first and "images_per_s" in first
    state = torch.load(work / "t.state.pt", weights_only=False)
    assert state["epoch"] == 3 and state["step"] == 0
    # Mid-epoch: pretend the run stopped after one step of epoch 2.
    state.update(epoch=2, step=1, history=state["history"][:1])
    torch.save(state, work / "t.state.pt")
    again = subprocess.run(train + ["--epochs", "2"], check=True, capture_output=True, text=True).stdout
    assert "resumed" in again and "epoch 2, step 1/" in again and '"epoch": 2' in again
    other = subprocess.run(train + ["--epochs", "3"], capture_output=True, text=True)
    assert other.returncode != 0 and "other settings" in other.stderr
    net, ckpt = gp.load_checkpoint(work / "t.pt")
    assert ckpt["arch"] == "mobile" and len(ckpt["history"]) == 2
    model = tmp_path / "t.onnx"
    gp.export_onnx(net, model, 64, 96)
    assert gp.onnx_scores(model, 1)(np.zeros((1, 3, 96, 64), np.float32)).shape == (1, len(gp.CLASSES), 24, 16)
