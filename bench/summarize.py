#!/usr/bin/env python3
"""Summarise the fio JSON files written by bench/ram_vs_nbdkit.sh (stdlib only).

    summarize.py one FILE.json
        One line for a single run: "IOPS MiB/s p99_us" (used for progress).
    summarize.py table RESULTS_DIR WORKLOAD...
        Markdown tables over RESULTS_DIR/raw/<workload>.r<round>.<server>.json:
        medians over rounds of IOPS and MiB/s, the ratio spillway/nbdkit of
        those medians, per-round ratios, and median completion latencies.

The timed job is every job not named "precondition"; its direction (read or
write) is the one that moved bytes.
"""
import json
import os
import re
import statistics
import sys

SERVERS = ("spillway", "nbdkit")
RAW_NAME = re.compile(
    r"^(?P<workload>.+)\.r(?P<round>\d+)\.(?P<server>spillway|nbdkit)\.json(?P<failed>\.failed)?$"
)
PERCENTILES = (("p50", "50.000000"), ("p99", "99.000000"), ("p99.9", "99.900000"))


def load_fio_json(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    start = text.find("{")
    if start < 0:
        raise ValueError(f"{path}: no JSON object in fio output")
    obj, _ = json.JSONDecoder().raw_decode(text[start:])
    return obj


def metrics(path):
    """IOPS, MiB/s and clat percentiles (us) of the timed job in one fio run."""
    data = load_fio_json(path)
    jobs = [j for j in data.get("jobs", []) if j.get("jobname") != "precondition"]
    if not jobs:
        raise ValueError(f"{path}: no timed job")
    job = jobs[-1]
    if job.get("error"):
        raise ValueError(f"{path}: fio job error {job['error']}")
    side = max(("read", "write"), key=lambda d: job[d].get("io_bytes", 0))
    stats = job[side]
    pct = stats.get("clat_ns", {}).get("percentile", {})
    out = {
        "dir": side,
        "iops": float(stats["iops"]),
        "mibs": float(stats["bw_bytes"]) / 2**20,
        "runtime_ms": job.get("job_runtime", 0),
    }
    for name, key in PERCENTILES:
        out[name] = pct[key] / 1000.0 if key in pct else float("nan")
    return out


def fmt_int(x):
    return f"{x:,.0f}"


def fmt_ratio(x):
    return f"{x:.2f}x" if x == x else "n/a"


def table(results_dir, workloads):
    raw = os.path.join(results_dir, "raw")
    runs = {}  # (workload, server) -> {round: metrics}
    failed = {}  # (workload, server) -> [rounds]
    problems = []
    for name in sorted(os.listdir(raw)):
        m = RAW_NAME.match(name)
        if not m:
            continue
        key = (m["workload"], m["server"])
        rnd = int(m["round"])
        if m["failed"]:
            failed.setdefault(key, []).append(rnd)
            continue
        try:
            runs.setdefault(key, {})[rnd] = metrics(os.path.join(raw, name))
        except (ValueError, KeyError, json.JSONDecodeError) as e:
            failed.setdefault(key, []).append(rnd)
            problems.append(str(e))

    lines = []
    lines.append(
        "| workload | spillway IOPS | nbdkit IOPS | ratio (spillway/nbdkit) "
        "| spillway MiB/s | nbdkit MiB/s | per-round ratios | >= 1.0x |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---|:---:|")
    below = []
    for w in workloads:
        s = runs.get((w, "spillway"), {})
        n = runs.get((w, "nbdkit"), {})
        if not s or not n:
            nf = {srv: len(failed.get((w, srv), [])) for srv in SERVERS}
            lines.append(
                f"| {w} | {'FAILED' if not s else fmt_int(statistics.median(r['iops'] for r in s.values()))} "
                f"| {'FAILED' if not n else fmt_int(statistics.median(r['iops'] for r in n.values()))} "
                f"| n/a | | | failed runs: spillway {nf['spillway']}, nbdkit {nf['nbdkit']} | ? |"
            )
            below.append(w)
            continue
        s_iops = statistics.median(r["iops"] for r in s.values())
        n_iops = statistics.median(r["iops"] for r in n.values())
        s_mibs = statistics.median(r["mibs"] for r in s.values())
        n_mibs = statistics.median(r["mibs"] for r in n.values())
        ratio = s_iops / n_iops if n_iops else float("nan")
        per_round = [
            fmt_ratio(s[r]["iops"] / n[r]["iops"]) if n[r]["iops"] else "n/a"
            for r in sorted(set(s) & set(n))
        ]
        extra = ""
        nf = sum(len(failed.get((w, srv), [])) for srv in SERVERS)
        if nf:
            extra = f" ({nf} failed)"
        ok = ratio >= 1.0
        if not ok:
            below.append(w)
        lines.append(
            f"| {w} | {fmt_int(s_iops)} | {fmt_int(n_iops)} | **{fmt_ratio(ratio)}** "
            f"| {s_mibs:,.1f} | {n_mibs:,.1f} | {' '.join(per_round)}{extra} | {'yes' if ok else 'NO'} |"
        )

    lines.append("")
    lines.append("Completion latency (fio clat), median over rounds, microseconds:")
    lines.append("")
    lines.append("| workload | server | p50 | p99 | p99.9 |")
    lines.append("|---|---|---:|---:|---:|")
    for w in workloads:
        for srv in SERVERS:
            r = runs.get((w, srv), {})
            if not r:
                lines.append(f"| {w} | {srv} | FAILED | | |")
                continue
            cells = [f"{statistics.median(x[p] for x in r.values()):,.1f}" for p, _ in PERCENTILES]
            lines.append(f"| {w} | {srv} | " + " | ".join(cells) + " |")

    if problems:
        lines.append("")
        lines.append("Problems:")
        lines.extend(f"- {p}" for p in problems)
    return "\n".join(lines), below


def main(argv):
    if len(argv) >= 3 and argv[1] == "one":
        m = metrics(argv[2])
        print(f"{m['iops']:.0f} {m['mibs']:.1f} {m['p99']:.1f}")
        return 0
    if len(argv) >= 4 and argv[1] == "table":
        text, below = table(argv[2], argv[3:])
        print(text)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
