"""Tests of the instance head tooling (instance_head.py); they run where PyTorch and onnxruntime are
installed (`pytest models`), on a randomly initialised backbone and a few catalogue items."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import instance_head  # noqa: E402
from PIL import Image  # noqa: E402

ITEM = instance_head.bm.DEFAULT_IMAGES / "10034.jpg"


def run(*args):
    return subprocess.run([sys.executable, str(HERE / "instance_head.py"), *map(str, args)], check=True,
                          capture_output=True, text=True).stdout


def test_camera_view_is_the_lit_item_on_white_with_a_margin():
    item = Image.open(ITEM).convert("RGB")
    mask = instance_head.scene.item_mask(item)
    views = [np.asarray(instance_head.camera_view(item, mask, np.random.default_rng(seed))) for seed in (1, 2)]
    for view in views:
        assert view.shape[0] == view.shape[1] > 100
        border = np.concatenate([view[0], view[-1], view[:, 0], view[:, -1]])
        assert (border == 255).all(), "the margin is white"
        assert (view < 200).any(axis=2).mean() > 0.1, "the item is there"
    # Different light and placement each time.
    small = [np.asarray(Image.fromarray(v).resize((64, 64)), dtype=np.float32) for v in views]
    assert np.abs(small[0] - small[1]).mean() > 2


def test_head_keeps_an_embeddings_direction_whatever_its_norm():
    rng = np.random.default_rng(0)
    weights = {"w1": rng.normal(size=(32, 16)), "w2": rng.normal(size=(16, 32))}
    x = rng.normal(size=(4, 16))
    np.testing.assert_allclose(instance_head.apply_head(weights, 3 * x), 3 * instance_head.apply_head(weights, x))
    assert not np.allclose(instance_head.apply_head(weights, x), x)


def test_label_agreement_leaves_the_backbones_validation_split_out(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("id,articleType,baseColour\n10003,Tshirts,Red\n10004,Tshirts,Blue\n10005,Tshirts,Red\n10006,Tshirts,Red\n")
    # 10005 is in the backbone's validation split (CRC-32 of the id mod 10 == 0); the others are not.
    assert [instance_head.in_validation_split(i) for i in ("10003", "10004", "10005", "10006")] == [False, False, True, False]
    article, colour = instance_head.label_agreement(torch, labels, np.array(["10003", "10004", "10005", "10006"]))
    same = lambda column: [[bool(a == b) for b in column] for a in column]
    assert same(article) == [[True, True, False, True], [True, True, False, True], [False, False, True, False], [True, True, False, True]]
    assert same(colour) == [[True, False, False, True], [False, True, False, False], [False, False, True, False], [True, False, False, True]]


def test_views_train_evaluate_and_export_end_to_end(random_build, tmp_path):
    work = tmp_path / "work"
    model = random_build / "random-resnet50-int8.onnx"
    run("views", "--model", model, "--limit", 6, "--views", 2, "--seed", 0, "--out", work)
    only = tmp_path / "frames"
    only.mkdir()
    data = np.load(work / "views-0.npz")
    assert data["clean"].shape == (6, 2048) and data["views"].shape == (6, 2, 2048)
    # Held-out items: two others, named as camera-set frames are.
    (only / "10049_0000.jpg").touch()
    (only / "10050_0001.jpg").touch()
    run("views", "--model", model, "--only", only, "--views", 2, "--seed", 1, "--out", work)
    assert list(np.load(work / "views-1.npz")["ids"]) == ["10049", "10050"]
    # Cut-outs as `fashion-kiosk foreground` writes them: one view each, studio shots reused or embedded.
    cuts = tmp_path / "cuts"
    cuts.mkdir()
    trained = str(data["ids"][0])
    for name in (f"{trained}_0007.png", "10053_0008.png", "10049_0009.png"):  # 10049 is held out
        instance_head.camera_view(Image.open(ITEM).convert("RGB"), instance_head.scene.item_mask(Image.open(ITEM)), np.random.default_rng(3)).save(cuts / name)
    run("cutouts", "--cutouts", cuts, "--model", model, "--exclude", only, "--clean-from", work / "views-0.npz", "--name", "cut", "--out", work)
    cut = np.load(work / "views-cut.npz")
    assert list(cut["ids"]) == [trained, "10053"] and cut["views"].shape == (2, 1, 2048)
    np.testing.assert_array_equal(cut["clean"][0], data["clean"][0])
    out = run("train", "--work", work, "--views", "views-0.npz", "views-cut.npz", "--hidden", 64, "--epochs", 2, "--batch", 4, "--agree", 1)
    assert "trained in" in out
    summary = json.loads((work / "head.json").read_text())
    assert summary["items"] == 7 and summary["views"] == 14 and summary["agree"] == 1
    out = run("evaluate", "--work", work)
    assert "4 views of 2 held-out items among 8" in out and "backbone + head" in out

    models = tmp_path / "models"
    run("export", "--work", work, "--backbone", random_build, "--prefix", "random", "--out", models)
    weights = np.load(work / "head.npz")
    # The graph computes the head as apply_head does (its weights stored as fp16).
    rounded = {k: weights[k].astype(np.float16).astype(np.float32) for k in ("w1", "w2")}
    image = instance_head.to_tensor(Image.open(ITEM).convert("RGB"))[None]
    for precision in ("fp32", "int8"):
        before = onnxruntime.InferenceSession(str(random_build / f"random-resnet50-{precision}.onnx")).run(None, {"image": image})[0]
        after = onnxruntime.InferenceSession(str(models / f"random-resnet50-{precision}.onnx")).run(None, {"image": image})[0]
        np.testing.assert_allclose(after, instance_head.apply_head(rounded, before), rtol=1e-3, atol=1e-3 * np.abs(after).max())
        manifest = json.loads((models / f"random-resnet50-{precision}.manifest.json").read_text())
        assert manifest["sha256"] == instance_head.bm.sha256(models / f"random-resnet50-{precision}.onnx")
        assert manifest["provenance"]["instance_head"]["hidden"] == 64
    # A model that already has a head is refused.
    refused = subprocess.run([sys.executable, str(HERE / "instance_head.py"), "export", "--work", str(work),
                              "--backbone", str(models), "--prefix", "random", "--out", str(tmp_path / "again")],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "already has a head" in refused.stderr
    # ...and views of a headed model would train a head on a head.
    refused = subprocess.run([sys.executable, str(HERE / "instance_head.py"), "cutouts", "--cutouts", str(cuts),
                              "--model", str(models / "random-resnet50-int8.onnx"), "--name", "x", "--out", str(work)],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "already ends with the instance head" in refused.stderr
