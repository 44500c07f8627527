"""Tests of the garment parser's tooling (models/garment_parser.py): the class grouping, the split, the
person region the Rust side crops the same way, the IoU arithmetic, and export + manifest end to end."""

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import garment_parser as gp  # noqa: E402

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
