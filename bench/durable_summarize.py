#!/usr/bin/env python3
"""Tables for the durable-engine benchmarks (stdlib only; reuses summarize.py).

    durable_summarize.py one FILE.json
        "IOPS MiB/s p50_us p99_us" of one fio run (progress lines).
    durable_summarize.py peers OUT PAIRINGS WORKLOADS [TARGET [ROUNDS]]
        bench/durable_vs_nbdkit.sh: OUT/raw/<pairing>/<workload>.r<N>.<spillway|nbdkit>.json.
        Median over rounds of IOPS and MiB/s, ratio spillway/peer of the medians,
        per-round ratios, and a latency table. TARGET defaults to 1.25. Only
        rounds in which BOTH servers have a result count (A/B pairs); ROUNDS (the
        number the run was asked for) makes rows with fewer say so.
    durable_summarize.py slow OUT MODES
        bench/slow_storage.sh: OUT/raw/<mode>.r<N>.json. Milliseconds per 4 KiB
        block (1000 / IOPS), against the targets, and fio's completion latency.
    durable_summarize.py syscalls OUT MODES
        bench/syscalls.sh: OUT/raw/<mode>.json (fio) and OUT/strace/<mode>.summary
        (strace -c), plus OUT/strace/<mode>.trace if the decode pass ran.
        Calls per 1,000 4 KiB blocks written.

PAIRINGS, WORKLOADS and MODES are space- or comma-separated lists (one argument).
"""
import collections
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize import PERCENTILES, load_fio_json, metrics  # noqa: E402

PAIRING_LABEL = {
    "relaxed": ("spillway --durability relaxed", "nbdkit file"),
    "strict": ("spillway --durability strict", "nbdkit --filter=fua file fuamode=force"),
}
SLOW_TARGET_MS = {"strict": 0.5, "batched": 0.1, "relaxed": 0.1}

WAL_WRITES = ("pwrite64", "pwritev", "pwritev2")
SOCKET_WRITES = ("writev", "sendmsg")
OTHER_WRITES = ("write",)
WRITE_CALLS = OTHER_WRITES + SOCKET_WRITES + WAL_WRITES
SYNC_CALLS = ("fdatasync", "fsync", "sync_file_range")
ALL_CALLS = WRITE_CALLS + SYNC_CALLS


def split_list(arg):
    return [x for x in re.split(r"[,\s]+", arg) if x]


def fmt_int(x):
    return f"{x:,.0f}" if x == x else "n/a"


def fmt_ratio(x):
    return f"{x:.2f}x" if x == x else "n/a"


def median(xs):
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


FAILED_TRY = re.compile(r"^(?P<stem>.+)\.try\d+\.json\.failed$")


def failed_tries(raw_dir):
    """{stem: failed attempts}; stem is e.g. randwrite-4k-qd32.r1.spillway or strict.r1."""
    out = collections.Counter()
    if os.path.isdir(raw_dir):
        for name in os.listdir(raw_dir):
            m = FAILED_TRY.match(name)
            if m:
                out[m["stem"]] += 1
    return out


def tries_cell(fails, stem_re, label):
    """'-' or e.g. 'spillway r1: 1, spillway r3: 2': failed attempts behind one row.
    stem_re matches the stems of that row; label(match) names one of them."""
    parts = []
    for stem, n in sorted(fails.items()):
        m = re.fullmatch(stem_re, stem)
        if m:
            parts.append(f"{label(m)}: {n}")
    return ", ".join(parts) if parts else "-"


def partial_metrics(path):
    """What fio measured before it stopped, even if it stopped on an error:
    seconds, write IOs, IOPS, clat p50/p99 (us), fio's error number."""
    data = load_fio_json(path)
    job = [j for j in data.get("jobs", []) if j.get("jobname") != "precondition"][-1]
    w = job["write"]
    pct = w.get("clat_ns", {}).get("percentile", {})
    return {
        "seconds": job.get("job_runtime", 0) / 1000.0,
        "ios": int(w.get("total_ios", 0)),
        "iops": float(w.get("iops", 0.0)),
        "p50": pct.get("50.000000", float("nan")) / 1000.0,
        "p99": pct.get("99.000000", float("nan")) / 1000.0,
        "error": job.get("error", 0),
    }


def failed_attempt_rows(raw_dir, stem_re):
    """[(stem, try, partial metrics or None)] for raw_dir/<stem>.try<N>.json.failed."""
    out = []
    if not os.path.isdir(raw_dir):
        return out
    for name in sorted(os.listdir(raw_dir)):
        m = re.fullmatch(r"(?P<stem>.+)\.try(?P<try>\d+)\.json\.failed", name)
        if not m or not re.fullmatch(stem_re, m["stem"]):
            continue
        try:
            pm = partial_metrics(os.path.join(raw_dir, name))
        except (ValueError, KeyError, OSError, IndexError):
            pm = None
        out.append((m["stem"], int(m["try"]), pm))
    return out


def load_runs(raw_dir, pattern):
    """{key tuple: {round: metrics}}, plus a list of problems, for files matching pattern."""
    runs, problems = {}, []
    if not os.path.isdir(raw_dir):
        return runs, [f"no directory {raw_dir}"]
    for name in sorted(os.listdir(raw_dir)):
        m = pattern.match(name)
        if not m:
            continue
        groups = m.groupdict()
        rnd = int(groups.pop("round"))
        failed = groups.pop("failed", None)
        key = tuple(groups.values())
        if failed:
            problems.append(f"{name}: fio failed")
            continue
        try:
            runs.setdefault(key, {})[rnd] = metrics(os.path.join(raw_dir, name))
        except (ValueError, KeyError, OSError) as e:
            problems.append(str(e))
    return runs, problems


# ---------------------------------------------------------------- costs
GIB = float(1 << 30)


def run_cost(json_path):
    """What one run cost, from the fio JSON and the .cost file beside it:
    {server_cpu, fio_cpu (seconds), moved, written (bytes fio moved / wrote), disk (bytes
    written to the data disk)}; None without a .cost file. Every fio job counts (the read
    workloads' untimed write pass too), as the server's CPU time covers them all."""
    cost = json_path[: -len(".json")] + ".cost"
    try:
        server_cpu, disk = (float(x) for x in open(cost).read().split()[:2])
        jobs = load_fio_json(json_path)["jobs"]
    except (OSError, ValueError, KeyError):
        return None
    fio_cpu = sum((j["usr_cpu"] + j["sys_cpu"]) / 100.0 * j["job_runtime"] / 1000.0 for j in jobs)
    written = sum(j["write"]["io_bytes"] for j in jobs)
    moved = written + sum(j["read"]["io_bytes"] for j in jobs)
    return {"server_cpu": server_cpu, "fio_cpu": fio_cpu, "moved": moved, "written": written, "disk": disk}


def cost_row(p, w, label, costs):
    """One row of the cost table: medians over rounds, per GiB the client moved."""
    def per_gib(key):
        return median(c[key] / (c["moved"] / GIB) for c in costs if c["moved"])

    server, fio = per_gib("server_cpu"), per_gib("fio_cpu")
    amp = median(c["disk"] / c["written"] for c in costs if c["written"])
    return (
        f"| {p} | {w} | {label} | {server:.2f} | {fio:.2f} | {server + fio:.2f} | "
        + (f"{amp:.2f} |" if amp == amp else "n/a |")
    )


# ---------------------------------------------------------------- peers
PEER_NAME = re.compile(
    r"^(?P<workload>.+)\.r(?P<round>\d+)\.(?P<server>spillway|nbdkit)\.json(?P<failed>\.failed)?$"
)


CEILING_NAME = re.compile(r"^(?P<workload>.+)\.r(?P<round>\d+)\.(?P<server>null)\.json(?P<failed>\.failed)?$")


def ceiling_cell(ceiling, w, n_iops):
    """nbdkit null's median IOPS over its rounds, as a ratio to the peer's: what a server
    that stores nothing reaches with this client on this machine ("n/a" without those runs)."""
    c = ceiling.get((w, "null"))
    if not c:
        return "n/a"
    c_iops = median(r["iops"] for r in c.values())
    return f"{fmt_ratio(c_iops / n_iops)} ({fmt_int(c_iops)})" if n_iops else "n/a"


DISK_NAME = re.compile(r"^(?P<workload>.+)\.r(?P<round>\d+)\.(?P<server>disk)\.json(?P<failed>\.failed)?$")


def disk_cell(disk, p, w, n):
    """For the strict pairing's write rows: fio alone on the data disk (the peer's pattern,
    without NBD), median MiB/s over its rounds as a ratio to the peer's median MiB/s over
    the same rounds. Empty for other rows, "n/a" without those runs."""
    if p != "strict" or "write" not in w:
        return ""
    d = disk.get((w, "disk"))
    if not d or not n:
        return "n/a"
    d_mibs = median(r["mibs"] for r in d.values())
    n_mibs = median(r["mibs"] for r in n.values())
    return f"{fmt_ratio(d_mibs / n_mibs)} ({d_mibs:,.1f} MiB/s)" if n_mibs else "n/a"


def peers(out, pairings, workloads, target, nrounds):
    ceiling, probs = {}, []
    if os.path.isdir(os.path.join(out, "raw", "ceiling")):
        ceiling, probs = load_runs(os.path.join(out, "raw", "ceiling"), CEILING_NAME)
    disk = {}
    if os.path.isdir(os.path.join(out, "raw", "disk")):
        disk, dprobs = load_runs(os.path.join(out, "raw", "disk"), DISK_NAME)
        probs += [f"disk alone: {x}" for x in dprobs]
    lines = [
        f"| pairing (spillway vs peer) | workload | spillway IOPS | peer IOPS | ratio | "
        f"spillway MiB/s | peer MiB/s | per-round ratios | >= {target:.2f}x | "
        f"ceiling: nbdkit null / peer (null IOPS) | disk alone / peer (MiB/s) | failed attempts (retried) |",
        "|---|---|---:|---:|---:|---:|---:|---|:---:|---:|---:|---|",
    ]
    lat = [
        "| pairing | workload | server | p50 | p99 | p99.9 |",
        "|---|---|---|---:|---:|---:|",
    ]
    cost = [
        "| pairing | workload | server | server CPU s per GiB | fio CPU s per GiB | together | "
        "data-disk bytes written per byte fio wrote |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    problems = [f"ceiling: {x}" for x in probs]
    for p in pairings:
        runs, probs = load_runs(os.path.join(out, "raw", p), PEER_NAME)
        fails = failed_tries(os.path.join(out, "raw", p))
        problems += [f"{p}: {x}" for x in probs]
        spw_label, peer_label = PAIRING_LABEL.get(p, (f"spillway {p}", "peer"))
        label = f"{p}: `{spw_label}` vs `{peer_label}`"
        for w in workloads:
            tcell = tries_cell(
                fails, re.escape(w) + r"\.r(\d+)\.(spillway|nbdkit)", lambda m: f"{m[2]} r{m[1]}"
            )
            s_all = runs.get((w, "spillway"), {})
            n_all = runs.get((w, "nbdkit"), {})
            # A/B pairs: only rounds in which both servers produced a result count,
            # so a failed run does not pair one server's quiet round with the
            # other's busy one.
            common = sorted(set(s_all) & set(n_all))
            s = {k: s_all[k] for k in common}
            n = {k: n_all[k] for k in common}
            if not common:
                lines.append(
                    f"| {label} | {w} | {'FAILED' if not s_all else fmt_int(median(r['iops'] for r in s_all.values()))} "
                    f"| {'FAILED' if not n_all else fmt_int(median(r['iops'] for r in n_all.values()))} "
                    f"| n/a | | | no round with both | ? | | | {tcell} |"
                )
            else:
                s_iops = median(r["iops"] for r in s.values())
                n_iops = median(r["iops"] for r in n.values())
                ratio = s_iops / n_iops if n_iops else float("nan")
                per_round = " ".join(
                    (f"r{k}: " if len(common) < nrounds else "")
                    + (fmt_ratio(s[k]["iops"] / n[k]["iops"]) if n[k]["iops"] else "n/a")
                    for k in common
                )
                if len(common) < nrounds:
                    per_round += f" (only {len(common)} of {nrounds} rounds)"
                lines.append(
                    f"| {label} | {w} | {fmt_int(s_iops)} | {fmt_int(n_iops)} | **{fmt_ratio(ratio)}** "
                    f"| {median(r['mibs'] for r in s.values()):,.1f} | {median(r['mibs'] for r in n.values()):,.1f} "
                    f"| {per_round} | {'yes' if ratio >= target else 'NO'} "
                    f"| {ceiling_cell(ceiling, w, n_iops)} | {disk_cell(disk, p, w, n)} | {tcell} |"
                )
            for srv, srv_label, r in (("spillway", spw_label, s), ("nbdkit", peer_label, n)):
                if not r:
                    lat.append(f"| {p} | {w} | {srv_label} | FAILED | | |")
                    continue
                cells = [f"{median(x[q] for x in r.values()):,.1f}" for q, _ in PERCENTILES]
                lat.append(f"| {p} | {w} | {srv_label} | " + " | ".join(cells) + " |")
                costs = [run_cost(os.path.join(out, "raw", p, f"{w}.r{k}.{srv}.json")) for k in r]
                costs = [c for c in costs if c]
                if costs:
                    cost.append(cost_row(p, w, srv_label, costs))
    if ceiling:
        text_ceiling = [
            "",
            "The ceiling column runs fio against `nbdkit null`, which drops writes and reads zeroes: "
            "the client's and the protocol's own cost on this machine, with nbdkit's per-request "
            f"costs. A row whose ceiling is under {target:.2f}x cannot reach the target by "
            "doing less storage work; spillway can pass the ceiling only by spending less than "
            "nbdkit per request.",
        ]
    else:
        text_ceiling = []
    if disk:
        text_ceiling += [
            "",
            "The disk-alone column runs the strict pairing's write workloads with no server: fio's "
            "psync engine on the data disk, one job per request in flight, each job writing a file "
            "of its own with an fdatasync after every write (the peer's pattern, without NBD), right "
            "after the pair in each round. For the 1 MiB row it is the best durable pattern found "
            "for this disk; for 4 KiB rows group commit syncs less often, so it does not bound "
            "spillway there.",
        ]
    text = lines + text_ceiling + ["", "Completion latency (fio clat), median over the same rounds, microseconds:", ""] + lat
    if len(cost) > 2:
        text += [
            "",
            "Cost per GiB fio moved (median over the same rounds; the server's CPU from its start, "
            "and fio's, cover every fio job including the read workloads' write pass; disk bytes "
            "are counted until the server stopped, so writes still in the page cache then are not):",
            "",
        ] + cost
    if problems:
        text += ["", "Problems:"] + [f"- {x}" for x in problems]
    return "\n".join(text)


# ---------------------------------------------------------------- slow storage
SLOW_NAME = re.compile(r"^(?P<mode>[a-z]+)\.r(?P<round>\d+)\.json(?P<failed>\.failed)?$")


def slow(out, modes):
    runs, problems = load_runs(os.path.join(out, "raw"), SLOW_NAME)
    fails = failed_tries(os.path.join(out, "raw"))
    lines = [
        "| mode | IOPS | ms per 4 KiB block | target | met | clat p50 (ms) | clat p99 (ms) | clat p99.9 (ms) "
        "| per-round ms/block | failed attempts (retried) |",
        "|---|---:|---:|---:|:---:|---:|---:|---:|---|---|",
    ]
    for mode in modes:
        tcell = tries_cell(fails, re.escape(mode) + r"\.r(\d+)", lambda m: f"r{m[1]}")
        r = runs.get((mode,), {})
        target = SLOW_TARGET_MS.get(mode)
        target = f"<= {target:g}" if target is not None else "-"
        if not r:
            lines.append(f"| {mode} | FAILED | | {target} | ? | | | | | {tcell} |")
            continue
        iops = median(x["iops"] for x in r.values())
        ms = 1000.0 / iops if iops else float("inf")
        limit = SLOW_TARGET_MS.get(mode)
        met = "-" if limit is None else ("yes" if ms <= limit else "NO")
        per_round = " ".join(f"{1000.0 / r[k]['iops']:.3f}" if r[k]["iops"] else "inf" for k in sorted(r))
        p = [median(x[q] for x in r.values()) / 1000.0 for q, _ in PERCENTILES]
        lines.append(
            f"| {mode} | {fmt_int(iops)} | **{ms:.3f}** | {target} | {met} "
            f"| {p[0]:.2f} | {p[1]:.2f} | {p[2]:.2f} | {per_round} | {tcell} |"
        )
    rows = []
    for mode in modes:
        for stem, t, pm in failed_attempt_rows(os.path.join(out, "raw"), re.escape(mode) + r"\.r\d+"):
            if pm is None or not pm["iops"]:
                rows.append(f"| {stem} | {t} | no data | | | | |")
                continue
            rows.append(
                f"| {stem} | {t} | {pm['seconds']:.2f} | {fmt_int(pm['iops'])} | {1000.0 / pm['iops']:.3f} "
                f"| {pm['p50'] / 1000.0:.2f} | {pm['p99'] / 1000.0:.2f} |"
            )
    if rows:
        lines += [
            "",
            "Failed attempts (not in the table above): what fio measured until the first I/O error",
            "stopped it. A short, partial run, for diagnosis only:",
            "",
            "| run | attempt | seconds before the error | IOPS | ms per block | clat p50 (ms) | clat p99 (ms) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ] + rows
    if problems:
        lines += ["", "Problems:"] + [f"- {x}" for x in problems]
    return "\n".join(lines)


# ---------------------------------------------------------------- syscalls
def parse_strace_summary(path):
    """{syscall: calls} from `strace -c` output (the table, 'total' excluded)."""
    counts = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            t = line.split()
            if len(t) < 5 or t[0].startswith("%") or t[0].startswith("-"):
                continue
            name = t[-1]
            if name == "total":
                continue
            try:
                float(t[0])
                counts[name] = int(t[3])
            except ValueError:
                continue
    return counts


TRACE_CALL = re.compile(r"^(?:\[pid\s+)?\d+\]?\s+(?P<call>\w+)\((?P<fd>\d+)(?:<(?P<path>[^>]*)>)?")


def fd_kind(path, call):
    if path is None:
        return "unknown fd"
    if path.startswith(("TCP:", "TCPv6:")):
        return "TCP socket"
    if path.startswith(("UNIX", "socket:")):
        return "other socket"
    if "eventfd" in path:
        return "eventfd (tokio/mio wake-up)"
    if "/wal/" in path:
        return "WAL segment file"
    if path.endswith("/wal"):
        return "WAL directory"
    if os.path.basename(os.path.dirname(path)) == "volumes":
        return "volume directory"
    if path.endswith(".server.log") or path.startswith("/dev/"):
        return "server log (stderr)"
    return "file " + os.path.basename(path)


def parse_trace(path):
    """{(syscall, fd kind): calls} from `strace -f -yy` output without -c."""
    counts = collections.Counter()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "resumed>" in line:
                continue  # second half of a call already counted at its start
            m = TRACE_CALL.match(line)
            if not m or m["call"] not in ALL_CALLS:
                continue
            counts[(m["call"], fd_kind(m["path"], m["call"]))] += 1
    return counts


def syscall_row(label, counts, blocks, iops):
    per_k = lambda n: 1000.0 * n / blocks  # noqa: E731
    c = lambda names: sum(counts.get(x, 0) for x in names)  # noqa: E731
    wal_w, sock_w, other_w = c(WAL_WRITES), c(SOCKET_WRITES), c(OTHER_WRITES)
    fdatasync, fsync, sfr = counts.get("fdatasync", 0), counts.get("fsync", 0), counts.get("sync_file_range", 0)
    blocks_per_sync = f"{blocks / fdatasync:,.1f}" if fdatasync else "no fdatasync"
    blocks_per_walw = f"{blocks / wal_w:,.1f}" if wal_w else "no WAL write"
    return (
        f"| {label} | {blocks:,} | {fmt_int(iops)} "
        f"| **{per_k(c(WRITE_CALLS)):.1f}** | **{per_k(c(SYNC_CALLS)):.2f}** "
        f"| {per_k(wal_w):.1f} | {per_k(fdatasync):.2f} | {per_k(sock_w):.1f} | {per_k(other_w):.1f} "
        f"| {per_k(fsync + sfr):.3f} | {blocks_per_walw} | {blocks_per_sync} |"
    )


def syscalls(out, modes):
    rows, raw_rows, dec_rows, fail_rows, problems = [], [], [], [], []
    for mode in modes:
        fio_json = os.path.join(out, "raw", f"{mode}.json")
        summ = os.path.join(out, "strace", f"{mode}.summary")
        # Failed attempts: fio stopped at its first I/O error, but what strace
        # counted until then, over the blocks written until then, still counts.
        for stem, t, pm in failed_attempt_rows(os.path.join(out, "raw"), re.escape(mode)):
            fsumm = os.path.join(out, "strace", f"{mode}.summary.try{t}.failed")
            try:
                fcounts = parse_strace_summary(fsumm)
            except OSError:
                fcounts = None
            if pm is None or not pm["ios"] or fcounts is None:
                fail_rows.append(f"| {mode} (attempt {t}) | no data | | | | | | | | | | |")
            else:
                label = f"{mode} (attempt {t}, {pm['seconds']:.1f} s before the error)"
                fail_rows.append(syscall_row(label, fcounts, pm["ios"], pm["iops"]))
        try:
            m = metrics(fio_json)
            job = [j for j in load_fio_json(fio_json)["jobs"] if j.get("jobname") != "precondition"][-1]
            blocks = int(job["write"]["total_ios"])
            counts = parse_strace_summary(summ)
        except (ValueError, KeyError, OSError, IndexError) as e:
            problems.append(f"{mode}: {e}")
            rows.append(f"| {mode} | FAILED | | | | | | | | | | |")
            continue
        if blocks <= 0:
            problems.append(f"{mode}: fio wrote no blocks")
            continue
        rows.append(syscall_row(mode, counts, blocks, m["iops"]))
        raw_rows.append(f"| {mode} | " + " | ".join(f"{counts.get(x, 0):,}" for x in ALL_CALLS) + " |")
        trace = os.path.join(out, "strace", f"{mode}.trace")
        tjson = os.path.join(out, "raw", f"{mode}.decode.json")
        if os.path.exists(trace):
            try:
                tjob = [j for j in load_fio_json(tjson)["jobs"] if j.get("jobname") != "precondition"][-1]
                tblocks = int(tjob["write"]["total_ios"])
            except (ValueError, KeyError, OSError, IndexError):
                tblocks = 0
            for (call, kind), n in sorted(parse_trace(trace).items(), key=lambda kv: (kv[0][0], -kv[1])):
                pk = f"{1000.0 * n / tblocks:.2f}" if tblocks else "n/a"
                dec_rows.append(f"| {mode} | {call} | {kind} | {n:,} | {pk} |")
    lines = [
        "| mode | 4 KiB blocks written | IOPS (under strace) | write-type calls / 1k blocks "
        "| sync-type calls / 1k blocks | WAL writes (pwrite*) / 1k | WAL syncs (fdatasync) / 1k "
        "| socket writes (writev + sendmsg) / 1k | other write() / 1k | fsync + sync_file_range / 1k "
        "| blocks per WAL write | blocks per fdatasync |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ] + rows
    lines += [
        "",
        "Raw call counts (strace -c, whole server lifetime: start-up, the fio run, shutdown):",
        "",
        "| mode | " + " | ".join(ALL_CALLS) + " |",
        "|---|" + "---:|" * len(ALL_CALLS),
    ] + raw_rows
    if fail_rows:
        lines += [
            "",
            "Failed attempts (fio stopped at its first I/O error; retried on a fresh server). Their counts",
            "up to the error, over the blocks written up to the error: partial runs, for diagnosis only:",
            "",
            lines[0],
            lines[1],
        ] + fail_rows
    if dec_rows:
        lines += [
            "",
            "Decode pass (a second run per mode under `strace -f -yy`, no -c: every call with the",
            "file behind its descriptor); calls by descriptor kind, per 1k blocks of that run:",
            "",
            "| mode | syscall | descriptor | calls | per 1k blocks |",
            "|---|---|---|---:|---:|",
        ] + dec_rows
    if problems:
        lines += ["", "Problems:"] + [f"- {x}" for x in problems]
    return "\n".join(lines)


def main(argv):
    if len(argv) == 3 and argv[1] == "one":
        m = metrics(argv[2])
        print(f"{m['iops']:.0f} {m['mibs']:.1f} {m['p50']:.1f} {m['p99']:.1f}")
        return 0
    if len(argv) in (5, 6, 7) and argv[1] == "peers":
        target = float(argv[5]) if len(argv) >= 6 else 1.25
        nrounds = int(argv[6]) if len(argv) >= 7 else 0
        print(peers(argv[2], split_list(argv[3]), split_list(argv[4]), target, nrounds))
        return 0
    if len(argv) == 4 and argv[1] == "slow":
        print(slow(argv[2], split_list(argv[3])))
        return 0
    if len(argv) == 4 and argv[1] == "syscalls":
        print(syscalls(argv[2], split_list(argv[3])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
