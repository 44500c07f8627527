#!/usr/bin/env python3
"""Seeded shopper simulator: realistic kiosk scan logs for co-scan recommendations.

    python3 benches/shoppers.py --labels /work/shared/fashion/labels.csv --out /tmp/shoppers \\
        [--kiosks 3] [--days 28] [--shoppers-per-day 30] [--test-days 4] [--seed 1] \\
        [--max-bytes 0] [--keep 50] [--start 2026-11-02]

Writes, for K = 1..N, `OUT/train/kiosk-K/scans.jsonl` (sessions starting before the last T days)
and `OUT/test/kiosk-K/scans.jsonl` (the last T days), one JSON line per scan in the kiosk's
scan-log format, version 1 (see crates/pipeline/src/record.rs, `ScanRecord`; "colour" is left out):

    {"time":"2026-11-03T10:15:02.123Z","boot":"sim-1-2","scan":17,"outcome":"ok",
     "region":"reference","results":[{"id":"15970","score":0.912},…5 items],"coalesced":0,
     "latency_ms":{"wait":…,"capture":…,"foreground":…,"preprocess":…,"embed":…,"search":…,
                   "total":…}}

These logs are for testing and measuring "people who scanned this also looked at…" (co-scan)
recommendations: learn from train, check against test. Stdlib only; deterministic for a seed.

The catalogue
-------------
`--labels` is a labels CSV read by header name (case-insensitive; a BOM and surrounding spaces
are ignored; extra columns such as filename, season, year, usage or productDisplayName are
ignored). It needs `id`, `gender` and `articleType`; `subCategory`, `masterCategory` and
`baseColour` are used when present. Ids are kept as strings.

The shopper model
-----------------
- Stores. Each kiosk is a store with its own Zipf-like popularity over the items: every item has
  a chain-wide appeal (log-normal), each store multiplies it by its own log-normal taste, and the
  store ranks items by the result; the item of rank r weighs 1 / (r + 3) ** 0.9. Stores thus
  share bestsellers but differ in their long tails. Every pick "weighted by store popularity"
  below draws from these weights, restricted to the candidates.
- Shoppers. A shopper's gender is drawn in the catalogue's proportions (mostly Men and Women,
  some Unisex, Boys, Girls). They browse items of their gender plus Unisex ones (falling back
  to the whole catalogue where that leaves no candidate). They have 1-3 preferred articleTypes,
  each that of a random catalogue item of their gender (so common types are preferred more
  often), and 1-2 preferred baseColours, drawn in the proportions of their gender's items.
- Sessions. One shopper = one session at one kiosk: 1-8 scans (geometric-ish, weights
  .22 .19 .16 .13 .10 .08 .07 .05, mean ~3.5), 15-120 s apart (triangular, mode 35 s). Session
  starts spread over the opening hours 09:00-20:00 UTC with lunch-time and after-work peaks;
  sessions at one kiosk never overlap (one camera): they are pushed apart by at least 20 s,
  and on a day too full to hold them all, some are dropped (with a warning).
- Each scan picks the item in front of the camera:
  * p = 0.45, taste: an item of one of the shopper's preferred articleTypes in one of their
    preferred colours (any colour if the type has none in them), by store popularity;
  * p = 0.25, complete the look: an item of a subCategory that goes with the previous scan's
    (after Topwear: Bottomwear or Shoes, some Belts/Watches/Bags; after Bottomwear: Topwear,
    Shoes, Belts; after Shoes: Bottomwear, Topwear, Socks; after a Dress: Sandal, Shoes, Bags;
    … see LOOK), in a neutral colour or the previous item's colour where possible, by store
    popularity;
  * p = 0.10, a repeat of an item already scanned in the session;
  * else a store-popular item of the shopper's gender.
  The first scan of a session has nothing to complete or repeat and falls back to taste.
  So consecutive items in a session are related (same type or colour, or an outfit), which is
  the signal a co-scan recommender should find, under noise.
- Outcomes. About 3% of scans find nothing (`"outcome":"nothing"`, region "reference", empty
  results, only capture and foreground timed) and about 1% fail (`"outcome":"error"`,
  `"error":"camera lost"`, region "none", empty results); after a failed scan the shopper
  usually (p = 0.6) scans the same item again. About 2% of scans coalesce a second press.
- Results. `results[0]` is the scanned item (score 0.80-0.98); the other 4 are other items of
  the same articleType, the same colour first (the kiosk's search is visual), at decreasing
  scores. Each item has a fixed neighbour list (seeded by its id), lightly perturbed per scan
  (two neighbours swapped, or the 5th promoted), as a real camera's varying view does. Where an
  articleType has fewer than 5 items, the list is filled from the same subCategory, then the
  same masterCategory, then anything.
- Latency. wait ~0.4 ms, capture ~0.5, foreground ~6, preprocess ~0.1, embed ~540 (a few slow
  scans up to ~1.2 s, a warm Pi 4), search ~15 ms scaled by catalogue size; total is their sum
  plus the log write. The line's time is the press time plus the total.
- Boots. Each kiosk's service starts each day: boot "sim-K-DAY" (DAY from 1); on about 5% of
  days it restarts between two sessions, continuing as "sim-K-DAY-r2". `scan` counts from 1
  within a boot.
- Split. Days 1..D-T go to train, days D-T+1..D to test. Sessions never span days, so every
  session (and every boot) is wholly in one split.

Logs rotate like the kiosk's (src/scanlog.rs) when `--max-bytes` is set: before a line would
take `scans.jsonl` past B bytes (and it is not empty), `scans.jsonl.(keep-1)` → `.keep` (the
oldest dropped) … `scans.jsonl` → `.1`. Existing `scans.jsonl*` files in the output kiosk
folders are removed first, so a run always starts from empty logs.

Randomness comes from random.Random instances seeded by hashing (seed, purpose, kiosk, day), so
a run is reproducible byte for byte, and e.g. a longer `--days` leaves the earlier days as they
were. Dicts and sets are iterated in sorted order.

At the end, one summary line per split: sessions, scans (by outcome), distinct scanned items,
mean session length.
"""

import argparse
import bisect
import csv
import datetime as dt
import hashlib
import itertools
import json
import re
import sys
from pathlib import Path
import random

ROTATED = re.compile(r"^scans\.jsonl(\.\d+)?$")

# Neutral colours go with anything when completing a look.
NEUTRALS = (
    "Beige", "Black", "Brown", "Charcoal", "Cream", "Grey", "Grey Melange", "Khaki", "Navy Blue",
    "Off White", "Silver", "Steel", "Tan", "White",
)

# What completes the look after an item of a subCategory: (subCategory, weight).
LOOK = {
    "Topwear": (("Bottomwear", 5), ("Shoes", 3), ("Belts", 1), ("Watches", 1), ("Bags", 1)),
    "Bottomwear": (("Topwear", 5), ("Shoes", 3), ("Belts", 1), ("Flip Flops", 0.5)),
    "Dress": (("Sandal", 3), ("Shoes", 3), ("Bags", 2), ("Jewellery", 1), ("Watches", 1)),
    "Saree": (("Sandal", 2), ("Jewellery", 2), ("Bags", 1)),
    "Apparel Set": (("Shoes", 2), ("Socks", 1), ("Headwear", 1)),
    "Innerwear": (("Innerwear", 3), ("Loungewear and Nightwear", 2), ("Socks", 1)),
    "Loungewear and Nightwear": (("Innerwear", 2), ("Flip Flops", 2)),
    "Shoes": (("Bottomwear", 4), ("Topwear", 3), ("Socks", 2), ("Shoe Accessories", 0.5)),
    "Sandal": (("Bottomwear", 3), ("Topwear", 2), ("Dress", 2), ("Bags", 1)),
    "Flip Flops": (("Bottomwear", 3), ("Topwear", 2), ("Eyewear", 1), ("Headwear", 1)),
    "Socks": (("Shoes", 4), ("Innerwear", 1)),
    "Shoe Accessories": (("Shoes", 3), ("Socks", 1)),
    "Bags": (("Wallets", 2), ("Shoes", 2), ("Watches", 1), ("Topwear", 1)),
    "Wallets": (("Belts", 3), ("Watches", 2), ("Bags", 1)),
    "Belts": (("Bottomwear", 3), ("Wallets", 2), ("Shoes", 1)),
    "Watches": (("Wallets", 2), ("Eyewear", 2), ("Belts", 1), ("Topwear", 1)),
    "Eyewear": (("Headwear", 2), ("Watches", 2), ("Topwear", 1)),
    "Headwear": (("Eyewear", 2), ("Topwear", 2), ("Scarves", 1)),
    "Ties": (("Topwear", 4), ("Cufflinks", 2), ("Belts", 1)),
    "Cufflinks": (("Ties", 3), ("Topwear", 2), ("Watches", 1)),
    "Scarves": (("Topwear", 3), ("Gloves", 1), ("Headwear", 1), ("Bags", 1)),
    "Stoles": (("Topwear", 3), ("Dress", 1), ("Bags", 1)),
    "Mufflers": (("Topwear", 2), ("Gloves", 2), ("Headwear", 2)),
    "Gloves": (("Mufflers", 3), ("Headwear", 2), ("Scarves", 1)),
    "Jewellery": (("Dress", 2), ("Bags", 1), ("Watches", 1)),
    "Fragrance": (("Fragrance", 2), ("Watches", 2), ("Wallets", 1)),
}
LOOK_DEFAULT = (("Topwear", 3), ("Shoes", 2), ("Bags", 1))

SESSION_LENGTH_WEIGHTS = (0.22, 0.19, 0.16, 0.13, 0.10, 0.08, 0.07, 0.05)  # 1..8 scans
OPEN_MS, CLOSE_MS = 9 * 3_600_000, 20 * 3_600_000
# Relative arrivals per opening hour, 09:00 … 19:00.
HOUR_WEIGHTS = (0.5, 0.7, 0.9, 1.3, 1.3, 1.0, 0.9, 1.0, 1.3, 1.4, 1.0)
SESSION_GAP_MS = 20_000
P_TASTE, P_LOOK, P_REPEAT = 0.45, 0.25, 0.10
P_NOTHING, P_ERROR, P_RETRY, P_COALESCED, P_RESTART = 0.03, 0.01, 0.6, 0.02, 0.05
REFERENCE_CATALOGUE = 9583  # search takes ~15 ms over this many items


def rng_for(seed, *parts):
    """An independent, reproducible stream for one purpose (store, kiosk-day, item…)."""
    text = "/".join(str(p) for p in (seed,) + parts)
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


class Item:
    __slots__ = ("index", "id", "gender", "master", "sub", "atype", "colour")

    def __init__(self, index, id, gender, master, sub, atype, colour):
        self.index = index
        self.id = id
        self.gender = gender
        self.master = master
        self.sub = sub
        self.atype = atype
        self.colour = colour


def read_labels(path):
    """Items in file order, and the header as found."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise SystemExit(f"{path}: empty file") from None
        columns = {name.strip().lower(): i for i, name in enumerate(header)}

        def column(*names, required=False):
            for name in names:
                if name.lower() in columns:
                    return columns[name.lower()]
            if required:
                raise SystemExit(f"{path}: no {names[0]!r} column (header: {','.join(header)})")
            return None

        c_id = column("id", required=True)
        c_gender = column("gender", required=True)
        c_atype = column("articleType", "article_type", required=True)
        c_sub = column("subCategory", "sub_category")
        c_master = column("masterCategory", "master_category")
        c_colour = column("baseColour", "baseColor", "base_colour", "colour", "color")

        def get(row, c, default):
            if c is None or c >= len(row):
                return default
            return row[c].strip() or default

        items, seen = [], set()
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            id = get(row, c_id, "")
            if not id or id in seen:
                continue
            seen.add(id)
            atype = get(row, c_atype, "Unknown")
            sub = get(row, c_sub, atype)
            items.append(Item(len(items), id, get(row, c_gender, "Unisex"),
                              get(row, c_master, sub), sub, atype, get(row, c_colour, "NA")))
    if not items:
        raise SystemExit(f"{path}: no items")
    return items, [name.strip() for name in header]


def weighted(rng, choices):
    """One of `choices`, a sequence of (value, weight)."""
    values = [c for c, _ in choices]
    return rng.choices(values, weights=[w for _, w in choices])[0]


class Catalogue:
    def __init__(self, items):
        self.items = items
        self.genders = sorted({i.gender for i in items})
        self.gender_counts = {g: sum(1 for i in items if i.gender == g) for g in self.genders}
        self.by = {}  # (field, value, …) → [item index], in file order
        for item in items:
            for key in (
                ("g", item.gender),
                ("ga", item.gender, item.atype),
                ("gac", item.gender, item.atype, item.colour),
                ("gs", item.gender, item.sub),
                ("gsc", item.gender, item.sub, item.colour),
                ("a", item.atype),
                ("ac", item.atype, item.colour),
                ("s", item.sub),
                ("m", item.master),
            ):
                self.by.setdefault(key, []).append(item.index)
        self.colours_of = {}  # gender → [(colour, count)]
        for g in self.genders:
            counts = {}
            for index in self.by[("g", g)]:
                colour = items[index].colour
                counts[colour] = counts.get(colour, 0) + 1
            self.colours_of[g] = sorted(counts.items())
        self.cache = {}
        self.neighbours_cache = {}

    def pools(self, gender):
        """The genders a shopper browses, then the fallback: everyone."""
        own = tuple(sorted({gender, "Unisex"} & set(self.genders)))
        return (own, tuple(self.genders))

    def candidates(self, genders, kind, *values, colours=None):
        """Item indices of `genders` with the given articleType ("a") or subCategory ("s") or
        neither (""), restricted to `colours` if given."""
        key = (genders, kind, values, colours)
        found = self.cache.get(key)
        if found is None:
            found = []
            for g in genders:
                if colours is None:
                    found.extend(self.by.get(("g" + kind, g) + values, ()))
                else:
                    for colour in colours:
                        found.extend(self.by.get(("g" + kind + "c", g) + values + (colour,), ()))
            found = sorted(found)
            self.cache[key] = found
        return found

    def neighbours(self, seed, item):
        """A fixed, ordered list of up to 6 look-alikes of `item` (not itself)."""
        found = self.neighbours_cache.get(item.index)
        if found is not None:
            return found
        rng = rng_for(seed, "neighbours", item.id)
        found, taken = [], {item.index}

        def add(pool, want):
            if want <= 0 or not pool:
                return
            if len(pool) <= 256:
                free = [i for i in pool if i not in taken]
                picked = rng.sample(free, min(want, len(free)))
            else:  # at most len(taken) of the sample are taken: enough remain
                sample = rng.sample(pool, min(len(pool), want + len(taken)))
                picked = [i for i in sample if i not in taken][:want]
            taken.update(picked)
            found.extend(picked)

        for pool in (self.by.get(("ac", item.atype, item.colour), []), self.by[("a", item.atype)],
                     self.by[("s", item.sub)], self.by[("m", item.master)]):
            add(pool, 6 - len(found))
        if len(found) < 5:
            add(list(range(len(self.items))), 6 - len(found))
        self.neighbours_cache[item.index] = found
        return found


class Store:
    """One kiosk's popularity over the catalogue, and cumulative weights per candidate list."""

    def __init__(self, seed, kiosk, catalogue):
        chain = rng_for(seed, "chain")
        appeal = [chain.lognormvariate(0.0, 1.0) for _ in catalogue.items]
        local = rng_for(seed, "store", kiosk)
        score = [a * local.lognormvariate(0.0, 0.8) for a in appeal]
        order = sorted(range(len(score)), key=lambda i: (-score[i], i))
        self.weight = [0.0] * len(order)
        for rank, index in enumerate(order):
            self.weight[index] = 1.0 / (rank + 3) ** 0.9
        self.cumulative = {}

    def pick(self, rng, candidates):
        key = id(candidates)  # candidate lists are cached and live for the whole run
        entry = self.cumulative.get(key)
        if entry is None or entry[0] is not candidates:
            entry = (candidates, list(itertools.accumulate(self.weight[i] for i in candidates)))
            self.cumulative[key] = entry
        cum = entry[1]
        return candidates[bisect.bisect_right(cum, rng.random() * cum[-1]) if cum[-1] > 0 else 0]


class Shopper:
    def __init__(self, rng, catalogue):
        genders = catalogue.genders
        self.gender = rng.choices(genders, weights=[catalogue.gender_counts[g] for g in genders])[0]
        own = catalogue.by[("g", self.gender)]
        types = []
        for _ in range(rng.choice((1, 1, 2, 2, 2, 3))):
            atype = catalogue.items[rng.choice(own)].atype
            if atype not in types:
                types.append(atype)
        self.types = types
        colours = catalogue.colours_of[self.gender]
        self.colours = []
        for _ in range(rng.choice((1, 2, 2))):
            colour = weighted(rng, colours)
            if colour not in self.colours:
                self.colours.append(colour)
        self.colours = tuple(sorted(self.colours))
        self.pools = catalogue.pools(self.gender)


def pick_first(rng, store, catalogue, shopper, attempts):
    """Store-weighted pick among the first non-empty candidate list of `attempts`
    ((kind, values, colours) tried in each pool in turn)."""
    for pool in shopper.pools:
        for kind, values, colours in attempts:
            found = catalogue.candidates(pool, kind, *values, colours=colours)
            if found:
                return store.pick(rng, found)
    return store.pick(rng, catalogue.candidates(shopper.pools[-1], ""))


def next_item(rng, store, catalogue, shopper, session):
    """The item index of the next scan, given the items scanned so far in the session."""
    r = rng.random()
    items = catalogue.items
    if session and r < P_TASTE + P_LOOK and r >= P_TASTE:
        previous = items[session[-1]]
        sub = weighted(rng, LOOK.get(previous.sub, LOOK_DEFAULT))
        colours = tuple(sorted(set(NEUTRALS) | {previous.colour}))
        return pick_first(rng, store, catalogue, shopper,
                          (("s", (sub,), colours), ("s", (sub,), None)))
    if session and P_TASTE + P_LOOK <= r < P_TASTE + P_LOOK + P_REPEAT:
        return rng.choice(session)
    if r < P_TASTE + P_LOOK + P_REPEAT:  # taste (and the fallback of a first scan)
        atype = rng.choice(shopper.types)
        return pick_first(rng, store, catalogue, shopper,
                          (("a", (atype,), shopper.colours), ("a", (atype,), None)))
    return pick_first(rng, store, catalogue, shopper, (("", (), None),))


def results_for(rng, seed, catalogue, item):
    near = list(catalogue.neighbours(seed, item))
    if len(near) >= 5 and rng.random() < 0.15:
        near[3], near[4] = near[4], near[3]
    if len(near) >= 4 and rng.random() < 0.2:
        k = rng.randrange(len(near[:4]) - 1)
        near[k], near[k + 1] = near[k + 1], near[k]
    score = rng.uniform(0.80, 0.98)
    results = [{"id": item.id, "score": round(score, 6)}]
    score -= rng.uniform(0.03, 0.15)
    for index in near[:4]:
        score = max(score, 0.05)
        results.append({"id": catalogue.items[index].id, "score": round(score, 6)})
        score -= rng.uniform(0.003, 0.04)
    return results


def latency(rng, catalogue_size, outcome, coalesced):
    wait = rng.uniform(0.3, 0.6) + (rng.uniform(50.0, 600.0) if coalesced else 0.0)
    capture = rng.uniform(0.35, 0.9)
    foreground = preprocess = embed = search = 0.0
    if outcome == "error":
        capture = rng.uniform(0.05, 0.2)
    else:
        foreground = rng.gauss(6.0, 0.8)
        if outcome == "ok":
            preprocess = rng.uniform(0.08, 0.2)
            embed = rng.gauss(540.0, 18.0)
            if rng.random() < 0.03:  # thermal throttling, a busy SD card …
                embed += rng.uniform(100.0, 650.0)
            search = max(0.05, rng.gauss(15.0, 1.5) * catalogue_size / REFERENCE_CATALOGUE)
    total = wait + capture + foreground + preprocess + embed + search + rng.uniform(0.8, 4.0)
    return {
        "wait": round(wait, 6),
        "capture": round(capture, 6),
        "foreground": round(max(foreground, 0.0), 6),
        "preprocess": round(preprocess, 6),
        "embed": round(embed, 6),
        "search": round(search, 6),
        "total": round(total, 6),
    }


def simulate_session(rng, store, catalogue, shopper):
    """[(offset_ms from the first press, item index, outcome)]."""
    n = rng.choices(range(1, 9), weights=SESSION_LENGTH_WEIGHTS)[0]
    scanned, scans, offset, retry = [], [], 0, None
    for k in range(n):
        if k:
            offset += int(rng.triangular(15.0, 120.0, 35.0) * 1000) + rng.randrange(1000)
        index = retry if retry is not None else next_item(rng, store, catalogue, shopper, scanned)
        r = rng.random()
        outcome = "nothing" if r < P_NOTHING else "error" if r < P_NOTHING + P_ERROR else "ok"
        retry = None
        if outcome == "ok":
            scanned.append(index)
        elif rng.random() < P_RETRY:
            retry = index
        scans.append((offset, index, outcome))
    return scans


def schedule(rng, durations):
    """Non-overlapping start times (ms in the day) for sessions of the given durations, or None
    for those dropped on a day too full."""
    n = len(durations)
    keep = list(range(n))
    while keep and sum(durations[i] for i in keep) + SESSION_GAP_MS * (len(keep) - 1) > (
        CLOSE_MS - OPEN_MS
    ):
        keep.pop()
    wanted = []
    for i in keep:
        hour = rng.choices(range(len(HOUR_WEIGHTS)), weights=HOUR_WEIGHTS)[0]
        wanted.append(OPEN_MS + hour * 3_600_000 + rng.randrange(3_600_000))
    wanted.sort()
    # Forward: no overlaps; backward: all before closing. Sessions are alike, so which takes
    # which slot does not matter.
    times = []
    for t, i in zip(wanted, keep):
        if times:
            t = max(t, times[-1][0] + durations[times[-1][1]] + SESSION_GAP_MS)
        times.append([t, i])
    latest = CLOSE_MS
    for pair in reversed(times):
        t, i = pair
        pair[0] = min(t, latest - durations[i])
        latest = pair[0] - SESSION_GAP_MS
    starts = {i: t for t, i in times}
    return [starts.get(i) for i in range(n)]


class Log:
    """A scan log written like the kiosk's, rotated before a line would pass `max_bytes`."""

    def __init__(self, path, max_bytes, keep):
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in sorted(path.parent.iterdir()):
            if ROTATED.match(old.name) and old.is_file():
                old.unlink()
        self.file = open(path, "wb")
        self.size = 0
        self.lines = 0
        self.last_time = ""

    def rotated(self, n):
        return self.path.with_name(f"{self.path.name}.{n}")

    def append(self, record):
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        if self.max_bytes and self.size > 0 and self.size + len(line) > self.max_bytes:
            self.file.close()
            if self.keep == 0:
                self.file = open(self.path, "wb")
            else:
                oldest = self.rotated(self.keep)
                if oldest.exists():
                    oldest.unlink()
                for n in range(self.keep - 1, 0, -1):
                    if self.rotated(n).exists():
                        self.rotated(n).rename(self.rotated(n + 1))
                self.path.rename(self.rotated(1))
                self.file = open(self.path, "wb")
            self.size = 0
        assert record["time"] > self.last_time, "times must increase within a log"
        self.last_time = record["time"]
        self.file.write(line)
        self.size += len(line)
        self.lines += 1

    def close(self):
        self.file.close()


def timestamp(day, ms):
    t = day + dt.timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class Tally:
    def __init__(self):
        self.sessions = 0
        self.lengths = 0
        self.outcomes = {"ok": 0, "nothing": 0, "error": 0}
        self.items = set()
        self.dropped = 0

    def line(self, name):
        scans = sum(self.outcomes.values())
        mean = self.lengths / self.sessions if self.sessions else 0.0
        outcomes = " ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items()))
        dropped = f" dropped_sessions={self.dropped}" if self.dropped else ""
        return (f"{name}: sessions={self.sessions} scans={scans} ({outcomes}) "
                f"distinct_items={len(self.items)} mean_session_length={mean:.2f}{dropped}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Seeded shopper simulator: writes kiosk scan logs (train/test) for co-scan "
        "recommendations. See the module docstring for the shopper model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--labels", required=True, type=Path,
                        help="catalogue labels CSV (id,gender,…,articleType,baseColour,…)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: OUT/{train,test}/kiosk-K/scans.jsonl")
    parser.add_argument("--kiosks", type=int, default=3, help="kiosks (stores)")
    parser.add_argument("--days", type=int, default=28, help="days simulated")
    parser.add_argument("--shoppers-per-day", type=int, default=30,
                        help="shoppers (sessions) per kiosk per day")
    parser.add_argument("--test-days", type=int, default=4,
                        help="the last this many days go to the test logs")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--max-bytes", type=int, default=0,
                        help="rotate scans.jsonl before a line would take it past this many "
                        "bytes (0: never)")
    parser.add_argument("--keep", type=int, default=50, help="rotated files kept")
    parser.add_argument("--start", default="2026-11-02", help="first day (UTC), YYYY-MM-DD")
    args = parser.parse_args(argv)
    if args.kiosks < 1 or args.days < 1 or args.shoppers_per_day < 0:
        parser.error("--kiosks and --days must be at least 1, --shoppers-per-day at least 0")
    if not 0 <= args.test_days <= args.days:
        parser.error("--test-days must be between 0 and --days")
    if args.max_bytes < 0 or args.keep < 0:
        parser.error("--max-bytes and --keep must not be negative")
    try:
        start = dt.datetime.strptime(args.start, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        parser.error("--start must be YYYY-MM-DD")

    items, _header = read_labels(args.labels)
    catalogue = Catalogue(items)
    split_day = args.days - args.test_days
    tallies = {"train": Tally(), "test": Tally()}
    for kiosk in range(1, args.kiosks + 1):
        store = Store(args.seed, kiosk, catalogue)
        logs = {
            split: Log(args.out / split / f"kiosk-{kiosk}" / "scans.jsonl", args.max_bytes,
                       args.keep)
            for split in ("train", "test")
        }
        for day in range(args.days):
            split = "train" if day < split_day else "test"
            tally, log = tallies[split], logs[split]
            rng = rng_for(args.seed, "kiosk", kiosk, "day", day)
            sessions = []
            for _ in range(args.shoppers_per_day):
                shopper = Shopper(rng, catalogue)
                sessions.append(simulate_session(rng, store, catalogue, shopper))
            # Room for the last scan's latency and log write after its press.
            starts = schedule(rng, [s[-1][0] + 3_000 for s in sessions])
            dropped = sum(1 for t in starts if t is None)
            tally.dropped += dropped
            placed = sorted((t, i) for i, t in enumerate(starts) if t is not None)
            restart_after = (rng.randrange(len(placed) - 1)
                             if len(placed) > 1 and rng.random() < P_RESTART else None)
            date = start + dt.timedelta(days=day)
            boot, scan = f"sim-{kiosk}-{day + 1}", 0
            for n, (t0, i) in enumerate(placed):
                tally.sessions += 1
                tally.lengths += len(sessions[i])
                for offset, index, outcome in sessions[i]:
                    item = items[index]
                    coalesced = 1 if rng.random() < P_COALESCED else 0
                    lat = latency(rng, len(items), outcome, coalesced)
                    scan += 1
                    record = {
                        "time": timestamp(date, t0 + offset + int(lat["total"])),
                        "boot": boot,
                        "scan": scan,
                        "outcome": outcome,
                    }
                    if outcome == "error":
                        record["error"] = "camera lost"
                    record["region"] = "none" if outcome == "error" else "reference"
                    if outcome == "ok":
                        record["results"] = results_for(rng, args.seed, catalogue, item)
                        tally.items.add(item.id)
                    else:
                        record["results"] = []
                    record["coalesced"] = coalesced
                    record["latency_ms"] = lat
                    log.append(record)
                    tally.outcomes[outcome] += 1
                if n == restart_after:
                    boot, scan = f"sim-{kiosk}-{day + 1}-r2", 0
        for log in logs.values():
            log.close()
    dropped = sum(t.dropped for t in tallies.values())
    if dropped:
        print(f"warning: {dropped} sessions did not fit in their kiosk-day's opening hours (one "
              "camera, sessions never overlap) and were dropped", file=sys.stderr)
    for split in ("train", "test"):
        print(tallies[split].line(split))


if __name__ == "__main__":
    main()
