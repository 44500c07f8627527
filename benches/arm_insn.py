#!/usr/bin/env python3
"""Instructions one embedding executes on a Raspberry Pi's core (qemu-user), by pass.

Counts `fashion-kiosk bench --threads 1 --model M --runs LO` and `--runs HI` with the shared tool
../shared/tools/arm-insn/count: per embedding = the difference / (HI - LO). One more bench run
decodes the image once, preprocesses it twice and runs the network once: the network is the
difference less decode/preprocess code; one embedding's decode + preprocess is given beside it.
--startup: one whole `fashion-kiosk query` run, and start-up = it minus one bench embedding.
--search: one top-5 search in --table, from `bench --search-only --table T --runs LO` and `HI`.
A stripped binary (the release profile's, as CI builds it) gives the total per embedding only.
  CARGO_TARGET_DIR=target/insn CARGO_PROFILE_RELEASE_STRIP=none cargo build --release \\
      --target aarch64-unknown-linux-gnu; B=target/insn/aarch64-unknown-linux-gnu/release/fashion-kiosk
  benches/arm_insn.py --binary $B --cpu cortex-a76 --model models/fashion-resnet50-int8.manifest.json
  benches/arm_insn.py --binary $B --cpu cortex-a76 --startup --table T.fkt   # T made with that model
  benches/arm_insn.py --binary $B --cpu cortex-a76 --search --table T.fkt --runs 1,21

The tool's plugin lists only its top 40 functions and puts tract's assembly kernels and libc under
"(no symbol)": `count` runs here with a build of it changed by PATCH (below). Counts are not cycles.
Needs gcc, qemu-user, readelf and aarch64-linux-gnu-objdump (binutils-aarch64-linux-gnu).
"""
import argparse, bisect, collections, os, re, subprocess, sys  # noqa: E401
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ESC = {"LT": "<", "GT": ">", "RF": "&", "BP": "*", "C": ",", "LP": "(", "RP": ")"}  # and $uXX$

# (category, regex on the demangled name + hint()'s tag), first match wins: from the functions the
# a76/a72 int8/fp32 bench and query runs execute (tract 0.23.9); lists in /work/diag/insn/REPORT.md.
PREPROCESS = [("decode", r"zune_jpeg|jpeg|png::|decode_file"), ("preprocess", r"kiosk_vision::preprocess")]
AROUND = [
    ("f16->f32", r"half::|\[f16->f32\]"),
    ("u8->i8 / casts", r"OffsetU8asI8|natural_cast|ops::cast"),
    ("im2col", r"im2col"),
    ("packing", r"tract_linalg::frame::pack|OptMatMulPack|pack_|ops::matmul::pack::"),
    ("activation sums", r"q_sum|ndarray.*::fold$"),             # fold: q_sum_t's inner loop
    ("(de)quantise", r"[Qq]uantize|quant::|\[f32->u8"),
    ("residual add + ReLU", r"unicast|TypedBinOp|binary::|by_scalar|element_wise|\[f32 max"),
    ("pooling", r"pool|reduce|impl_numeric::.*sum"),
    ("copies", r"to_owned|to_vec_mapped|(libc / ld.so)"),       # libc: mostly memcpy (see REPORT)
]
NETWORK = [("kernels", r"^arm64(simd|fp16)_mmm_")] + AROUND + [  # tract's assembly mat-mul kernels
    ("mmm driver", r"tract_linalg::frame::mmm|sys_arm64simd_mmm|MatMatMul|OptMatMul::eval|\[mmm scratch"),
]
STARTUP = [("sha256", r"sha2::|[Ss]ha256"),  # checked first, for a whole `query` run
           ("protobuf/ONNX parse", r"prost|tract_onnx::pb|tract_onnx::model|tract_onnx::ops|tract_hir"),
           ("f16->f32 weights", r"half::|\[f16->f32\]"),
           ("optimise/declutter/codegen", r"tract_core::(model|optim|axes|ops::change_axes)|declutter|codegen|"
            r"DynEq|type_id|as_op|Tensor as core::cmp|eq_dt|SlicePartialEq|TDim|hash|smallvec|bit_set"),
           ("weight packing", r"tract_linalg::frame::pack|OptMatMulPack|pack_|ops::matmul::pack::"),
           ("libc (malloc, memcpy, ...)", r"libc / ld.so")]
SEARCH = [("first stage", r"prefilter::"), ("rows scored (both)", r"i8_score|i8_row|crc32fast|dot_i8"),
          ("every item scored (the check)", r"Table::scan|nearest_by_scan"),
          ("queries, timing", r"bench::|Noise|Instant|Timespec|fmt|stdio")]
QUERY = [("foreground", r"kiosk_vision::foreground"), ("search", r"catalogue|nearest")]
MNEMONICS = ["sdot(elem)", "sdot(vec)", "smlal", "smlal2", "fmla"]
G = lambda n: f"{n / 1e9:.3f}"  # noqa: E731  (giga-instructions)
STRIPPED = "(stripped binary)"


def demangle(s):
    """Rust legacy mangling (_ZN...E) to a::b::c without the hash; a cut name keeps what it has."""
    if not s.startswith("_ZN"):
        return s
    i, parts = 3, []
    while i < len(s) and s[i].isdigit():
        n = re.match(r"\d+", s[i:]).group()
        part, i = s[i + len(n):i + len(n) + int(n)], i + len(n) + int(n)
        if re.fullmatch(r"h[0-9a-f]{16}", part):  # the hash
            break
        part = re.sub(r"\$(u[0-9a-f]{2}|[A-Z]{1,2})\$", lambda m: ESC.get(m[1]) or chr(int(m[1][1:], 16)),
                      part[1:] if part.startswith("_$") else part)
        parts.append(part.replace("..", "::"))
    return "::".join(parts)


def parse(path):
    """The tool's output: total_insns N, then '# mnemonics (top K)' and '# symbols (top K)'."""
    head, sections, cur = {}, {"mnemonics": {}, "symbols": {}}, None
    for line in Path(path).read_text().splitlines():
        if line.startswith("# "):
            cur = sections[line.split()[1]]
        elif cur is None and line.strip():
            head[line.split()[0]] = int(line.split()[1])  # total_insns, main_vaddr
        elif line.strip():
            name, count, _pct = line.rsplit(None, 2)
            cur[name.strip()] = cur.get(name.strip(), 0) + int(count)
    return head["total_insns"], sections["mnemonics"], sections["symbols"], head.get("main_vaddr")


# The plugin, changed to list every function with its whole name, to name code outside an ELF FUNC
# symbol by its 64-byte block ("?<vaddr>") and to print where `main` was loaded.
PATCH = [
    ("#define SLOTS 8192", "#define SLOTS 32768"),
    ("[64]", "[512]"),  # struct slot's name and counter()'s key
    ("mnems, 60);", "mnems, SLOTS);"),
    ("syms, 40);", "syms, SLOTS);"),
    ("static uint64_t total;", "static uint64_t total, main_vaddr = UINT64_MAX;\n"
     "uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);"),
    ('if (!s) s = "(no symbol)";',
     'char nb[32]; uint64_t va = qemu_plugin_insn_vaddr(insn);\n'
     '            if (s && !strcmp(s, "main") && va < main_vaddr) main_vaddr = va;\n'
     '            if (!s) { snprintf(nb, sizeof nb, "?%" PRIx64, va & ~(uint64_t)63); s = nb; }'),
    ('fprintf(f, "total_insns %" PRIu64 "\\n", total);',
     'fprintf(f, "total_insns %" PRIu64 "\\nmain_vaddr %" PRIu64 "\\n", total, main_vaddr);'),
]


def build_plugin(count, cache):
    """Builds the patched plugin where `count` looks for it under TMPDIR=cache."""
    src = (Path(count).parent / "insncount.c").read_text()
    for old, new in PATCH:
        assert old in src, f"insncount.c changed: cannot find {old!r}"
        src = src.replace(old, new)
    lib, c = cache / f"arm-insn-{os.getuid()}" / "libinsncount.so", cache / "insncount-full.c"
    lib.parent.mkdir(parents=True, exist_ok=True)
    c.write_text(src)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(c)], check=True)


GENERIC = r"natural_cast|FnOnce9call_once|LocalKey"
HINTS = [("mmm scratch", r"TLSScratch|run_blocked"), ("f16->f32", r"f16_to_f32|fcvtl\s"),
         ("f32->u8 quantise", r"fcvtzs[\s\S]*uzp1"), ("int widen", r"sxtl|ldrsb|uxtl"),
         ("int->f32", r"scvtf|ucvtf"), ("f32 max (ReLU)", r"fmax\s")]
_code = {}


def hint(mangled, binary):
    """What a generic function whose name says little (Tensor::natural_cast: every Cast; call_once:
    an element-wise op's closure; LocalKey::with: scratch of tract's kernels) does, from its code."""
    if not _code and re.search(GENERIC, mangled):  # disassemble once, keep the generic functions
        dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", binary],
                             capture_output=True, text=True).stdout
        for block in re.split(r"\n(?=[0-9a-f]+ <)", dis):
            head = block[:block.find("\n")]
            if re.search(GENERIC, head):
                _code[head[head.find("<") + 1:head.rfind(">")]] = block
    return next((f" [{tag}]" for tag, rx in HINTS if re.search(rx, _code.get(mangled, ""))), "")


def run_count(args, extra, runs, tag):
    out = Path(args.out_dir) / f"{args.cpu}-{tag}-runs{runs}.txt"
    if args.fresh or not out.exists():
        cache = Path(args.out_dir) / "plugin"
        build_plugin(args.count, cache)  # newer than insncount.c: `count` uses it as it is
        cmd = [args.count, "--cpu", args.cpu, "--out", str(out), "--", args.binary] + extra
        print("$", " ".join(cmd), file=sys.stderr)
        log_path = Path(str(out) + ".log")  # the program's output and count's dump
        with open(log_path, "w") as log:
            ran = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, TMPDIR=str(cache)), stdout=log, stderr=log)
        if ran.returncode != 0:
            out.unlink(missing_ok=True)  # a failed run's counts are not reused by the next call
            last = (log_path.read_text().strip().splitlines() or ["(no output)"])[-1]
            sys.exit(f"{args.binary} {' '.join(extra)}: exit status {ran.returncode}: {last} (all of it: {log_path})")
    return resolve(parse(out), args.binary)


def resolve(counted, binary):
    """Names "?<vaddr>" blocks by the binary's FUNC or global label (tract's kernels) at or before."""
    total, mnems, syms, main_vaddr = counted
    listing = subprocess.run(["readelf", "-sW", binary], check=True, capture_output=True, text=True)
    table = sorted((int(f[1], 16), int(f[2]), f[7]) for f in map(str.split, listing.stdout.splitlines())
                   if len(f) == 8 and f[6].isdigit() and (f[3] == "FUNC" or f[3:5] == ["NOTYPE", "GLOBAL"]))
    if not any(t[2] == "main" for t in table):  # a stripped build (the shipped one, CI's): totals only
        return total, mnems, collections.Counter({STRIPPED: sum(syms.values())})
    starts, end = [t[0] for t in table], max(a + n for a, n, _ in table)
    bias = main_vaddr - next(t[0] for t in table if t[2] == "main")
    out = collections.Counter()
    for name, n in syms.items():
        if name.startswith("?"):
            a = int(name[1:], 16) - bias
            i = bisect.bisect_right(starts, a) - 1
            name = table[i][2] if 0 <= i and a < end else "(libc / ld.so)"
        out[demangle(name) + hint(name, binary)] += n
    return total, mnems, out


def category(name, rules, default="other"):
    return next((c for c, rx in rules if re.search(rx, name)), default)


def categorise(symbols, rules, default="other"):
    cats = collections.Counter()
    for name, n in symbols.items():
        cats[category(name, rules, default)] += n
    return cats


def difference(more, less, per=1):
    """{function: count} of `more` less `less`, divided by `per` (runs between them)."""
    return {s: (more.get(s, 0) - less.get(s, 0)) / per for s in set(more) | set(less)}


def per_embedding(args):
    """(total, {symbol: count}, {mnemonic: count}) of one more `bench` run, and the model's tag."""
    tag = Path(args.model).name.split(".")[0]
    extra = ["bench", "--model", args.model, "--threads", "1"] + (["--image", args.image] * bool(args.image))
    lo, hi = (run_count(args, extra + ["--runs", str(r)], r, tag) for r in (args.lo, args.hi))
    k = args.hi - args.lo
    syms = difference(hi[2], lo[2], k)
    step = difference(hi[1], lo[1], k)
    mn = {m: step.get(m, 0) for m in MNEMONICS}
    return (hi[0] - lo[0]) / k, syms, mn, tag


def report(title, syms, rules, whole, n):
    """Prints the categories of `syms` (as shares of `whole`) and its top `n` functions."""
    print(title)
    for c, k in categorise(syms, rules).most_common():
        print(f"  {c:<34} {G(k)} G  {100 * k / whole:5.1f}%")
    print(f"\n{'count':>14}  {'category':<26} function (top {n})")
    for name, k in sorted(syms.items(), key=lambda kv: -kv[1])[:n]:
        print(f"{k:14,.0f}  {category(name, rules):<26} {name[:150]}")


def embedding(args):
    total, syms, mn, tag = per_embedding(args)
    if STRIPPED in syms:
        print(f"# {args.cpu} {tag}: per embedding = (runs {args.hi} - runs {args.lo}) / {args.hi - args.lo}: "
              f"{G(total)} G instructions, decode and preprocessing included (a stripped binary: no "
              f"split by function)")
        print("mnemonics: " + ", ".join(f"{m} {mn[m] / 1e6:,.1f} M" for m in MNEMONICS))
        return
    pre = categorise(syms, PREPROCESS, "network")
    net = {s: n for s, n in syms.items() if category(s, PREPROCESS) == "other"}
    cats, network = categorise(net, NETWORK), sum(net.values())
    prep = pre["decode"] + pre["preprocess"] / 2
    report(f"# {args.cpu} {tag}: per embedding = (runs {args.hi} - runs {args.lo}) / {args.hi - args.lo}: "
           f"{G(total)} G; network {G(network)} G (shares below), decode {G(pre['decode'])} G, "
           f"preprocess x2 {G(pre['preprocess'])} G", syms, PREPROCESS + NETWORK, network, args.top)
    passes = network - cats["kernels"]
    print(f"\npasses around the kernels: {passes / 1e6:,.1f} M, {100 * passes / network:.1f}% of the "
          f"network's {network / 1e6:,.1f} M")
    print("\nmnemonics: " + ", ".join(f"{m} {mn[m] / 1e6:,.1f} M" for m in MNEMONICS))
    names = [c for c, _ in NETWORK] + ["other"]
    print("\n| cpu | model | network G | " + " | ".join(names) + " | preprocessing G | "
          + " | ".join(f"{m} M" for m in MNEMONICS) + " |")
    print("|" + "---|" * (4 + len(names) + len(MNEMONICS)))
    print(f"| {args.cpu} | {tag} | {G(network)} | " + " | ".join(G(cats[c]) for c in names)
          + f" | {G(prep)} | " + " | ".join(f"{mn[m] / 1e6:,.1f}" for m in MNEMONICS) + " |")


def startup(args):
    """One whole `query` run; start-up = it minus one embedding (from the bench runs)."""
    image = args.image or str(sorted((ROOT / "demo/photos").iterdir())[0])
    extra = ["query", "--table", args.table, "--image", image, "--threads", "1", "--model", args.model]
    total, _, syms = run_count(args, extra, 1, "query")
    emb_total, emb, _, _ = per_embedding(args)
    rules = STARTUP + QUERY + PREPROCESS + NETWORK
    report(f"# {args.cpu}: one whole `query` run: {G(total)} G", syms, rules, total, args.top)
    load = difference(syms, emb)
    report(f"\n# start-up = the query run - one bench embedding ({G(emb_total)} G): {G(total - emb_total)} G",
           load, rules, total - emb_total, args.top)


def search(args):
    """One top-5 search: `bench --search-only` runs each query twice, through the table's first
    stage and by scoring every item (the check that both agree). Per search = the difference of
    two runs / (HI - LO), split by function; the row scoring both use is shared out by calls: the
    search scores `scored` rows (bench prints how many), the check all N."""
    tag = "search-" + Path(args.table).stem
    extra = ["bench", "--search-only", "--table", args.table, "--seed", str(args.seed)]
    tag += f"-seed{args.seed}"
    runs = {}
    for r in (args.lo, args.hi):
        runs[r] = run_count(args, extra + ["--runs", str(r)], r, tag)
        log = Path(args.out_dir) / f"{args.cpu}-{tag}-runs{r}.txt.log"
        found = re.search(r"search top-5 of (\d+) items.*?\((\d+) items scored exactly per search", log.read_text())
        if not found:
            sys.exit(f"{log}: no line `search top-5 of N items … (S items scored exactly per search)` from bench")
        runs[r] += tuple(map(int, found.groups()))
    (lo_total, _, lo, n, lo_scored), (hi_total, _, hi, _, hi_scored) = runs[args.lo], runs[args.hi]
    k = args.hi - args.lo
    scored = (hi_scored * args.hi - lo_scored * args.lo) / k
    syms = difference(hi, lo, k)
    cats = categorise(syms, SEARCH)
    rows = cats["rows scored (both)"] * scored / (scored + n)
    ours = cats["first stage"] + rows + cats["other"]
    report(f"# {args.cpu}: per search over {n:,} items = (runs {args.hi} - runs {args.lo}) / {k}: "
           f"{G((hi_total - lo_total) / k)} G, the search and its check", syms, SEARCH, sum(syms.values()), args.top)
    print(f"\nthe search: {ours / 1e6:,.2f} M instructions = first stage {cats['first stage'] / 1e6:,.2f} M "
          f"+ {scored:.1f} rows scored exactly of the {scored + n:,.0f} the run scored ({rows / 1e6:,.3f} M) "
          f"+ other (all counted here) {cats['other'] / 1e6:,.2f} M")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", default="cortex-a76", help="qemu CPU model: cortex-a76 (Pi 5), cortex-a72 (Pi 4)")
    p.add_argument("--model", default="models/fashion-resnet50-int8.manifest.json", help="model manifest")
    p.add_argument("--runs", default="1,3", help="bench --runs of the two runs: LO,HI (default 1,3)")
    p.add_argument("--image", help="image to embed (default: bench's, the first demo photo)")
    p.add_argument("--startup", action="store_true", help="count one whole `query` run instead (needs --table)")
    p.add_argument("--search", action="store_true", help="count the top-5 search in --table instead")
    p.add_argument("--table", help="table for --startup (made with the same model) or --search")
    p.add_argument("--seed", type=int, default=1, help="--search: bench's seed for the queries (keep some unseen)")
    tdir = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))  # where the aarch64 build is
    p.add_argument("--binary", default=f"{tdir}/aarch64-unknown-linux-gnu/release/fashion-kiosk",
                   help="aarch64 fashion-kiosk, unstripped for the split by function (default: "
                        "$CARGO_TARGET_DIR's release build)")
    p.add_argument("--count", default=str(ROOT.parent / "shared/tools/arm-insn/count"), help="the count tool")
    p.add_argument("--out-dir", default="/tmp/arm-insn-counts", help="where count's output files go")
    p.add_argument("--fresh", action="store_true", help="count again where --out-dir has output (after a rebuild)")
    p.add_argument("--top", type=int, default=40, help="functions to list")
    args = p.parse_args()
    args.lo, args.hi = map(int, args.runs.split(","))
    if (args.startup or args.search) and not args.table:
        p.error("--startup and --search need --table")
    (search if args.search else startup if args.startup else embedding)(args)


if __name__ == "__main__":
    main()
