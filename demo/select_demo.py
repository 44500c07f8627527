#!/usr/bin/env python3
"""Pick the bundled demo catalogue from ../shared/fashion: a deterministic, category-balanced subset.

    python3 demo/select_demo.py            # rewrites demo/catalogue/, demo/labels.csv, demo/photos/

Writes ~300 catalogue images (at most 8 per articleType, evenly spread over ids) plus a few query
photos of items that are *not* in the demo catalogue, so the demo shows look-alikes, not self-matches.
The images are sample data from the Kaggle "Fashion Product Images" set (see demo/README.md).
"""
import csv
import shutil
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "fashion"
PER_TYPE, TOTAL = 8, 300
PHOTOS = ["Tshirts", "Casual Shoes", "Handbags", "Watches"]

rows = list(csv.DictReader(open(SHARED / "labels.csv", newline="")))
by_type = defaultdict(list)
for row in sorted(rows, key=lambda r: int(r["id"])):
    by_type[row["articleType"]].append(row)

chosen = []
for kind, items in sorted(by_type.items(), key=lambda kv: -len(kv[1])):
    step = max(1, len(items) // PER_TYPE)
    chosen += items[::step][:PER_TYPE]
chosen = sorted(chosen[:TOTAL], key=lambda r: int(r["id"]))
chosen_ids = {r["id"] for r in chosen}

catalogue = REPO / "demo" / "catalogue"
photos = REPO / "demo" / "photos"
for folder in (catalogue, photos):
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
for row in chosen:
    shutil.copyfile(SHARED / "images" / row["filename"], catalogue / row["filename"])
with open(REPO / "demo" / "labels.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(chosen)
for kind in PHOTOS:
    outside = [r for r in by_type[kind] if r["id"] not in chosen_ids]
    pick = outside[len(outside) // 2]
    name = f"{kind.lower().replace(' ', '-')}-{pick['id']}.jpg"
    shutil.copyfile(SHARED / "images" / pick["filename"], photos / name)
print(f"{len(chosen)} catalogue images, {len(PHOTOS)} photos")
