#!/usr/bin/env python3
"""Synthetic part files for timing `fashion-kiosk merge` at scale, written by pyarrow (so they
also show that a part made by another tool merges): N items of random unit vectors over P parts,
with the key-value metadata `index --shard` writes (docs/large-catalogues.md). Seeded.

    python3 benches/synthetic_parts.py --items 100000 --parts 10 --out DIR --fingerprint HEX64
    /usr/bin/time -v fashion-kiosk merge DIR/part-*.parquet --out DIR/table.fkt

Needs numpy and pyarrow.
"""
import argparse
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--parts", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fingerprint", required=True, help="the model's 64 hex digits")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    element = pa.field("element", pa.float32(), nullable=False)
    for part in range(args.parts):
        first = part * args.items // args.parts
        count = (part + 1) * args.items // args.parts - first
        vectors = rng.standard_normal((count, args.dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [str(first + i) for i in range(count)]
        schema = pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("source", pa.string(), nullable=False),
                pa.field("digest", pa.string(), nullable=False),
                pa.field("vector", pa.list_(element), nullable=False),
            ],
            metadata={
                "fashion_kiosk.part": "1",
                "fashion_kiosk.fingerprint": args.fingerprint,
                "fashion_kiosk.dim": str(args.dim),
                "fashion_kiosk.shard": f"{part}/{args.parts}",
                "fashion_kiosk.columns": "[]",
                "fashion_kiosk.skipped": json.dumps([]),
            },
        )
        offsets = pa.array(np.arange(0, (count + 1) * args.dim, args.dim, dtype=np.int32))
        table = pa.table(
            {
                "id": ids,
                "source": [f"{i}.jpg" for i in ids],
                "digest": ["0" * 64] * count,
                "vector": pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)), type=pa.list_(element)),
            },
            schema=schema,
        )
        pq.write_table(table, f"{args.out}/part-{part}.parquet", compression="snappy")
    print(f"{args.items} items in {args.parts} parts in {args.out}")


if __name__ == "__main__":
    main()
