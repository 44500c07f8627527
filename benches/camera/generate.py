#!/usr/bin/env python3
"""Camera-realistic evaluation frames: catalogue items as a fixed kiosk camera would see them.

Each frame composites one catalogue item (cut from its white studio background) onto a
store-like background, at 55-90% of the frame height, rotated up to +-8 degrees, with a slight
perspective; then applies the scene's light (exposure, white balance, vignette), optics (blur)
and sensor (noise, JPEG). Beside each frame it saves the *empty scene* of the same fixed camera:
the same background and light without the item, with fresh noise and a small exposure / white
balance drift (what a camera's auto-exposure does between calibration and scan).

    python benches/camera/generate.py --catalogue ../shared/fashion/images \
        --labels ../shared/fashion/labels.csv --count 500 --seed 7 --out camera-set

writes camera-set/frames/<id>_<n>.jpg and camera-set/empty/<id>_<n>.jpg (640x480). The item id is
the file name up to the first "_". Items whose image is byte-identical to another item's are left
out (a twin would tie at the top), and so are the items of `--exclude DIR`'s frames (training
frames for models/instance_head.py leave out the evaluation set's items). Deterministic for a given
seed and catalogue.
Needs numpy and pillow (models/requirements.txt).
"""

import argparse
import csv
import hashlib
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 640, 480


def item_mask(item: Image.Image) -> Image.Image:
    """The item's mask: everything but the near-white background connected to the border."""
    rgb = np.asarray(item.convert("RGB"), dtype=np.int16)
    near_white = (rgb.min(axis=2) > 232) & (rgb.max(axis=2) - rgb.min(axis=2) < 18)
    marks = Image.fromarray(np.where(near_white, 255, 0).astype(np.uint8)).copy()
    w, h = marks.size
    for seed in [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), (w // 2, 0), (w // 2, h - 1), (0, h // 2), (w - 1, h // 2)]:
        if marks.getpixel(seed) == 255:
            ImageDraw.floodfill(marks, seed, 128)
    background = np.asarray(marks) == 128
    mask = Image.fromarray(np.where(background, 0, 255).astype(np.uint8))
    # Soft edge, as a real edge against a real background.
    return mask.filter(ImageFilter.GaussianBlur(0.8))


def store_background(rng: np.random.Generator) -> np.ndarray:
    """A store-like scene: a tinted wall with a gradient, shelves, racks, posters, a floor."""
    hue = rng.uniform(0, 1, 3)
    wall = 70 + 150 * (0.6 * hue + 0.4 * rng.uniform(0.5, 1.0))
    y = np.linspace(0, 1, HEIGHT)[:, None, None]
    x = np.linspace(0, 1, WIDTH)[None, :, None]
    image = wall * (1 - 0.25 * y * rng.uniform(-1, 1)) * (1 - 0.2 * x * rng.uniform(-1, 1))
    image = np.broadcast_to(image, (HEIGHT, WIDTH, 3)).copy()
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    floor = int(HEIGHT * rng.uniform(0.7, 0.92))
    draw.rectangle([0, floor, WIDTH, HEIGHT], fill=tuple(int(c) for c in rng.integers(40, 160, 3)))
    for _ in range(rng.integers(3, 9)):  # shelves, posters, racks, a door
        x0, y0 = int(rng.uniform(-50, WIDTH)), int(rng.uniform(-50, floor))
        w, h = int(rng.uniform(30, 260)), int(rng.uniform(10, 240))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.uniform() < 0.5:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.rectangle([x0, y0, x0 + w, y0 + h], outline=colour, width=int(rng.integers(2, 8)))
    for _ in range(rng.integers(0, 5)):  # hangers, cables, edges
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line([tuple(rng.uniform(0, WIDTH, 2)), tuple(rng.uniform(0, HEIGHT, 2))], fill=colour, width=int(rng.integers(1, 5)))
    texture = rng.normal(0, rng.uniform(2, 10), (HEIGHT // 8, WIDTH // 8, 3))
    texture = np.asarray(Image.fromarray(np.clip(texture + 128, 0, 255).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.BILINEAR), dtype=np.float32) - 128
    return np.clip(np.asarray(canvas, dtype=np.float32) + texture, 0, 255)


def place_item(item: Image.Image, mask: Image.Image, rng: np.random.Generator):
    """The item and its mask, scaled, rotated, slightly in perspective, on a frame-sized canvas."""
    height = int(HEIGHT * rng.uniform(0.55, 0.90))
    scale = height / item.height
    size = (max(1, int(item.width * scale)), height)
    item, mask = item.resize(size, Image.BICUBIC), mask.resize(size, Image.BILINEAR)
    angle = rng.uniform(-8, 8)
    item = item.rotate(angle, Image.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    mask = mask.rotate(angle, Image.BILINEAR, expand=True, fillcolor=0)
    w, h = item.size
    jitter = 0.04
    quad = [c + rng.uniform(-jitter, jitter) * s for corner in [(0, 0), (0, h), (w, h), (w, 0)] for c, s in zip(corner, (w, h))]
    item = item.transform((w, h), Image.QUAD, quad, Image.BICUBIC, fillcolor=(255, 255, 255))
    mask = mask.transform((w, h), Image.QUAD, quad, Image.BILINEAR, fillcolor=0)
    cx = WIDTH / 2 + rng.uniform(-0.15, 0.15) * WIDTH
    cy = HEIGHT / 2 + rng.uniform(-0.08, 0.08) * HEIGHT
    left, top = int(cx - w / 2), int(min(max(cy - h / 2, -0.05 * h), HEIGHT - 0.95 * h))
    layer = Image.new("RGB", (WIDTH, HEIGHT))
    alpha = Image.new("L", (WIDTH, HEIGHT), 0)
    layer.paste(item, (left, top))
    alpha.paste(mask, (left, top))
    return np.asarray(layer, dtype=np.float32), np.asarray(alpha, dtype=np.float32)[..., None] / 255


class Light:
    """The scene's light and optics: exposure, white balance, gamma, vignette, blur."""

    def __init__(self, rng: np.random.Generator):
        self.exposure = rng.uniform(0.6, 1.35)
        self.balance = rng.uniform(0.85, 1.15, 3)
        self.gamma = rng.uniform(0.85, 1.15)
        self.vignette = rng.uniform(0.0, 0.35)
        self.blur = rng.uniform(0.0, 1.5)
        self.noise = rng.uniform(2.0, 8.0)
        self.quality = int(rng.integers(70, 93))

    def apply(self, scene: np.ndarray, rng: np.random.Generator, drift: float, origin: tuple[int, int] = (0, 0)) -> bytes:
        """The scene as the camera's JPEG. `scene` may be a part of the frame whose top-left corner
        is at `origin` (x, y): the vignette stays the frame's."""
        gain = self.exposure * (1 + rng.uniform(-drift, drift)) * self.balance * (1 + rng.uniform(-drift / 3, drift / 3, 3))
        height, width = scene.shape[:2]
        y, x = np.mgrid[origin[1] : origin[1] + height, origin[0] : origin[0] + width]
        r = np.hypot((x - WIDTH / 2) / (WIDTH / 2), (y - HEIGHT / 2) / (HEIGHT / 2)) / math.sqrt(2)
        falloff = (1 - self.vignette * r**2)[..., None]
        lit = 255 * np.clip(scene * gain * falloff / 255, 0, 1) ** self.gamma
        image = Image.fromarray(lit.astype(np.uint8)).filter(ImageFilter.GaussianBlur(self.blur))
        noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, self.noise, (height, width, 3))
        out = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=self.quality)
        return out.getvalue()


def frame_ids(folder: Path | None) -> set[str]:
    """The item ids of a folder of frames (each file name up to its first "_"); none without one."""
    if folder is None:
        return set()
    return {p.name.split("_")[0] for p in folder.rglob("*.jpg")}


def unique_items(catalogue: Path, rows: list[dict]) -> list[dict]:
    """The label rows whose image has no byte-identical twin (a twin would tie at the top), by id."""
    digests = {}
    for row in rows:
        digest = hashlib.sha256((catalogue / row["filename"]).read_bytes()).hexdigest()
        digests.setdefault(digest, []).append(row)
    return sorted((group[0] for group in digests.values() if len(group) == 1), key=lambda r: r["id"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalogue", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--exclude", type=Path, help="a folder of frames whose item ids are left out")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    rows = list(csv.DictReader(args.labels.open()))
    excluded = frame_ids(args.exclude)
    unique = [row for row in unique_items(args.catalogue, rows) if row["id"] not in excluded]
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(len(unique), size=min(args.count, len(unique)), replace=False)
    (args.out / "frames").mkdir(parents=True, exist_ok=True)
    (args.out / "empty").mkdir(parents=True, exist_ok=True)
    for n, index in enumerate(sorted(picked)):
        row = unique[index]
        item = Image.open(args.catalogue / row["filename"]).convert("RGB")
        background = store_background(rng)
        layer, alpha = place_item(item, item_mask(item), rng)
        scene = background * (1 - alpha) + layer * alpha
        light = Light(rng)
        name = f"{row['id']}_{n:04d}.jpg"
        (args.out / "frames" / name).write_bytes(light.apply(scene, rng, drift=0.08))
        (args.out / "empty" / name).write_bytes(light.apply(background, rng, drift=0.08))
    print(f"{len(picked)} frames of {len(unique)} eligible items (of {len(rows)}) in {args.out}")


if __name__ == "__main__":
    main()
