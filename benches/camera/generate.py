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

Beside them: card/<id>_<n>.jpg, the empty scene with a matte white card held up in it under the
same light (the input of the kiosk's colour calibration), and truth.csv, each frame's true item box
(with `--masks`, masks/<id>_<n>.png, its true mask).

`--style wide` widens the set to what the classic style leaves out: items from 8% to 70% of the
frame, striped, checked, textured and pale backgrounds, pale items, the item's white studio
backdrop partly visible (a board behind it, opaque or see-through, or a tag at its edge), soft
shadows, a wider range of white balance, gamma and sensor noise, and an auto-exposing camera:
exposure set on the empty scene (its mean at 90-160), and for half the scenes moved again by what
is in view (a dark or a white item). `--patch X,Y,W,H` puts a neutral grey patch in view in every frame (one that stays in
the camera's view and follows the light); `--daylight D` changes the light between the calibration
(empty scene, card) and each frame by up to D (exposure and colour). Card, patch and daylight draw
from their own random stream, so a classic set regenerates byte for byte with or without them.

Seeds: 7 (classic) and 21 (wide) are the sets the kiosk's code was tuned on; seeds from 1000 up are
kept for final checks that no tuning saw.
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

    def __init__(self, rng: np.random.Generator, wide: bool = False):
        if wide:
            self.exposure = rng.uniform(0.55, 1.4)
            self.balance = rng.uniform(0.82, 1.18, 3)
            self.gamma = rng.uniform(0.8, 1.2)
            self.vignette = rng.uniform(0.0, 0.4)
            self.blur = rng.uniform(0.0, 1.8)
            self.noise = rng.uniform(2.0, 14.0)
            self.quality = int(rng.integers(60, 93))
            return
        self.exposure = rng.uniform(0.6, 1.35)
        self.balance = rng.uniform(0.85, 1.15, 3)
        self.gamma = rng.uniform(0.85, 1.15)
        self.vignette = rng.uniform(0.0, 0.35)
        self.blur = rng.uniform(0.0, 1.5)
        self.noise = rng.uniform(2.0, 8.0)
        self.quality = int(rng.integers(70, 93))

    def apply(self, scene: np.ndarray, rng: np.random.Generator, drift: float, origin: tuple[int, int] = (0, 0), shift: np.ndarray | None = None) -> bytes:
        """The scene as the camera's JPEG. `scene` may be a part of the frame whose top-left corner
        is at `origin` (x, y): the vignette stays the frame's. `shift` multiplies the light per
        channel (auto exposure reacting to the scene, daylight changing)."""
        gain = self.exposure * (1 + rng.uniform(-drift, drift)) * self.balance * (1 + rng.uniform(-drift / 3, drift / 3, 3))
        if shift is not None:
            gain = gain * shift
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


def wide_background(rng: np.random.Generator) -> np.ndarray:
    """A wider range of scenes: a store, stripes, checks, a strong texture or a pale wall."""
    kind = rng.choice(["store", "stripes", "checks", "texture", "pale"], p=[0.3, 0.25, 0.1, 0.2, 0.15])
    if kind == "store":
        image = store_background(rng)
    else:
        y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
        a, b = rng.integers(20, 236, 3).astype(np.float32), rng.integers(20, 236, 3).astype(np.float32)
        if kind == "stripes":
            angle = rng.choice([0.0, 90.0, 45.0, rng.uniform(0, 180)])
            period = rng.uniform(6, 60)
            u = x * math.cos(math.radians(angle)) + y * math.sin(math.radians(angle))
            t = ((u / period) % 1.0 < rng.uniform(0.3, 0.7)).astype(np.float32)
        elif kind == "checks":
            period = rng.uniform(10, 50)
            t = (((x // period) + (y // period)) % 2).astype(np.float32)
        elif kind == "texture":
            t = np.zeros((HEIGHT, WIDTH), np.float32)
            for scale in (4, 16, 64):
                small = rng.normal(0, 1, (HEIGHT // scale + 1, WIDTH // scale + 1)).astype(np.float32)
                t += np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BILINEAR)) / scale**0.3
            t = np.clip(0.5 + t / (3 * t.std()), 0, 1)
        else:  # pale: a near-white wall, slightly tinted, with a light shelf or two
            a = rng.uniform(205, 248) * (1 + rng.uniform(-0.03, 0.03, 3))
            b = a * rng.uniform(0.88, 0.97)
            t = np.zeros((HEIGHT, WIDTH), np.float32)
            for _ in range(rng.integers(0, 3)):
                y0 = int(rng.uniform(0, HEIGHT))
                t[y0 : y0 + int(rng.uniform(6, 30))] = 1.0
        image = a * (1 - t[..., None]) + b * t[..., None]
        image *= (1 - 0.2 * (y / HEIGHT)[..., None] * rng.uniform(-1, 1))
    texture = rng.normal(0, rng.uniform(1, 6), (HEIGHT, WIDTH, 3))
    return np.clip(image + texture, 0, 255).astype(np.float32)


def pale_items(catalogue: Path, rows: list[dict]) -> list[int]:
    """Indexes of the rows whose item is pale (mean of its pixels off the white backdrop >= 180)."""
    pale = []
    for i, row in enumerate(rows):
        thumb = np.asarray(Image.open(catalogue / row["filename"]).convert("RGB").resize((32, 32)), dtype=np.float32)
        off_white = thumb[thumb.min(axis=2) < 232]
        if len(off_white) and off_white.mean() >= 180:
            pale.append(i)
    return pale


def place_item_wide(item: Image.Image, rng: np.random.Generator):
    """The item on a frame-sized canvas with its box covering 8-70% of the frame, maybe with part
    of its white studio backdrop (a board behind it, opaque or see-through, or a tag at its edge),
    and the soft shadow it casts. Returns the layer, its alpha and the shadow's darkening."""
    mask = item_mask(item)
    m = np.asarray(mask, dtype=np.float32) / 255
    ys, xs = np.nonzero(m > 0.5)
    if len(xs) == 0:
        ys, xs = np.array([0, item.height - 1]), np.array([0, item.width - 1])
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    backdrop = rng.choice(["none", "board", "tag"], p=[0.6, 0.28, 0.12])
    opacity = 1.0 if rng.uniform() < 0.5 else rng.uniform(0.7, 0.92)
    if backdrop == "board":
        gx, gy = rng.uniform(0.04, 0.2) * (x1 - x0), rng.uniform(0.04, 0.2) * (y1 - y0)
        board = np.zeros_like(m)
        board[max(0, int(y0 - gy)) : int(y1 + gy), max(0, int(x0 - gx)) : int(x1 + gx)] = opacity
        m = np.maximum(m, board)
    elif backdrop == "tag":
        tw, th = rng.uniform(0.08, 0.18) * (x1 - x0), rng.uniform(0.06, 0.14) * (y1 - y0)
        ty = rng.uniform(y0, max(y0 + 1, y1 - th))
        tx = x0 - 0.6 * tw if rng.uniform() < 0.5 else x1 - 0.4 * tw
        tag = np.zeros_like(m)
        tag[max(0, int(ty)) : int(ty + th), max(0, int(tx)) : int(tx + tw)] = 1.0
        m = np.maximum(m, tag)
    mask = Image.fromarray((m * 255).astype(np.uint8))
    bw, bh = x1 - x0, y1 - y0
    share = rng.uniform(0.08, 0.70)
    scale = math.sqrt(share * WIDTH * HEIGHT / (bw * bh))
    scale = min(scale, 0.98 * HEIGHT / bh, 0.98 * WIDTH / bw)
    size = (max(1, int(item.width * scale)), max(1, int(item.height * scale)))
    item, mask = item.resize(size, Image.BICUBIC), mask.resize(size, Image.BILINEAR)
    angle = rng.uniform(-8, 8)
    item = item.rotate(angle, Image.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    mask = mask.rotate(angle, Image.BILINEAR, expand=True, fillcolor=0)
    box = mask.getbbox() or (0, 0, 1, 1)
    item, mask = item.crop(box), mask.crop(box)
    w, h = item.size
    left = int(np.clip(WIDTH / 2 - w / 2 + rng.uniform(-0.15, 0.15) * WIDTH, 0, max(0, WIDTH - w)))
    top = int(np.clip(HEIGHT / 2 - h / 2 + rng.uniform(-0.1, 0.1) * HEIGHT, 0, max(0, HEIGHT - h)))
    layer = Image.new("RGB", (WIDTH, HEIGHT))
    alpha = Image.new("L", (WIDTH, HEIGHT), 0)
    layer.paste(item, (left, top))
    alpha.paste(mask, (left, top))
    shadow = np.zeros((HEIGHT, WIDTH), np.float32)
    if rng.uniform() < 0.5:
        dx, dy = int(rng.uniform(-25, 25)), int(rng.uniform(0, 30))
        cast = Image.new("L", (WIDTH, HEIGHT), 0)
        cast.paste(mask, (left + dx, top + dy))
        cast = cast.filter(ImageFilter.GaussianBlur(rng.uniform(3, 12)))
        shadow = rng.uniform(0.15, 0.45) * np.asarray(cast, dtype=np.float32) / 255
    return np.asarray(layer, dtype=np.float32), np.asarray(alpha, dtype=np.float32)[..., None] / 255, shadow[..., None]


def auto_exposure(reference: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """How an auto-exposing camera's gain moves from the empty scene to `seen`: towards keeping
    the mean brightness, partly and within limits."""
    return np.full(3, np.clip((reference.mean() / max(seen.mean(), 1.0)) ** 0.6, 0.7, 1.45))


def with_card(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The scene with a matte white A5 card held up in it (and, mostly, the fingers holding it)."""
    height = rng.uniform(0.22, 0.40) * HEIGHT
    size = (int(height * 148 / 210), int(height)) if rng.uniform() < 0.7 else (int(height), int(height * 148 / 210))
    reflectance = rng.uniform(0.84, 0.93) * (1 + rng.uniform(-0.02, 0.02, 3))
    card = Image.new("L", size, 255).rotate(rng.uniform(-10, 10), Image.BILINEAR, expand=True, fillcolor=0)
    left = int(WIDTH / 2 - card.width / 2 + rng.uniform(-0.12, 0.12) * WIDTH)
    top = int(HEIGHT / 2 - card.height / 2 + rng.uniform(-0.1, 0.1) * HEIGHT)
    alpha = Image.new("L", (WIDTH, HEIGHT), 0)
    alpha.paste(card, (left, top))
    a = np.asarray(alpha, dtype=np.float32)[..., None] / 255
    paper = 255 * reflectance + rng.normal(0, 1.5, (HEIGHT, WIDTH, 3))
    out = scene * (1 - a) + paper * a
    if rng.uniform() < 0.7:  # fingers over the card's lower edge
        fingers = Image.new("L", (WIDTH, HEIGHT), 0)
        draw = ImageDraw.Draw(fingers)
        fx, fy = left + card.width * rng.uniform(0.2, 0.6), top + card.height * rng.uniform(0.85, 1.0)
        for k in range(4):
            draw.ellipse([fx + 14 * k, fy - 20, fx + 14 * k + 12, fy + 30], fill=255)
        f = np.asarray(fingers, dtype=np.float32)[..., None] / 255
        skin = np.array([205, 150, 125]) * rng.uniform(0.6, 1.1)
        out = out * (1 - f) + skin * f
    return out


def with_patch(scene: np.ndarray, rect: tuple[int, int, int, int], reflectance: float) -> np.ndarray:
    """The scene with a neutral grey patch of `reflectance` at `rect` (x, y, w, h), in front."""
    x, y, w, h = rect
    out = scene.copy()
    out[y : y + h, x : x + w] = 255 * reflectance
    return out


def parse_rect(text: str) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in text.split(","))
    return x, y, w, h


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
    parser.add_argument("--style", choices=["classic", "wide"], default="classic")
    parser.add_argument("--patch", type=parse_rect, metavar="X,Y,W,H", help="a neutral patch in view in every frame")
    parser.add_argument("--daylight", type=float, default=0.0, help="light change between calibration and frame, up to this share")
    parser.add_argument("--masks", action="store_true", help="also write masks/<name>.png, the item's true mask")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    rows = list(csv.DictReader(args.labels.open()))
    excluded = frame_ids(args.exclude)
    unique = [row for row in unique_items(args.catalogue, rows) if row["id"] not in excluded]
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(len(unique), size=min(args.count, len(unique)), replace=False)
    if args.style == "wide":  # a quarter of the items from the pale ones
        pale = pale_items(args.catalogue, unique)
        for k in range(len(picked)):
            if rng.uniform() < 0.25:
                candidate = pale[rng.integers(len(pale))]
                if candidate not in picked:
                    picked[k] = candidate
    for folder in ("frames", "empty", "card"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    truth = ["name,x0,y0,x1,y1,share"]
    for n, index in enumerate(sorted(picked)):
        row = unique[index]
        extra = np.random.default_rng([args.seed, n])  # card, patch, daylight: the main stream stays
        item = Image.open(args.catalogue / row["filename"]).convert("RGB")
        shift = None
        if args.style == "classic":
            background = store_background(rng)
            layer, alpha = place_item(item, item_mask(item), rng)
            scene = background * (1 - alpha) + layer * alpha
            light = Light(rng)
        else:
            background = wide_background(rng)
            layer, alpha, shadow = place_item_wide(item, rng)
            scene = background * (1 - shadow) * (1 - alpha) + layer * alpha
            light = Light(rng, wide=True)
            # The camera's exposure as its auto exposure set it on the empty scene: the scene's
            # mean lands on a target, not a blown-out or black frame.
            light.exposure *= rng.uniform(90, 160) / max(float((background * light.exposure * light.balance).mean()), 1.0)
            if rng.uniform() < 0.5:
                shift = auto_exposure(background, scene)
        card = with_card(background, extra)
        card_shift = auto_exposure(background, card) if shift is not None else None
        if args.patch:
            reflectance = extra.uniform(0.7, 0.9)
            scene, background, card = (with_patch(s, args.patch, reflectance) for s in (scene, background, card))
        if args.daylight:
            daylight = (1 + extra.uniform(-args.daylight, args.daylight)) * (1 + extra.uniform(-args.daylight / 2, args.daylight / 2, 3))
            shift = daylight if shift is None else shift * daylight
        name = f"{row['id']}_{n:04d}.jpg"
        (args.out / "frames" / name).write_bytes(light.apply(scene, rng, drift=0.08, shift=shift))
        (args.out / "empty" / name).write_bytes(light.apply(background, rng, drift=0.08))
        (args.out / "card" / name).write_bytes(light.apply(card, extra, drift=0.08, shift=card_shift))
        if args.masks:
            (args.out / "masks").mkdir(exist_ok=True)
            Image.fromarray((alpha[..., 0] * 255).astype(np.uint8)).save(args.out / "masks" / name.replace(".jpg", ".png"))
        ys, xs = np.nonzero(alpha[..., 0] > 0.5)
        if len(xs):
            share = (xs.max() + 1 - xs.min()) * (ys.max() + 1 - ys.min()) / (WIDTH * HEIGHT)
            truth.append(f"{name},{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1},{share:.3f}")
    (args.out / "truth.csv").write_text("\n".join(truth) + "\n")
    print(f"{len(picked)} frames of {len(unique)} eligible items (of {len(rows)}) in {args.out}")


if __name__ == "__main__":
    main()
