#!/usr/bin/env python3
"""Compare model forms in onnxruntime: embedding agreement with fp32, label precision@5, latency.

    python models/compare_variants.py models/fashion-resnet50-fp32.onnx /tmp/variants/*.onnx

Uses the backbone's validation split (ids whose CRC32 mod 10 == 0, 949 images, never seen in
training or calibration) as queries and items: leave-one-out precision@5 by articleType and
baseColour, mean cosine to the first (reference) model's embedding, and the neighbour recall@5
against the reference. Latency: median of 30 single-image runs, 1 thread. tract's speed is
measured by `fashion-kiosk bench`, not here.
"""

import argparse
import csv
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime

from build_models import DEFAULT_IMAGES, DEFAULT_LABELS, INPUT_NAME, is_validation, preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="ONNX files; the first is the reference")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N validation images")
    args = parser.parse_args()

    rows = [r for r in csv.DictReader(open(DEFAULT_LABELS, newline="")) if is_validation(r["id"])]
    if args.limit:
        rows = rows[: args.limit]
    inputs = [preprocess(Path(DEFAULT_IMAGES) / r["filename"]) for r in rows]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    reference = None
    print(f"{'model':<40} {'P@5 type':>9} {'P@5 colour':>10} {'cos fp32':>9} {'recall@5':>9} {'ort ms':>7}")
    for model in args.models:
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        vectors = np.stack([session.run(None, {INPUT_NAME: x})[0].reshape(-1) for x in inputs])
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -np.inf)
        top = np.argsort(-sims, axis=1)[:, :5]
        p5 = {
            c: float(np.mean([[rows[j][c] == rows[i][c] for j in top[i]] for i in range(len(rows))]))
            for c in ("articleType", "baseColour")
        }
        if reference is None:
            reference = (vectors, top)
        cosine = float(np.mean(np.sum(vectors * reference[0], axis=1)))
        recall = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top, reference[1])]))
        times = []
        for _ in range(30):
            start = time.perf_counter()
            session.run(None, {INPUT_NAME: inputs[0]})
            times.append((time.perf_counter() - start) * 1000)
        print(f"{Path(model).stem:<40} {p5['articleType']:>9.4f} {p5['baseColour']:>10.4f} {cosine:>9.4f} "
              f"{recall:>9.3f} {statistics.median(times):>7.1f}")


if __name__ == "__main__":
    main()
