#!/usr/bin/env python3
"""Fault injection and soak for the kiosk service, driving the real binary in simulation.

    python3 benches/soak.py [--presses 10000] [--seed 1] [--binary target/debug/fashion-kiosk]

The kiosk runs with a folder camera, a Unix-socket trigger, PNG screens and a scan log, and the
tiny stand-in embedder of tests/fixtures/tiny-model (scans take milliseconds: the mechanics are
under test, not recognition). Presses arrive at random intervals, with contact bounce and bursts
that coalesce, and among them, at random, the faults a months-unattended kiosk meets:

- SIGHUP reloads of a good table swapped in by rename or copied over the live file in place, and of
  a truncated table (refused: the old one must stay in use);
- the camera folder vanishing and coming back; the screens folder replaced by a file (the display
  failing, then reopened); the scan log's file system full (a small tmpfs, where mounting is allowed);
- SIGUSR2 calibrations; SIGTERM, and kill -9 right after a press (a power cut, with a torn half
  line appended to the log), each followed by a restart.

Then it checks what must survive: the service is up after every restart; every scan the journal
reports is exactly one complete line of the scan log (numbered 1, 2, … within each run, no gaps,
none twice), none torn; scans go on with a valid table; and resident memory after warm-up stays
flat. It also kills `index` with SIGKILL at random points and checks that `--out` is always the old
or the new table, byte for byte. Prints what it tried and what survived; exits 1 on any breach.
Stdlib only.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests/fixtures/tiny-model/tiny.manifest.json"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Kiosk:
    """One run of the service; its stderr in a file of its own."""

    def __init__(self, binary: Path, work: Path, run: int):
        self.stderr_path = work / f"stderr-{run}.log"
        self.process = subprocess.Popen(
            [str(binary), "run", "--config", str(work / "kiosk.toml")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.stderr_path, "w"),
            env={**os.environ, "FASHION_KIOSK_LOG": "info"},
        )
        deadline = time.time() + 120
        while "ready: press to scan" not in self.stderr():
            if self.process.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the kiosk did not start:\n{self.stderr()}")
            time.sleep(0.02)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def boot(self) -> str:
        found = re.search(r"ready: press to scan \(boot (\S+)\)", self.stderr())
        return found.group(1) if found else ""

    def scans_reported(self) -> tuple[list[int], set[int]]:
        """Scan numbers the journal reported as finished, and those it said were not logged."""
        text = self.stderr()
        done = [int(n) for n in re.findall(r"\bscan (\d+)(?::| failed)", text)]
        unlogged = {int(n) for n in re.findall(r"scan (\d+) not logged", text)}
        return done, unlogged

    def stop(self, sig=signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)


def scan_log_lines(logs: Path) -> list[str]:
    """Every line of the scan log and its rotated files, oldest first."""
    files = sorted(logs.glob("scans.jsonl.*"), key=lambda p: -int(p.suffix[1:])) + [logs / "scans.jsonl"]
    lines = []
    for f in files:
        if f.exists():
            lines.extend(f.read_text(errors="replace").splitlines(keepends=True))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presses", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--binary", type=Path, default=REPO / "target/debug/fashion-kiosk")
    parser.add_argument("--index-kills", type=int, default=10)
    parser.add_argument("--steady-secs", type=float, default=0.0,
                        help="after the faults, this long of presses only (5 a second) on one run "
                             "of the service, for its memory slope")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    binary = args.binary.resolve()
    work = Path(tempfile.mkdtemp(prefix="fashion-kiosk-soak-"))
    breaches = []
    tried = {}

    def tally(what):
        tried[what] = tried.get(what, 0) + 1

    def run(*cmd, check=True):
        out = subprocess.run([str(binary), *cmd], capture_output=True, text=True)
        if check and out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
        return out

    # The catalogue, two good tables and a truncated one.
    catalogue = work / "catalogue"
    shutil.copytree(REPO / "demo/catalogue", catalogue)
    run("index", "--catalogue", str(catalogue), "--out", str(work / "full.fkt"), "--model", str(TINY))
    half = work / "half"
    half.mkdir()
    for name in sorted(os.listdir(catalogue))[:280]:
        shutil.copy(catalogue / name, half / name)
    run("index", "--catalogue", str(half), "--out", str(work / "other.fkt"), "--model", str(TINY))
    good = [(work / "full.fkt").read_bytes(), (work / "other.fkt").read_bytes()]
    truncated = good[0][: len(good[0]) // 2]
    (work / "catalogue.fkt").write_bytes(good[0])

    camera = work / "camera"
    camera.mkdir()
    for name in sorted(os.listdir(REPO / "demo/photos")):
        shutil.copy(REPO / "demo/photos" / name, camera / name)
    logs = work / "logs"
    logs.mkdir()
    tmpfs = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(logs)], capture_output=True, text=True)
        tmpfs = mounted.returncode == 0
        if not tmpfs:
            print(f"disk full: not tried (cannot mount a tmpfs: {mounted.stderr.strip()})")
    else:
        print("disk full: not tried (mounting a small tmpfs needs root)")
    (work / "kiosk.toml").write_text(
        f"""
[model]
manifest = "{TINY}"
threads = 1
[catalogue]
table = "catalogue.fkt"
[camera]
kind = "folder"
path = "camera"
[trigger]
kind = "socket"
path = "trigger.sock"
[display]
kind = "simulated"
screens = "screens"
[scene]
reference = "state/empty-scene.png"
calibration_frames = 1
[kiosk]
results_secs = 0.5
debounce_ms = 30
camera_retry_max_secs = 0.5
[scan_log]
path = "logs/scans.jsonl"
max_bytes = 262144
keep = 3
"""
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    trigger = str(work / "trigger.sock")

    def press():
        try:
            sock.sendto(b"press", trigger)
        except OSError:
            pass  # between runs: nobody listens

    runs = []  # (kiosk, log lines before it started)
    started = time.time()
    kiosk = Kiosk(binary, work, 0)
    runs.append((kiosk, len(scan_log_lines(logs))))
    rss = []  # (seconds, KiB) after warm-up
    presses = 0
    last_rss = 0.0

    def restart(torn: bool):
        nonlocal kiosk
        if torn:
            with open(logs / "scans.jsonl", "a") as f:
                f.write('{"time":"2026-12-01T00:00:00Z","scan":99')
            tally("torn half line appended (power cut)")
        kiosk = Kiosk(binary, work, len(runs))
        runs.append((kiosk, len(scan_log_lines(logs))))

    while presses < args.presses:
        action = rng.random()
        if action < 0.80:
            burst = rng.choice([1, 1, 1, 2, 3, 5])
            for _ in range(burst):
                press()
                presses += 1
                time.sleep(rng.uniform(0, 0.02))
            tally("presses (bursts and bounce included)")
            time.sleep(rng.uniform(0, 0.12))
        elif action < 0.84:
            way = rng.choice(["rename", "in place", "truncated"])
            target = work / "catalogue.fkt"
            if way == "rename":
                staging = work / "catalogue.fkt.new"
                staging.write_bytes(rng.choice(good))
                os.rename(staging, target)
            elif way == "in place":
                with open(target, "r+b") as f:
                    f.truncate(0)
                    f.write(rng.choice(good))
            else:
                staging = work / "catalogue.fkt.new"
                staging.write_bytes(truncated)
                os.rename(staging, target)
            kiosk.process.send_signal(signal.SIGHUP)
            tally(f"SIGHUP reload, table {way}")
            time.sleep(0.05)
            for _ in range(3):
                press()
                presses += 1
                time.sleep(0.05)
            if way == "truncated":
                (work / "catalogue.fkt.new").write_bytes(good[0])
                os.rename(work / "catalogue.fkt.new", target)
        elif action < 0.86:
            os.rename(camera, work / "camera.away")
            for _ in range(rng.randint(1, 4)):
                press()
                presses += 1
                time.sleep(0.1)
            os.rename(work / "camera.away", camera)
            tally("camera folder vanished and came back")
            time.sleep(0.6)
        elif action < 0.88:
            screens = work / "screens"
            if screens.exists():
                os.rename(screens, work / "screens.away")
                screens.write_text("not a folder")
                for _ in range(rng.randint(1, 4)):
                    press()
                    presses += 1
                    time.sleep(0.1)
                screens.unlink()
                os.rename(work / "screens.away", screens)
                tally("display failing (screens folder replaced by a file)")
        elif action < 0.89 and tmpfs:
            filler = logs / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
            # Enough scans to fill the log file's last page, which the disk had already given it.
            for _ in range(rng.randint(15, 25)):
                press()
                presses += 1
                time.sleep(0.1)
            filler.unlink()
            tally("scan log's disk full")
        elif action < 0.90:
            kiosk.process.send_signal(signal.SIGUSR2)
            tally("SIGUSR2 calibration")
            for _ in range(3):
                press()
                presses += 1
            time.sleep(3.6)
        elif action < 0.905:
            code = kiosk.stop(signal.SIGTERM)
            if code != 0:
                breaches.append(f"SIGTERM: exit status {code}")
            tally("SIGTERM, restart")
            restart(torn=False)
        elif action < 0.91:
            press()
            presses += 1
            time.sleep(rng.uniform(0, 0.01))
            kiosk.stop(signal.SIGKILL)
            tally("kill -9 after a press, restart")
            restart(torn=rng.random() < 0.5)
        if kiosk.process.poll() is not None:
            breaches.append(f"the service exited on its own ({kiosk.process.returncode}):\n{kiosk.stderr()[-2000:]}")
            restart(torn=False)
        now = time.time()
        if presses > 200 and now - last_rss > 1.0:
            rss.append((now - started, rss_kib(kiosk.process.pid), len(runs)))
            last_rss = now

    steady = []  # (seconds, KiB) during the steady phase, after its first 30 s
    if args.steady_secs > 0:
        phase = time.time()
        next_sample = phase + 30.0
        steady_presses = 0
        while time.time() - phase < args.steady_secs:
            press()
            steady_presses += 1
            time.sleep(0.2)
            if time.time() >= next_sample:
                steady.append((time.time() - phase, rss_kib(kiosk.process.pid)))
                next_sample += 1.0
        if kiosk.process.poll() is not None:
            breaches.append("the service exited during the steady phase")

    time.sleep(1.0)
    final_run = len(runs)
    code = kiosk.stop(signal.SIGTERM)
    if code != 0:
        breaches.append(f"final SIGTERM: exit status {code}")

    # Every scan the journal reported is exactly one whole line of its run (rotation may have
    # dropped a run's oldest lines: what is left is the tail of what was reported); nothing torn.
    lines = scan_log_lines(logs)
    by_boot = {}
    for n, line in enumerate(lines):
        try:
            if not line.endswith("\n"):
                raise ValueError("no newline")
            record = json.loads(line)
            by_boot.setdefault(record["boot"], []).append(record["scan"])
        except (ValueError, KeyError) as e:
            breaches.append(f"scan log line {n + 1} is torn ({e}): {line[:80]!r}")
    scans = unlogged = rotated_away = 0
    for i, (k, _) in enumerate(runs):
        done, not_logged = k.scans_reported()
        scans += len(done)
        unlogged += len(not_logged)
        if done != list(range(1, len(done) + 1)):
            breaches.append(f"run {i}: the journal's scan numbers are not 1..{len(done)}")
        expected = [n for n in done if n not in not_logged]
        present = by_boot.get(k.boot(), [])
        killed = k.process.returncode == -signal.SIGKILL
        if killed and present and present[-1] == len(done) + 1:
            present = present[:-1]  # logged, then killed before the journal said so
        if present != expected[len(expected) - len(present):]:
            breaches.append(f"run {i}: scan log lines {present[:5]}… are not the reported scans {expected[:5]}…")
        rotated_away += len(expected) - len(present)
    records = [r for rs in by_boot.values() for r in rs]
    # The table in use is valid: a query with it succeeds.
    out = run("query", "--table", str(work / "catalogue.fkt"), "--image", str(camera / os.listdir(camera)[0]), "--model", str(TINY), check=False)
    if out.returncode != 0:
        breaches.append(f"the table left in place does not load: {out.stderr.strip()}")

    # index killed at random points leaves the old table or the new one.
    (work / "fresh.fkt").write_bytes(good[1])
    full_time = time.time()
    run("index", "--catalogue", str(catalogue), "--out", str(work / "fresh.fkt"), "--model", str(TINY), "--allow-shrink")
    full_time = time.time() - full_time
    new = (work / "fresh.fkt").read_bytes()
    index_outcomes = {"old": 0, "new": 0}
    for _ in range(args.index_kills):
        (work / "target.fkt").write_bytes(good[1])
        process = subprocess.Popen(
            [str(binary), "index", "--catalogue", str(catalogue), "--out", str(work / "target.fkt"), "--model", str(TINY), "--allow-shrink"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0, full_time * 1.2))
        process.kill()
        process.wait()
        got = (work / "target.fkt").read_bytes()
        if got == good[1]:
            index_outcomes["old"] += 1
        elif got == new:
            index_outcomes["new"] += 1
        else:
            breaches.append("index killed: --out is neither the old table nor the new one")
    # A killed index may leave its temporary file; the next index removes it.
    killed_leftovers = len(list(work.glob(".target.fkt.*")))
    run("index", "--catalogue", str(catalogue), "--out", str(work / "target.fkt"), "--model", str(TINY), "--allow-shrink")
    leftovers = [p.name for p in work.glob(".target.fkt.*")]
    if leftovers:
        breaches.append(f"temporary files left after a complete index: {leftovers}")

    if tmpfs:
        subprocess.run(["umount", str(logs)], capture_output=True)
    elapsed = time.time() - started
    print(f"soak: {presses} presses in {elapsed:.0f} s, seed {args.seed}, {final_run} runs of the service")
    for what, n in sorted(tried.items()):
        print(f"  {n:6d}  {what}")
    print(f"scans reported by the journal: {scans}; in the scan log: {len(records)} lines; "
          f"not logged (disk full, said so): {unlogged}; rotated away: {rotated_away}")
    if rss:
        (t0, first, _), (t1, last, _) = rss[0], rss[-1]
        print(f"RSS after warm-up: start {first / 1024:.1f} MiB, end {last / 1024:.1f} MiB "
              f"(the service restarts during the faults; its slope is measured in the steady phase)")
    if len(steady) > 2:
        mean_t = sum(t for t, _ in steady) / len(steady)
        mean_k = sum(k for _, k in steady) / len(steady)
        den = sum((t - mean_t) ** 2 for t, _ in steady)
        slope = sum((t - mean_t) * (k - mean_k) for t, k in steady) / den / 1024 * 3600
        span = steady[-1][0] - steady[0][0]
        print(f"steady: {steady_presses} presses in {args.steady_secs:.0f} s on one run; RSS "
              f"{steady[0][1] / 1024:.1f} → {steady[-1][1] / 1024:.1f} MiB over {span:.0f} s; "
              f"slope {slope:+.2f} MiB per hour")
        if slope > 1.0 and span >= 600:
            breaches.append(f"resident memory grows {slope:.2f} MiB per hour while steady")
    print(f"index killed {args.index_kills} times: old table {index_outcomes['old']}, new table {index_outcomes['new']}, "
          f"temporary files left by the kills: {killed_leftovers}, after the next index: {len(leftovers)}")
    for breach in breaches:
        print(f"BREACH: {breach}")
    print("survived" if not breaches else f"{len(breaches)} breaches")
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if breaches else 0)


if __name__ == "__main__":
    main()
