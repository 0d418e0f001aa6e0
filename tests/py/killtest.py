#!/usr/bin/python3
"""Crash (kill -9) durability checker for an NBD server, through libnbd.

Run with /usr/bin/python3 (Debian's libnbd bindings are not visible to other
interpreters). Driven by tests/kill_durability.rs; see docs/killtest.md.

    killtest.py write  --uri URI [--uri URI ...] --mode MODE --seconds S
                       --seed SEED --blocks N --state FILE
                       [--max-inflight K] [--flush-elsewhere]
    killtest.py verify --uri URI --mode MODE [--check-mode MODE] --state FILE
    killtest.py sabotage --uri URI --state FILE --seed SEED
                       [--kinds torn,garbage,rollback,misdirect]

write     Connects one handle per --uri (multi-conn), prints `started`, then
          keeps 16-64 aio requests in flight over blocks [0, N): 4 KiB
          writes (some of 4 or 16 contiguous blocks, with --large a
          quarter of 256, some with FUA) and
          FLUSHes at random moments (with --flush-elsewhere mostly on a
          different connection than the writes). No two writes to one
          block are ever in flight together, so per block issue order is
          apply order. It runs until the server dies under it (the test
          SIGKILLs the server) or for S seconds, then records in the state
          file exactly what the client saw: every command's issue event,
          reply event and error, every FLUSH's send and reply event. Exit 0.
verify    Reads blocks [0, N) (plus a few never-written blocks, which must
          be zero) from the restarted server and checks every block against
          the promise of --check-mode (default --mode):
            strict           every write whose reply arrived survives
            batched/relaxed  every FUA write whose reply arrived, and every
                             write whose reply arrived before a FLUSH was
                             sent (on any connection when the server
                             advertises multi-conn, else on the same one)
                             and that FLUSH's reply arrived, survives
            async            nothing survives for sure
          in every mode: a block holds exactly one version written to it (or
          its initial zeros): never a torn mix of two, never garbage. With
          v_g the last guaranteed version of a block, it must now hold v_g
          or a later v_j. Prints one line per violation and
          `verify: N blocks ok, M violations`; on success the state carries
          the read-back content forward as each block's base version (which
          the next cycle counts as durable, except in async mode). Exit 1 on
          any violation.
sabotage  Test aid proving that verify detects violations: after a write
          phase, overwrites chosen blocks (FUA) with a torn mix of two of
          their versions, with garbage, with a version older than the
          guaranteed one, or with another block's version, and prints
          `sabotage: KIND block B ...` per block.

Block content identifies itself: a 32-byte header (magic, block number,
write id, generation) followed by shake_128(header) bytes up to 2 KiB, and the
same 2 KiB again, so any 4 KiB block read back is either zeros, exactly one
written version, or detectably bad (every 512-byte sector of it depends on
the version). The repeat makes blocks compress by about half, so that
`--wal-compress lz4` stores them as LZ4 records.
Write ids are (generation << 32) | counter; the generation is the write
phase's number in the state file.
"""

import argparse
import errno
import hashlib
import json
import os
import random
import select
import struct
import sys
import time

import nbd

BS = 4096
MAGIC = b"SPWKILL1"
HDR = struct.Struct("<8sQQQ")  # magic, block, wid, gen
ZERO_BLOCK = bytes(BS)
STATE_VERSION = 1
MODES = ("strict", "batched", "relaxed", "async")
# Errors a command gets when the connection dies under it (not a server reply).
DISCONNECT_ERRNOS = {
    0,
    errno.ENOTCONN,
    errno.ECONNRESET,
    errno.EPIPE,
    errno.ESHUTDOWN,
    errno.ECONNABORTED,
}


def block_content(block, wid):
    gen = wid >> 32
    hdr = HDR.pack(MAGIC, block, wid, gen)
    half = hdr + hashlib.shake_128(hdr).digest(BS // 2 - HDR.size)
    return half + half


def identify(data):
    """('zero',) | ('version', block, wid, gen) | ('bad', why)."""
    if data == ZERO_BLOCK:
        return ("zero",)
    magic, block, wid, gen = HDR.unpack_from(data)
    if magic != MAGIC:
        return ("bad", "no header")
    if gen != wid >> 32:
        return ("bad", "header generation %d does not match write id %#x" % (gen, wid))
    if data != block_content(block, wid):
        return ("bad", "header of block %d write %#x, but the body does not match it" % (block, wid))
    return ("version", block, wid, gen)


def wid_str(wid):
    if wid == 0:
        return "zeros"
    return "w%d.%d" % (wid >> 32, wid & 0xFFFFFFFF)


def sector_map(data, block, candidates):
    """Which candidate version (or zeros) each 512-byte sector of `data` matches."""
    cands = [(0, ZERO_BLOCK)] + [(w, block_content(block, w)) for w in candidates if w != 0]
    out = []
    for s in range(0, BS, 512):
        hit = "?"
        for w, c in cands:
            if data[s : s + 512] == c[s : s + 512]:
                hit = wid_str(w)
                break
        out.append(hit)
    # Compress runs: "0-3:w2.5 4-7:w2.9".
    runs = []
    start = 0
    for i in range(1, len(out) + 1):
        if i == len(out) or out[i] != out[start]:
            runs.append("%d-%d:%s" % (start, i - 1, out[start]))
            start = i
    return runs, out


# ---------------------------------------------------------------- state file


def load_state(path, blocks=None):
    if not os.path.exists(path):
        if blocks is None:
            raise SystemExit("killtest: no state file %s and no --blocks" % path)
        return {
            "version": STATE_VERSION,
            "blocks": blocks,
            "gen": 0,
            "base": [0] * blocks,
            "cycle": None,
            "verified": 0,
        }
    with open(path) as f:
        st = json.load(f)
    if st.get("version") != STATE_VERSION:
        raise SystemExit("killtest: state file %s has version %r" % (path, st.get("version")))
    if blocks is not None and blocks != st["blocks"]:
        raise SystemExit("killtest: --blocks %d but the state has %d" % (blocks, st["blocks"]))
    return st


def save_state(path, st):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(st, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# ---------------------------------------------------------------- write phase


class Writer:
    def __init__(self, args, st):
        self.args = args
        self.st = st
        self.rng = random.Random(args.seed)
        self.gen = st["gen"] + 1
        self.blocks = st["blocks"]
        self.counter = 0
        self.ev = 0
        self.cmds = []  # [conn, fua, issue_ev, done_ev, errno, [[block, wid], ...]]
        self.flushes = []  # [conn, send_ev, done_ev, errno]
        self.busy = set()  # blocks with a write in flight
        self.inflight = 0
        self.flushes_inflight = 0
        self.keep = {}  # cmd index -> buffer, alive until the reply
        self.stop_reason = None
        self.error_replies = []  # non-disconnect errors from a live server

    def next_wid(self):
        self.counter += 1
        return (self.gen << 32) | self.counter

    def tick(self):
        e = self.ev
        self.ev += 1
        return e

    def write_done(self, idx):
        def cb(err):
            rec = self.cmds[idx]
            rec[3] = self.tick()
            rec[4] = err.value
            for b, _ in rec[5]:
                self.busy.discard(b)
            self.inflight -= 1
            self.keep.pop(idx, None)
            if err.value != 0:
                self.note_error("write", idx, err.value)
            return 1

        return cb

    def flush_done(self, idx):
        def cb(err):
            rec = self.flushes[idx]
            rec[2] = self.tick()
            rec[3] = err.value
            self.inflight -= 1
            self.flushes_inflight -= 1
            if err.value != 0:
                self.note_error("flush", idx, err.value)
            return 1

        return cb

    def note_error(self, what, idx, err):
        if self.stop_reason is None:
            self.stop_reason = "%s %d failed: %s" % (what, idx, errno.errorcode.get(err, str(err)))
        if err not in DISCONNECT_ERRNOS:
            self.error_replies.append([what, idx, err])

    def pick_run(self):
        r = self.rng.random()
        n = 1 if r < 0.80 else (4 if r < 0.95 else 16)
        if self.args.large and self.rng.random() < 0.25:
            n = 256  # 1 MiB: the WAL writer's hand-over path (docs/wal.md)
        for _ in range(8):
            start = self.rng.randrange(0, self.blocks - n + 1)
            if not any(b in self.busy for b in range(start, start + n)):
                return start, n
        return None

    def run(self):
        a = self.args
        rng = self.rng
        handles = []
        for uri in a.uri:
            h = nbd.NBD()
            h.connect_uri(uri)
            handles.append(h)
        size = handles[0].get_size()
        if size < (self.blocks + 16) * BS:
            raise SystemExit("killtest: export of %d bytes is too small for %d blocks" % (size, self.blocks))
        multi = len(handles) == 1 or all(h.can_multi_conn() for h in handles)
        can_fua = all(h.can_fua() for h in handles)
        can_flush = all(h.can_flush() for h in handles)
        if not (can_fua and can_flush):
            raise SystemExit("killtest: the server must advertise FLUSH and FUA")
        nconn = len(handles)
        max_inflight = a.max_inflight or rng.choice([16, 24, 32, 48, 64])
        fua_p = rng.choice([0.02, 0.1, 0.3])
        flush_p = rng.choice([1 / 8, 1 / 32, 1 / 128])
        if a.flush_elsewhere and nconn > 1:
            write_conns = list(range(nconn - 1))
        else:
            write_conns = list(range(nconn))
        dead = [False] * nconn

        print("started gen %d conns %d multi_conn %s max_inflight %d fua_p %.2f flush_p %.3f"
              % (self.gen, nconn, multi, max_inflight, fua_p, flush_p))
        sys.stdout.flush()
        t0 = time.monotonic()
        deadline = t0 + a.seconds
        draining_since = None

        def issue_flush():
            if a.flush_elsewhere and nconn > 1 and rng.random() < 0.75:
                c = nconn - 1
            else:
                c = rng.randrange(nconn)
            idx = len(self.flushes)
            self.flushes.append([c, self.tick(), -1, -1])
            self.inflight += 1
            self.flushes_inflight += 1
            try:
                handles[c].aio_flush(completion=self.flush_done(idx))
            except nbd.Error as e:
                self.inflight -= 1
                self.flushes_inflight -= 1
                self.flushes[idx][3] = e.errnum or errno.ENOTCONN
                raise

        def issue_write():
            run = self.pick_run()
            if run is None:
                return False
            start, n = run
            c = rng.choice(write_conns)
            fua = rng.random() < fua_p
            pairs = [[b, self.next_wid()] for b in range(start, start + n)]
            buf = b"".join(block_content(b, w) for b, w in pairs)
            idx = len(self.cmds)
            self.cmds.append([c, fua, self.tick(), -1, -1, pairs])
            for b in range(start, start + n):
                self.busy.add(b)
            self.inflight += 1
            self.keep[idx] = buf
            try:
                handles[c].aio_pwrite(buf, start * BS, completion=self.write_done(idx),
                                      flags=nbd.CMD_FLAG_FUA if fua else 0)
            except nbd.Error as e:
                # Never queued; it stays in the block's version list
                # (harmless: it cannot have landed).
                self.inflight -= 1
                self.cmds[idx][4] = e.errnum or errno.ENOTCONN
                for b in range(start, start + n):
                    self.busy.discard(b)
                raise
            return True

        while True:
            now = time.monotonic()
            if self.stop_reason is None and now >= deadline:
                self.stop_reason = "time limit of %.1f s" % a.seconds
            stopping = self.stop_reason is not None or any(dead)
            if stopping:
                if draining_since is None:
                    draining_since = now
                if self.inflight == 0 or all(dead) or now - draining_since > 10:
                    break
            else:
                try:
                    while self.inflight < max_inflight:
                        if self.flushes_inflight < 4 and rng.random() < flush_p:
                            issue_flush()
                        elif not issue_write():
                            break
                except nbd.Error as e:
                    if self.stop_reason is None:
                        self.stop_reason = "issue failed: %s" % e
                    continue
            rl, wl, owner = [], [], {}
            for i, h in enumerate(handles):
                if dead[i]:
                    continue
                try:
                    fd = h.aio_get_fd()
                    d = h.aio_get_direction()
                except nbd.Error:
                    dead[i] = True
                    continue
                owner[fd] = i
                if d & nbd.AIO_DIRECTION_READ:
                    rl.append(fd)
                if d & nbd.AIO_DIRECTION_WRITE:
                    wl.append(fd)
            if not owner:
                continue
            r, w, _ = select.select(rl, wl, [], 0.05)
            for fd in r:
                i = owner[fd]
                try:
                    handles[i].aio_notify_read()
                except nbd.Error as e:
                    dead[i] = True
                    if self.stop_reason is None:
                        self.stop_reason = "connection %d: %s" % (i, e)
            for fd in w:
                i = owner[fd]
                if dead[i]:
                    continue
                try:
                    handles[i].aio_notify_write()
                except nbd.Error as e:
                    dead[i] = True
                    if self.stop_reason is None:
                        self.stop_reason = "connection %d: %s" % (i, e)
            for i, h in enumerate(handles):
                if not dead[i] and h.aio_is_dead():
                    dead[i] = True
                    if self.stop_reason is None:
                        self.stop_reason = "connection %d died" % i

        elapsed = time.monotonic() - t0
        server_alive = not any(dead)
        if server_alive:
            for h in handles:
                try:
                    h.shutdown()
                except nbd.Error:
                    pass
        # Closing a handle retires what is still in flight (callbacks get an
        # error); everything the client saw is recorded already.
        handles.clear()

        acked = sum(1 for c in self.cmds if c[3] >= 0 and c[4] == 0)
        fua_acked = sum(1 for c in self.cmds if c[3] >= 0 and c[4] == 0 and c[1])
        flush_ok = sum(1 for f in self.flushes if f[2] >= 0 and f[3] == 0)
        self.st["gen"] = self.gen
        self.st["cycle"] = {
            "gen": self.gen,
            "seed": a.seed,
            "mode": a.mode,
            "conns": nconn,
            "multi_conn": multi,
            "cmds": self.cmds,
            "flushes": self.flushes,
            "stop_reason": self.stop_reason,
            "error_replies": self.error_replies,
            "elapsed": round(elapsed, 3),
        }
        save_state(a.state, self.st)
        print(
            "write: gen %d, %.2f s, %d writes issued (%d acked, %d FUA acked), %d flushes (%d acked), "
            "stopped: %s" % (self.gen, elapsed, len(self.cmds), acked, fua_acked, len(self.flushes),
                             flush_ok, self.stop_reason)
        )
        for what, idx, err in self.error_replies:
            print("write: ERROR REPLY from a live server? %s %d: %s"
                  % (what, idx, errno.errorcode.get(err, str(err))))
        return 0


def cmd_write(a):
    st = load_state(a.state, a.blocks)
    if st["cycle"] is not None:
        raise SystemExit("killtest: the state holds an unverified write phase; run verify first")
    return Writer(a, st).run()


# ---------------------------------------------------------------- verify phase


def guaranteed_flags(cycle, rule):
    """For each command: is it guaranteed durable under `rule`?"""
    cmds = cycle["cmds"]
    if rule == "async":
        return [False] * len(cmds)
    if rule == "strict":
        return [c[3] >= 0 and c[4] == 0 for c in cmds]
    multi = cycle["multi_conn"]
    # Latest send event of a FLUSH whose reply arrived OK: overall, per conn.
    best_all = -1
    best_conn = {}
    for conn, send_ev, done_ev, err in cycle["flushes"]:
        if done_ev >= 0 and err == 0:
            best_all = max(best_all, send_ev)
            best_conn[conn] = max(best_conn.get(conn, -1), send_ev)
    out = []
    for conn, fua, _issue, done, err, _pairs in cmds:
        if done < 0 or err != 0:
            out.append(False)
        elif fua:
            out.append(True)
        else:
            limit = best_all if multi else best_conn.get(conn, -1)
            out.append(done < limit)
    return out


def block_plans(st, rule):
    """Per block: (versions, g, meta) with versions[0] the base, then this
    cycle's writes in issue order; g the index of the last guaranteed version
    (None: nothing guaranteed); meta[j] = (cmd index, acked) for j >= 1."""
    n = st["blocks"]
    cycle = st["cycle"]
    versions = [[w] for w in st["base"]]
    meta = [[None] for _ in range(n)]
    g = [None if rule == "async" else 0 for _ in range(n)]
    if cycle is None:
        return versions, g, meta
    guar = guaranteed_flags(cycle, rule)
    order = sorted(range(len(cycle["cmds"])), key=lambda i: cycle["cmds"][i][2])
    for i in order:
        c = cycle["cmds"][i]
        acked = c[3] >= 0 and c[4] == 0
        for b, w in c[5]:
            versions[b].append(w)
            meta[b].append((i, acked))
            if guar[i]:
                g[b] = len(versions[b]) - 1
    return versions, g, meta


def describe_version(st, b, versions, meta, j):
    if j == 0:
        return "%s (base, read back after the previous crash)" % wid_str(versions[0])
    i, acked = meta[j]
    c = st["cycle"]["cmds"][i]
    conn, fua, issue, done, err = c[:5]
    if done >= 0 and err == 0:
        state = "reply at event %d" % done
    elif done >= 0:
        state = "failed (%s) at event %d" % (errno.errorcode.get(err, str(err)), done)
    else:
        state = "no reply"
    return "%s (cmd %d on conn %d%s, issued at event %d, %s)" % (
        wid_str(versions[j]), i, conn, ", FUA" if fua else "", issue, state)


def cmd_verify(a):
    st = load_state(a.state)
    rule = a.check_mode or a.mode
    n = st["blocks"]
    versions, g, meta = block_plans(st, rule)
    cycle = st["cycle"]
    gen = st["gen"]

    h = nbd.NBD()
    h.connect_uri(a.uri)
    size = h.get_size()
    data = bytearray()
    chunk = 1 << 20
    for off in range(0, n * BS, chunk):
        data += h.pread(min(chunk, n * BS - off), off)
    # A few blocks nobody ever wrote must read as zeros.
    untouched = list(range(n, min(n + 8, size // BS)))
    untouched += [b for b in range(size // BS - 8, size // BS) if b >= n + 8]
    extra = {b: h.pread(BS, b * BS) for b in untouched}
    h.shutdown()

    violations = []
    stats = {"at_g": 0, "newer": 0, "latest": 0, "lost_acked": 0, "unguaranteed": 0}
    readback = [0] * n
    for b in range(n):
        blk = bytes(data[b * BS : (b + 1) * BS])
        vs = versions[b]
        kind = identify(blk)
        acceptable = vs[g[b]:] if g[b] is not None else None
        bad = None
        if kind[0] == "bad":
            runs, secs = sector_map(blk, b, vs)
            hits = {s for s in secs if s != "?"}
            if "?" not in secs and len(hits) > 1:
                bad = "TORN block: a mix of versions, sectors %s" % " ".join(runs)
            else:
                bad = "GARBAGE: %s; sectors %s; first bytes %s" % (kind[1], " ".join(runs), blk[:32].hex())
        else:
            got = 0 if kind[0] == "zero" else kind[2]
            if kind[0] == "version" and kind[1] != b:
                bad = "MISDIRECTED: holds a version written to block %d (%s)" % (kind[1], wid_str(got))
            elif acceptable is not None and got not in acceptable:
                if got in vs:
                    j = vs.index(got)
                    bad = "LOST DURABLE WRITE: holds %s, older than the guaranteed %s" % (
                        describe_version(st, b, vs, meta[b], j),
                        describe_version(st, b, vs, meta[b], g[b]))
                elif got == 0 or (got >> 32) < gen:
                    bad = "LOST DURABLE WRITE: holds %s (%s), older than the guaranteed %s" % (
                        wid_str(got), "the initial zeros" if got == 0 else "from generation %d" % (got >> 32),
                        describe_version(st, b, vs, meta[b], g[b]))
                else:
                    bad = "UNKNOWN VERSION: holds %s, never written to this block" % wid_str(got)
            elif acceptable is None and got != 0 and got not in vs and (got >> 32) >= gen:
                bad = "UNKNOWN VERSION: holds %s, never written to this block" % wid_str(got)
            if bad is None:
                readback[b] = got
                j = vs.index(got) if got in vs else None
                last_acked = max([k for k in range(1, len(vs)) if meta[b][k][1]] or [0])
                if j is not None and g[b] is not None and j == g[b]:
                    stats["at_g"] += 1
                elif j is not None:
                    stats["newer"] += 1
                else:
                    stats["unguaranteed"] += 1
                if j == len(vs) - 1:
                    stats["latest"] += 1
                if j is None or j < last_acked:
                    stats["lost_acked"] += 1
        if bad is not None:
            lines = ["block %d (offset %d): %s" % (b, b * BS, bad)]
            lines.append("  mode rule %s; versions in issue order (base first), guaranteed index %s:"
                         % (rule, g[b]))
            got_j = vs.index(got) if kind[0] != "bad" and got in vs else len(vs)
            lo = max(0, min(g[b] if g[b] is not None else 0, got_j) - 2)
            shown = list(range(lo, len(vs)))
            if len(shown) > 60:
                shown = shown[:10] + [None] + shown[-45:]
            if lo > 0:
                lines.append("    ... %d older version(s)" % lo)
            for j in shown:
                if j is None:
                    lines.append("    ...")
                    continue
                mark = " <- last guaranteed" if g[b] == j else ""
                lines.append("    [%d] %s%s" % (j, describe_version(st, b, vs, meta[b], j), mark))
            violations.append("\n".join(lines))
    for b, blk in extra.items():
        if blk != ZERO_BLOCK:
            kind = identify(blk)
            violations.append("block %d (offset %d, never written): not zeros: %s; first bytes %s"
                              % (b, b * BS, kind, blk[:32].hex()))

    for v in violations:
        print("VIOLATION " + v)
    info = ""
    if cycle is not None:
        info = " (gen %d, rule %s, %d writes, %d flushes, stopped: %s)" % (
            cycle["gen"], rule, len(cycle["cmds"]), len(cycle["flushes"]), cycle["stop_reason"])
    print("stats: %d blocks at the last guaranteed version, %d at a later one (%d at the latest issued), "
          "%d lost an acknowledged but unguaranteed write, %d hold an unguaranteed older version"
          % (stats["at_g"], stats["newer"], stats["latest"], stats["lost_acked"], stats["unguaranteed"]))
    print("verify: %d blocks ok, %d violations%s" % (n + len(extra) - len(violations), len(violations), info))
    if violations:
        return 1
    st["base"] = readback
    st["cycle"] = None
    st["verified"] = st.get("verified", 0) + 1
    save_state(a.state, st)
    return 0


# ---------------------------------------------------------------- sabotage


def cmd_sabotage(a):
    """Break chosen blocks on purpose (test aid for the checker itself)."""
    st = load_state(a.state)
    rng = random.Random(a.seed)
    versions, g, _meta = block_plans(st, "strict")
    n = st["blocks"]
    h = nbd.NBD()
    h.connect_uri(a.uri)
    used = set()
    done = []

    def pick(pred):
        cands = [b for b in range(n) if b not in used and pred(b)]
        if not cands:
            return None
        b = rng.choice(cands)
        used.add(b)
        return b

    for kind in a.kinds.split(","):
        if kind == "torn":
            b = pick(lambda b: len(set(versions[b][1:])) >= 2)
            if b is None:
                continue
            v1, v2 = versions[b][-2], versions[b][-1]
            blk = block_content(b, v2)[:2048] + block_content(b, v1)[2048:]
            what = "first half %s, second half %s" % (wid_str(v2), wid_str(v1))
        elif kind == "garbage":
            b = pick(lambda b: True)
            blk = bytes(rng.getrandbits(8) for _ in range(BS))
            what = "random bytes"
        elif kind == "rollback":
            b = pick(lambda b: g[b] is not None and g[b] >= 1)
            if b is None:
                continue
            old = versions[b][g[b] - 1]
            blk = block_content(b, old) if old else ZERO_BLOCK
            what = "older version %s instead of guaranteed %s" % (wid_str(old), wid_str(versions[b][g[b]]))
        elif kind == "misdirect":
            b = pick(lambda b: True)
            other = (b + 1) % n
            w = versions[other][-1]
            if w == 0:
                w = (st["gen"] << 32) | 0xFFFFFF
            blk = block_content(other, w)
            what = "block %d's version %s" % (other, wid_str(w))
        else:
            raise SystemExit("killtest: unknown sabotage kind %r" % kind)
        h.pwrite(blk, b * BS, flags=nbd.CMD_FLAG_FUA)
        done.append(b)
        print("sabotage: %s block %d: %s" % (kind, b, what))
    h.flush()
    h.shutdown()
    return 0 if done else 1


# ---------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="phase", required=True)
    w = sub.add_parser("write")
    w.add_argument("--uri", action="append", required=True)
    w.add_argument("--mode", choices=MODES, required=True)
    w.add_argument("--seconds", type=float, required=True)
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--blocks", type=int, required=True)
    w.add_argument("--state", required=True)
    w.add_argument("--max-inflight", type=int, default=0)
    w.add_argument("--flush-elsewhere", action="store_true")
    w.add_argument("--large", action="store_true",
                   help="a quarter of the writes are 1 MiB (256 blocks)")
    v = sub.add_parser("verify")
    v.add_argument("--uri", required=True)
    v.add_argument("--mode", choices=MODES, required=True)
    v.add_argument("--check-mode", choices=MODES)
    v.add_argument("--state", required=True)
    s = sub.add_parser("sabotage")
    s.add_argument("--uri", required=True)
    s.add_argument("--state", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--kinds", default="torn,garbage,rollback,misdirect")
    a = p.parse_args()
    if a.phase == "write":
        if a.blocks < 16:
            p.error("--blocks must be at least 16")
        return cmd_write(a)
    if a.phase == "verify":
        return cmd_verify(a)
    return cmd_sabotage(a)


if __name__ == "__main__":
    sys.exit(main())
