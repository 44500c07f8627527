#!/usr/bin/env python3
"""Teach the embedding to find the very item under shop light: a light-invariant head on the backbone.

Measured on the camera set (benches/camera): with the kiosk's reference-frame foreground step, the
item alone on white under *no* light change is found first for 95% of frames, but under the set's
white balance (+-15% per channel) only 35%, and under its exposure (0.6-1.35) 78%; background,
blur, noise, vignette and gamma cost little. The backbone was trained to name categories, so its
embedding moves with the item's colour cast. This tool learns a head on the backbone's pooled
embedding that maps camera views of an item onto the item's own studio shot, among all items:

    python models/instance_head.py views   --model B --out work/   # camera-like views -> int8 embeddings
    python models/instance_head.py cutouts --model B --cutouts DIR --name rust --out work/   # views cut out by the Rust step
    python models/instance_head.py train   --work work/ --views ...  # the head (InfoNCE, in-batch negatives)
    python models/instance_head.py export  --work work/ --backbone backbone/   # models/fashion-resnet50-*.onnx with the head

B is the int8 backbone alone (build_models.py build --out backbone/): the shipped models already end
with the head, and `views` / `cutouts` refuse them.

`views` renders each training item as the kiosk sees it after its foreground step: composited onto
a store background under random light (benches/camera/generate.py's scene and light), cut out by its
mask (dilated or eroded by up to 2 px, as segmentation errs), on white, cropped to its box with a
6% margin; and embeds the views and the studio shots with B in onnxruntime. `cutouts` embeds what
`fashion-kiosk foreground` cut out of whole frames (generate.py --exclude), the segmentation's own
errors included. Items of the evaluation camera set (`--exclude DIR`: ids from its file names) and
byte-identical twins are never trained on.

The head is two bias-free layers (2048 -> 2048, ReLU, -> 2048) plus the identity: positively
homogeneous, so head(embedding) points the same way whatever the embedding's norm, and a table built
with the headed model equals the old table's vectors passed through the head. The loss pulls each
view onto its own studio shot among the batch's, and (`--keep`, `--agree`) keeps the studio shots'
neighbourhoods, leaning towards neighbours with the same articleType and baseColour. `export`
appends the head to both backbone models (ONNX MatMul / Relu / Add after the pooled embedding) and
writes manifests: new SHA-256 fingerprints, so the service refuses tables built with other models
until re-indexed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
import zlib
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benches" / "camera"))
import build_models as bm  # noqa: E402
import generate as scene  # noqa: E402

MARGIN = 0.06  # as src/foreground.rs


def unique_items(images: Path, labels: Path) -> list[str]:
    """Ids whose image has no byte-identical twin."""
    with open(labels, newline="") as f:
        return [row["id"] for row in scene.unique_items(images, list(csv.DictReader(f)))]


def to_tensor(img: Image.Image) -> np.ndarray:
    """The manifest's preprocessing of an already square image."""
    if img.size != (bm.INPUT_SIZE, bm.INPUT_SIZE):
        img = img.resize((bm.INPUT_SIZE, bm.INPUT_SIZE), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(bm.MEAN, dtype=np.float32)) / np.array(bm.STD, dtype=np.float32)
    return x.transpose(2, 0, 1).copy()


def camera_view(item: Image.Image, mask: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The item as the kiosk's foreground step hands it to the model: lit in a store, cut out, on white."""
    background = scene.store_background(rng)
    layer, alpha = scene.place_item(item, mask, rng)
    frame = background * (1 - alpha) + layer * alpha
    ys, xs = np.nonzero(alpha[..., 0] > 0.5)
    if len(xs) == 0:
        return item
    pad = 8  # room for the blur
    box = (max(xs.min() - pad, 0), max(ys.min() - pad, 0), min(xs.max() + 1 + pad, scene.WIDTH), min(ys.max() + 1 + pad, scene.HEIGHT))
    # The light on the item's part of the frame only: the same effect there, in a quarter of the time.
    jpeg = scene.Light(rng).apply(frame[box[1] : box[3], box[0] : box[2]], rng, drift=0.0, origin=(box[0], box[1]))
    lit = np.asarray(Image.open(io.BytesIO(jpeg)), dtype=np.float32)
    cut = Image.fromarray(((alpha[box[1] : box[3], box[0] : box[2], 0] > 0.5) * 255).astype(np.uint8))
    grow = int(rng.integers(-2, 3))
    if grow > 0:
        cut = cut.filter(ImageFilter.MaxFilter(2 * grow + 1))
    elif grow < 0:
        cut = cut.filter(ImageFilter.MinFilter(-2 * grow + 1))
    keep = np.asarray(cut, dtype=np.float32)[..., None] / 255
    on_white = lit * keep + 255 * (1 - keep)
    ys, xs = np.nonzero(keep[..., 0])
    if len(xs) == 0:
        return item
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = int(max(x1 - x0, y1 - y0) * (1 + 2 * MARGIN))
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(Image.fromarray(np.clip(on_white[y0:y1, x0:x1], 0, 255).astype(np.uint8)), ((side - (x1 - x0)) // 2, (side - (y1 - y0)) // 2))
    return square


def render(job: tuple[str, str, int, int]) -> tuple[str, np.ndarray, list[np.ndarray]]:
    """One item's studio-shot tensor and `views` camera-view tensors (deterministic per item)."""
    images, item_id, views, seed = job
    item = Image.open(Path(images) / f"{item_id}.jpg").convert("RGB")
    mask = scene.item_mask(item)
    rng = np.random.default_rng([seed, int(item_id)])
    return item_id, bm.preprocess(Path(images) / f"{item_id}.jpg")[0], [to_tensor(camera_view(item, mask, rng)) for _ in range(views)]


def backbone_session(model: Path, threads: int):
    """An onnxruntime session of a backbone-only model: the head learns on its pooled embedding."""
    import onnx
    import onnxruntime as ort

    if any("pooled" in node.output for node in onnx.load(model).graph.node):
        sys.exit(f"{model} already ends with the instance head: embed views with the backbone alone "
                 "(build_models.py build --out backbone/)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def cmd_views(args) -> None:
    images, labels = Path(args.images), Path(args.labels)
    excluded = scene.frame_ids(args.exclude)
    ids = [i for i in unique_items(images, labels) if i not in excluded]
    if args.only:
        wanted = scene.frame_ids(args.only)
        ids = [i for i in unique_items(images, labels) if i in wanted]
    for done in args.skip:
        rendered = set(np.load(done)["ids"])
        ids = [i for i in ids if i not in rendered]
    if args.limit and len(ids) > args.limit:
        ids = [ids[round(n * len(ids) / args.limit)] for n in range(args.limit)]  # spread over the catalogue
    session = backbone_session(args.model, args.threads)
    clean = np.zeros((len(ids), bm.EMBEDDING_DIM), np.float32)
    views = np.zeros((len(ids), args.views, bm.EMBEDDING_DIM), np.float32)
    started = time.time()
    jobs = [(str(images), i, args.views, args.seed) for i in ids]
    with Pool(args.workers) as pool:
        for n, (item_id, studio, camera) in enumerate(pool.imap(render, jobs, chunksize=4)):
            batch = [studio, *camera]
            out = [session.run(None, {bm.INPUT_NAME: x[None]})[0][0] for x in batch]
            clean[n], views[n] = out[0], np.stack(out[1:])
            if n % 200 == 0:
                print(f"{n}/{len(ids)} items, {time.time() - started:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / f"views-{args.seed}.npz", ids=np.array(ids), clean=clean, views=views)
    print(f"{len(ids)} items x {args.views} views in {time.time() - started:.0f} s -> {args.out}")


def cmd_cutouts(args) -> None:
    """Embeds the cut-outs `fashion-kiosk foreground` made of camera frames (`generate.py`; file
    names start with the item id) as one view each, beside the items' studio shots."""
    session = backbone_session(args.model, args.threads)
    excluded = scene.frame_ids(args.exclude)
    files = sorted(p for folder in args.cutouts for p in folder.glob("*.png") if p.name.split("_")[0] not in excluded)
    if not files:
        sys.exit(f"no cut-outs (*.png) of items to train on in {', '.join(map(str, args.cutouts))}")
    known = {}
    for done in args.clean_from:
        data = np.load(done)
        known.update(zip(map(str, data["ids"]), data["clean"]))
    ids, clean, views = [], [], []
    started = time.time()
    for n, path in enumerate(files):
        item_id = path.name.split("_")[0]
        if item_id not in known:
            known[item_id] = session.run(None, {bm.INPUT_NAME: bm.preprocess(args.images / f"{item_id}.jpg")})[0][0]
        ids.append(item_id)
        clean.append(known[item_id])
        views.append(session.run(None, {bm.INPUT_NAME: to_tensor(Image.open(path).convert("RGB"))[None]})[0][0])
        if n % 500 == 0:
            print(f"{n}/{len(files)} cut-outs, {time.time() - started:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"views-{args.name}.npz"
    np.savez(target, ids=np.array(ids), clean=np.stack(clean), views=np.stack(views)[:, None])
    print(f"{len(ids)} cut-outs in {time.time() - started:.0f} s -> {target}")


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


class Head:
    """x + W2 relu(W1 x), bias-free (positively homogeneous)."""

    def __init__(self, torch, dim: int, hidden: int):
        self.w1 = torch.nn.Parameter(torch.randn(hidden, dim) * (1 / dim) ** 0.5)
        self.w2 = torch.nn.Parameter(torch.zeros(dim, hidden))

    def parameters(self):
        return [self.w1, self.w2]

    def __call__(self, x):
        return x + (x @ self.w1.T).relu() @ self.w2.T


def in_validation_split(item_id: str) -> bool:
    """The backbone's validation split (shared/models/README.md): CRC-32 of the id mod 10 == 0."""
    return zlib.crc32(item_id.encode()) % 10 == 0


def label_agreement(torch, labels: Path, ids: np.ndarray) -> list:
    """Per label column (articleType, baseColour): each item's class number, in `ids` order.
    Items of the backbone's validation split get a class of their own (-1 - position), so that
    label precision measured on them stays a held-out figure."""
    with open(labels, newline="") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    columns = []
    for column in ["articleType", "baseColour"]:
        names = sorted({rows[i][column] for i in ids})
        columns.append(torch.tensor([-1 - n if in_validation_split(i) else names.index(rows[i][column])
                                     for n, i in enumerate(ids)]))
    return columns


def grouped_views(files: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All views files' items, each once: ids, studio-shot embeddings, then every camera view and
    the item it belongs to (sorted by item), whichever file and however many per item."""
    clean, views = {}, {}
    for f in files:
        for item_id, studio, camera in zip(f["ids"], f["clean"], f["views"]):
            clean.setdefault(str(item_id), studio)
            views.setdefault(str(item_id), []).extend(camera)
    ids = np.array(sorted(clean))
    owner = np.concatenate([np.full(len(views[i]), n) for n, i in enumerate(ids)])
    return ids, np.stack([clean[i] for i in ids]), np.stack([v for i in ids for v in views[i]]), owner


def cmd_train(args) -> None:
    import torch

    torch.manual_seed(args.seed)
    ids, clean, views, owner = grouped_views([np.load(args.work / name) for name in args.views])
    clean, views, owner = torch.from_numpy(unit(clean)), torch.from_numpy(unit(views)), torch.from_numpy(owner)
    count, dim = clean.shape
    first = torch.searchsorted(owner, torch.arange(count))  # each item's views: first[i] .. first[i] + per_item[i]
    per_item = torch.bincount(owner, minlength=count)
    agree = label_agreement(torch, args.labels, ids) if args.agree > 0 else None
    head = Head(torch, dim, args.hidden)
    optimiser = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (count // args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, args.lr, total_steps=steps)
    started = time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(count)
        losses = []
        for start in range(0, count - args.batch + 1, args.batch):
            batch = order[start : start + args.batch]
            pick = first[batch] + (torch.rand(len(batch)) * per_item[batch]).long()
            anchor = torch.nn.functional.normalize(head(clean[batch]), dim=1)
            query = torch.nn.functional.normalize(head(views[pick]), dim=1)
            logits = query @ anchor.T / args.temperature
            target = torch.arange(len(batch))
            loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
            if args.keep > 0:
                # Keep the catalogue's own neighbourhoods (what label precision measures): the
                # studio shots' similarity distribution after the head should match the backbone's.
                mask = torch.eye(len(batch), dtype=torch.bool)
                before = clean[batch] @ clean[batch].T / args.temperature
                if agree is not None:
                    # ...leaning towards neighbours that share the item's article type and colour.
                    same = sum((column[batch][:, None] == column[batch][None, :]).float() for column in agree)
                    before = before + args.agree * same
                before = before.masked_fill(mask, -1e9)
                after = (anchor @ anchor.T / args.temperature).masked_fill(mask, -1e9)
                keep = torch.nn.functional.kl_div(after.log_softmax(1), before.log_softmax(1), log_target=True, reduction="batchmean")
                loss = loss + args.keep * keep
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        print(f"epoch {epoch + 1}/{args.epochs}: loss {np.mean(losses):.4f} ({time.time() - started:.0f} s)", flush=True)
    np.savez(args.work / "head.npz", w1=head.w1.detach().numpy(), w2=head.w2.detach().numpy())
    summary = {"trained_by": "models/instance_head.py", "items": int(count), "views": int(len(views)), "files": list(args.views),
               "hidden": args.hidden, "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
               "temperature": args.temperature, "keep": args.keep, "agree": args.agree, "final_loss": round(float(np.mean(losses)), 4),
               "train_seconds": round(time.time() - started)}
    (args.work / "head.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"trained in {time.time() - started:.0f} s -> {args.work / 'head.npz'}")


def apply_head(weights, x: np.ndarray) -> np.ndarray:
    return x + np.maximum(x @ weights["w1"].T, 0) @ weights["w2"].T


def cmd_evaluate(args) -> None:
    """Recall@1/@5 of held-out views among all studio shots (training and held-out items), with and
    without the head."""
    trained = [np.load(args.work / name) for name in args.views]
    held_out = np.load(args.work / args.held_out)
    weights = np.load(args.work / "head.npz") if (args.work / "head.npz").exists() else None
    gallery = {"ids": np.concatenate([f["ids"] for f in trained] + [held_out["ids"]]),
               "clean": np.concatenate([f["clean"] for f in trained] + [held_out["clean"]])}
    index = {item_id: n for n, item_id in enumerate(gallery["ids"])}
    truth = np.array([index[i] for i in held_out["ids"]])
    for name, f in [("backbone", lambda x: x), ("backbone + head", lambda x: apply_head(weights, x))]:
        if weights is None and name != "backbone":
            continue
        g = unit(f(unit(gallery["clean"])))
        q = unit(f(unit(held_out["views"].reshape(-1, held_out["views"].shape[-1]))))
        t = np.repeat(truth, held_out["views"].shape[1])
        top = np.argsort(-(q @ g.T), axis=1)[:, :5]
        print(f"{name}: {len(q)} views of {len(truth)} held-out items among {len(g)}: "
              f"Recall@1 {np.mean(top[:, 0] == t):.4f}, Recall@5 {np.mean((top == t[:, None]).any(1)):.4f}")


def cmd_export(args) -> None:
    """Appends the head to both backbone models (fp16-stored weights, cast to f32 at load)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.load(args.work / "head.npz")
    summary = json.loads((args.work / "head.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    for precision in ("int8", "fp32"):
        source = args.backbone / f"{args.prefix}-resnet50-{precision}.onnx"
        model = onnx.load(source)
        graph = model.graph
        if any(t.name == "pooled" for t in graph.value_info) or any("pooled" in n.output for n in graph.node):
            sys.exit(f"{source} already has a head: rebuild the backbone with build_models.py build first")
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == bm.OUTPUT_NAME:
                    node.output[i] = "pooled"
        graph.initializer.extend([
            numpy_helper.from_array(np.ascontiguousarray(weights["w1"].T).astype(np.float16), "head_w1_fp16"),
            numpy_helper.from_array(np.ascontiguousarray(weights["w2"].T).astype(np.float16), "head_w2_fp16"),
        ])
        graph.node.extend([
            helper.make_node("Cast", ["head_w1_fp16"], ["head_w1"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["head_w2_fp16"], ["head_w2"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["pooled", "head_w1"], ["head_hidden"]),
            helper.make_node("Relu", ["head_hidden"], ["head_active"]),
            helper.make_node("MatMul", ["head_active", "head_w2"], ["head_delta"]),
            helper.make_node("Add", ["pooled", "head_delta"], [bm.OUTPUT_NAME]),
        ])
        onnx.checker.check_model(model)
        target = args.out / source.name
        onnx.save(model, target)
        old = json.loads(source.with_suffix(".manifest.json").read_text())
        manifest = bm.write_manifest(target, precision, {**old["provenance"], "instance_head": summary})
        print(f"wrote {target} and {manifest}")
    emulated = bm.write_emulated_twin(args.out / f"{args.prefix}-resnet50-int8.onnx")
    print(f"wrote {emulated}, the int8 model's twin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    views = commands.add_parser("views", help="render camera views and embed them with the int8 backbone")
    views.add_argument("--images", type=Path, default=bm.DEFAULT_IMAGES)
    views.add_argument("--labels", type=Path, default=bm.DEFAULT_LABELS)
    views.add_argument("--model", type=Path, required=True, help="the backbone alone, int8 (build_models.py build)")
    views.add_argument("--exclude", type=Path, help="evaluation frames: their item ids are left out")
    views.add_argument("--only", type=Path, help="take only the item ids of these frames (held-out views)")
    views.add_argument("--skip", type=Path, action="append", default=[], help="views-*.npz whose items are done")
    views.add_argument("--views", type=int, default=2)
    views.add_argument("--seed", type=int, default=0)
    views.add_argument("--limit", type=int, default=0, help="at most this many items, evenly spread")
    views.add_argument("--threads", type=int, default=1)
    views.add_argument("--workers", type=int, default=2)
    views.add_argument("--out", type=Path, required=True)
    cutouts = commands.add_parser("cutouts", help="embed `fashion-kiosk foreground` cut-outs of camera frames as views")
    cutouts.add_argument("--cutouts", type=Path, nargs="+", required=True, help="folders of <id>_<n>.png cut-outs")
    cutouts.add_argument("--model", type=Path, required=True, help="the backbone alone, int8 (build_models.py build)")
    cutouts.add_argument("--images", type=Path, default=bm.DEFAULT_IMAGES)
    cutouts.add_argument("--exclude", type=Path, help="evaluation frames: their item ids are left out")
    cutouts.add_argument("--clean-from", type=Path, nargs="*", default=[], help="views-*.npz whose studio-shot embeddings to reuse")
    cutouts.add_argument("--threads", type=int, default=2)
    cutouts.add_argument("--name", required=True, help="the output is views-NAME.npz")
    cutouts.add_argument("--out", type=Path, required=True)
    train = commands.add_parser("train", help="train the head on the training views")
    train.add_argument("--work", type=Path, required=True)
    train.add_argument("--views", nargs="+", default=["views-0.npz"], help="views files in --work to train on")
    train.add_argument("--hidden", type=int, default=2048)
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch", type=int, default=512)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--temperature", type=float, default=0.05)
    train.add_argument("--keep", type=float, default=1.0, help="weight of keeping the studio shots' neighbourhoods")
    train.add_argument("--agree", type=float, default=0.0,
                       help="in the neighbourhood term, logit bonus per shared label (articleType, baseColour)")
    train.add_argument("--labels", type=Path, default=bm.DEFAULT_LABELS)
    train.add_argument("--seed", type=int, default=0)
    evaluate = commands.add_parser("evaluate", help="recall of held-out views with and without the head")
    evaluate.add_argument("--work", type=Path, required=True)
    evaluate.add_argument("--views", nargs="+", default=["views-0.npz"], help="training views files: their studio shots join the gallery")
    evaluate.add_argument("--held-out", default="views-1.npz", help="views of items never trained on")
    export = commands.add_parser("export", help="append the head to the backbone models, write manifests")
    export.add_argument("--work", type=Path, required=True)
    export.add_argument("--backbone", type=Path, required=True, help="folder of the backbone-only models (build_models.py build --out)")
    export.add_argument("--prefix", default="fashion", help="model file prefix, as build_models.py build --prefix")
    export.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    commands = {"views": cmd_views, "cutouts": cmd_cutouts, "train": cmd_train, "evaluate": cmd_evaluate, "export": cmd_export}
    commands[args.command](args)


if __name__ == "__main__":
    main()
