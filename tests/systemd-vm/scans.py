#!/usr/bin/env python3
"""The host's half of tests/systemd-vm/run.sh: checks the guest's scan logs, the uplink's
checkpoint and what the broker delivered (the scan recorder's file) after each phase.

    scans.py FILES RECORDER KIOSK_ID [CUTS]

FILES: `guest.sh files` output (each scan log file, oldest first, then the checkpoint).
RECORDER: every message the broker delivered ("TOPIC PAYLOAD"), with a "#BOOT ID checkpoint
JSON" line written at each boot before the uplink starts (the checkpoint as the power cut left it).
CUTS: one line per power cut, "LINES", the number of scan log lines once the guest was back (the
scans that were logged before the cut).

Checks: every scan log line is whole JSON (no torn line); the checkpoint is valid and names a
logged scan; every logged scan reached the broker under PREFIX/KIOSK_ID/scans; after each cut, the
scans the checkpoint had not covered were published again after the boot. Duplicates are allowed
and counted. Prints a summary line; exits 1 on a failed check.
"""
import json
import sys


def fail(message):
    print(f"FAIL scans: {message}")
    sys.exit(1)


def read_files(path):
    """`guest.sh files`: "== NAME SIZE" then SIZE bytes, for each file."""
    with open(path, "rb") as f:
        data = f.read()
    files, at = {}, 0
    while at < len(data):
        end = data.index(b"\n", at)
        header = data[at:end].decode()
        if not header.startswith("== "):
            fail(f"unexpected file listing at byte {at}: {header[:80]!r}")
        name, size = header[3:].rsplit(" ", 1)
        body = data[end + 1:end + 1 + int(size)]
        files[name] = body.decode("utf-8", errors="replace")
        at = end + 1 + int(size)
    checkpoint = files.pop("checkpoint", "").strip() or None
    return files, checkpoint


def log_order(name):
    # scans.jsonl.N (oldest, highest N) … scans.jsonl.1, then scans.jsonl
    suffix = name.rsplit(".", 1)[-1]
    return (0, -int(suffix)) if suffix.isdigit() else (1, 0)


def main():
    files, recorder, kiosk_id = sys.argv[1:4]
    cuts = []
    if len(sys.argv) > 4:
        with open(sys.argv[4]) as f:
            cuts = [int(line.split()[0]) for line in f if line.strip()]
    logs, checkpoint_text = read_files(files)
    keys = []
    for name in sorted(logs, key=log_order):
        body = logs[name]
        if body and not body.endswith("\n"):
            fail(f"{name}: the last line has no newline (torn): {body[-80:]!r}")
        for number, line in enumerate(body.splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{name}:{number} is not JSON ({e}): {line[:120]!r}")
            if "boot" not in record or "scan" not in record or "outcome" not in record:
                fail(f"{name}:{number} is not a scan record: {line[:120]!r}")
            keys.append(f"{kiosk_id}/{record['boot']}/{record['scan']}")
    if len(set(keys)) != len(keys):
        fail("a scan key appears twice in the log")
    index = {key: i for i, key in enumerate(keys)}
    acked = None
    if checkpoint_text and checkpoint_text != "none":
        try:
            checkpoint = json.loads(checkpoint_text)
        except json.JSONDecodeError as e:
            fail(f"the uplink's checkpoint is not JSON ({e}): {checkpoint_text!r}")
        acked = checkpoint.get("last_key")
        if acked is not None and acked not in index:
            fail(f"the checkpoint names {acked}, which is not in the scan log")

    # What the broker delivered, by boot of the guest.
    boots = []  # (checkpoint key at boot, [keys delivered during that boot])
    topics = set()
    seen_boots = []
    with open(recorder, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("#BOOT "):
                parts = line.split(" ", 3)
                if seen_boots and seen_boots[-1] == parts[1]:
                    continue  # the recorder restarted within a boot
                seen_boots.append(parts[1])
                at_boot = None
                if len(parts) == 4 and parts[3] != "none":
                    try:
                        at_boot = json.loads(parts[3]).get("last_key")
                    except json.JSONDecodeError:
                        fail(f"the checkpoint at boot {parts[1]} is not JSON: {parts[3]!r}")
                boots.append((at_boot, []))
                continue
            topic, _, payload = line.partition(" ")
            if not topic.endswith("/scans"):
                continue
            topics.add(topic)
            if not boots:
                boots.append((None, []))
            try:
                boots[-1][1].append(json.loads(payload)["key"])
            except (json.JSONDecodeError, KeyError):
                fail(f"a scans message without a key: {line[:160]!r}")
    expected_topic = f"fashion-kiosk/{kiosk_id}/scans"
    if topics - {expected_topic}:
        fail(f"scans published under {sorted(topics)}, expected {expected_topic}")
    delivered = [key for _, got in boots for key in got]
    unique = set(delivered)
    missing = [key for key in keys if key not in unique]
    if missing:
        fail(f"{len(missing)} of {len(keys)} logged scans never reached the broker: {missing[:5]}")
    unknown = unique - set(keys)
    if unknown:
        fail(f"the broker got scans that are not in the log: {sorted(unknown)[:5]}")

    # After each power cut: the scans logged before it that the checkpoint had not covered were
    # published again after the boot.
    resent_report = []
    cut_boots = boots[-len(cuts):] if cuts else []
    if cuts and len(boots) < len(cuts) + 1:
        fail(f"{len(cuts)} power cuts but the recorder saw {len(boots)} boots")
    for number, (lines, (at_boot, got)) in enumerate(zip(cuts, cut_boots), 1):
        start = index[at_boot] + 1 if at_boot is not None else 0
        owed = keys[start:lines]
        after = set(got)
        not_resent = [key for key in owed if key not in after]
        if not_resent:
            fail(f"cut {number}: {len(not_resent)} scans after the checkpoint ({at_boot}) were not "
                 f"published again: {not_resent[:5]}")
        resent_report.append(f"cut {number}: {len(owed)} unacknowledged resent")
    summary = (f"{len(keys)} scans logged, every line JSON; {len(unique)} on the broker under "
               f"{expected_topic}, none lost, {len(delivered) - len(unique)} duplicates; "
               f"checkpoint at {acked}")
    if resent_report:
        summary += "; " + ", ".join(resent_report)
    print(summary)


if __name__ == "__main__":
    main()
