#!/usr/bin/python3
"""Error-path and round-trip checks of an NBD server through libnbd.

Run with /usr/bin/python3 (Debian's libnbd bindings are not visible to other
interpreters):

    errors.py MODE URI
    errors.py multiconn URI1 [URI2 [URI3]]

MODE is one of
  rw         out-of-bounds / bad-flag errors on a writable export; the
             handle keeps working after each error
  ro         EPERM for pwrite/trim/zero on a read-only export; reads work
  bigread    a 33 MiB read: EINVAL with structured replies, EOVERFLOW
             without
  roundtrip  pwrite/pread at unaligned offsets, flush, FUA, zero flags,
             cache, block status with REQ_ONE
  multiconn  write on one handle, flush on a second, read on a third (the
             three connect to URI1, URI2, URI3 in turn when given)

Every check prints one PASS or FAIL line; the exit status is 1 if any check
failed (2 on a usage error).
"""

import errno
import os
import random
import sys
import traceback

import nbd

MiB = 1024 * 1024

failures = 0
passes = 0


def report(ok, name, detail=""):
    global failures, passes
    if ok:
        passes += 1
        print("PASS %s%s" % (name, (": " + detail) if detail else ""))
    else:
        failures += 1
        print("FAIL %s%s" % (name, (": " + detail) if detail else ""))
    sys.stdout.flush()


def errname(n):
    return errno.errorcode.get(n, str(n))


def expect_errno(name, want, fn):
    """Runs fn(); it must raise nbd.Error whose errnum is `want`."""
    try:
        fn()
    except nbd.Error as e:
        got = e.errnum
        report(
            got == want,
            name,
            "want %s, got %s (%s)" % (errname(want), errname(got), e.string),
        )
        return
    except Exception as e:  # noqa: BLE001 - report anything else as a failure
        report(False, name, "want %s, got exception %r" % (errname(want), e))
        return
    report(False, name, "want %s, but the command succeeded" % errname(want))


def check(name, fn):
    """Runs fn(); it must not raise; if it returns a (bool, detail) pair the
    bool decides."""
    try:
        r = fn()
    except Exception as e:  # noqa: BLE001
        report(False, name, "raised %s" % (e,))
        return False
    if isinstance(r, tuple):
        report(r[0], name, r[1])
        return r[0]
    report(True, name)
    return True


def connect(uri, structured=True):
    h = nbd.NBD()
    if not structured:
        h.set_request_structured_replies(False)
    else:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    # Let libnbd send requests it would normally refuse client-side, so the
    # server's own checks are exercised.
    h.set_strict_mode(0)
    return h


def pattern(seed, n):
    r = random.Random(seed)
    return bytes(r.getrandbits(8) for _ in range(n))


def still_works(h, tag, offset, seed):
    """A normal write + read on the same handle after an error."""
    buf = pattern(seed, 4096 + 3)

    def go():
        h.pwrite(buf, offset)
        got = h.pread(len(buf), offset)
        return (got == buf, "read back %d bytes at %d" % (len(buf), offset))

    check("%s: handle still works afterwards" % tag, go)


def mode_rw(uri):
    h = connect(uri)
    size = h.get_size()
    report(size > 2 * MiB, "export size is usable", "size=%d" % size)

    cases = [
        ("read past end", errno.EINVAL, lambda: h.pread(4096, size - 2048)),
        ("read entirely past end", errno.EINVAL, lambda: h.pread(512, size + 4096)),
        (
            "write past end",
            errno.ENOSPC,
            lambda: h.pwrite(b"\x11" * 4096, size - 2048),
        ),
        (
            "write entirely past end",
            errno.ENOSPC,
            lambda: h.pwrite(b"\x11" * 512, size + 4096),
        ),
        ("trim past end", errno.EINVAL, lambda: h.trim(4096, size - 2048)),
        ("zero past end", errno.ENOSPC, lambda: h.zero(4096, size - 2048)),
        (
            "unknown command flag 1<<7 on read",
            errno.EINVAL,
            lambda: h.pread(4096, 0, 1 << 7),
        ),
        (
            "unknown command flag 1<<7 on write",
            errno.EINVAL,
            lambda: h.pwrite(b"\x22" * 512, 0, 1 << 7),
        ),
        (
            "block status past end",
            errno.EINVAL,
            lambda: h.block_status(4096, size - 2048, lambda *a: 0),
        ),
    ]
    for i, (name, want, fn) in enumerate(cases):
        expect_errno(name, want, fn)
        still_works(h, name, 64 * 1024 * (i + 1) + 7, i)

    # Errors must not have written anything: the last in-bounds bytes before
    # the end stay zero after the failed past-end writes/zeroes.
    check(
        "failed past-end writes left the tail untouched",
        lambda: (
            h.pread(2048, size - 2048) == b"\0" * 2048,
            "last 2048 bytes read as zero",
        ),
    )
    # Requests ending exactly at the end are fine.
    check(
        "write/read ending exactly at the end",
        lambda: (
            h.pwrite(b"\x33" * 4096, size - 4096) is None
            and h.pread(4096, size - 4096) == b"\x33" * 4096,
            "",
        ),
    )
    h.shutdown()


def mode_ro(uri):
    h = connect(uri)
    report(h.is_read_only() == 1, "export advertises read-only")
    size = h.get_size()
    expect_errno("pwrite on read-only", errno.EPERM, lambda: h.pwrite(b"x" * 4096, 0))
    check(
        "read after failed pwrite",
        lambda: (h.pread(4096, 0) == b"\0" * 4096, "reads zero"),
    )
    expect_errno("trim on read-only", errno.EPERM, lambda: h.trim(4096, 0))
    check("read after failed trim", lambda: (len(h.pread(4096, 4096)) == 4096, ""))
    expect_errno("zero on read-only", errno.EPERM, lambda: h.zero(4096, 0))
    check("read after failed zero", lambda: (len(h.pread(4096, 8192)) == 4096, ""))
    check(
        "unaligned read on read-only",
        lambda: (h.pread(12345, 4097) == b"\0" * 12345, ""),
    )
    check("read at end on read-only", lambda: (len(h.pread(1, size - 1)) == 1, ""))
    h.shutdown()


def mode_bigread(uri):
    big = 33 * MiB
    # Structured replies (the default).
    h = connect(uri)
    report(
        h.get_structured_replies_negotiated() == 1,
        "structured replies negotiated by default",
    )
    report(
        h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * MiB,
        "maximum block size is 32 MiB",
        "got %d" % h.get_block_size(nbd.SIZE_MAXIMUM),
    )
    expect_errno("33 MiB read with structured replies", errno.EINVAL, lambda: h.pread(big, 0))
    still_works(h, "after 33 MiB structured read", 0, 101)
    check(
        "32 MiB read (the maximum) works",
        lambda: (len(h.pread(32 * MiB, 0)) == 32 * MiB, ""),
    )
    h.shutdown()

    # Simple replies only.
    h = connect(uri, structured=False)
    report(
        h.get_structured_replies_negotiated() == 0,
        "structured replies off when not requested",
    )
    expect_errno(
        "33 MiB read without structured replies", errno.EOVERFLOW, lambda: h.pread(big, 0)
    )
    still_works(h, "after 33 MiB simple read", 8192, 102)
    check(
        "32 MiB read (the maximum) works with simple replies",
        lambda: (len(h.pread(32 * MiB, 0)) == 32 * MiB, ""),
    )
    h.shutdown()


def extents_of(h, count, offset, flags=0):
    got = []

    def cb(metacontext, off, entries, err):
        got.append((metacontext, off, list(entries)))
        return 0

    h.block_status(count, offset, cb, flags)
    return got


def mode_roundtrip(uri):
    h = connect(uri)
    size = h.get_size()
    for name, fn in [
        ("can_flush", h.can_flush),
        ("can_fua", h.can_fua),
        ("can_trim", h.can_trim),
        ("can_zero", h.can_zero),
        ("can_fast_zero", h.can_fast_zero),
        ("can_cache", h.can_cache),
        ("can_multi_conn", h.can_multi_conn),
    ]:
        report(fn() == 1, name)
    report(
        h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION) == 1,
        "base:allocation negotiated",
    )

    # A shadow copy of the first 4 MiB and the last 1 MiB.
    head_len = 4 * MiB
    tail_off = size - MiB
    head = bytearray(head_len)
    tail = bytearray(MiB)
    rng = random.Random(1234)
    writes = [
        (0, 4096),
        (1, 1),
        (4095, 2),
        (4097, 12345),
        (65535, 65537),
        (MiB - 3, 7),
        (2 * MiB + 511, 300000),
        (head_len - 1, 1),
    ]
    for _ in range(40):
        off = rng.randrange(0, head_len - 1)
        ln = rng.randrange(1, min(70000, head_len - off) + 1)
        writes.append((off, ln))
    ok = True
    for off, ln in writes:
        buf = bytes(rng.getrandbits(8) for _ in range(ln)) if ln < 4096 else os.urandom(ln)
        try:
            h.pwrite(buf, off)
        except nbd.Error as e:
            report(False, "pwrite %d bytes at %d" % (ln, off), str(e))
            ok = False
            continue
        head[off : off + ln] = buf
        # Spot check immediately.
        got = h.pread(ln, off)
        if got != buf:
            report(False, "immediate read back of %d bytes at %d" % (ln, off))
            ok = False
    report(ok, "%d unaligned pwrites read back immediately" % len(writes))

    tail_writes = [(size - 1, 1), (size - 4096, 4096), (size - 12345, 100), (tail_off, 5000)]
    for off, ln in tail_writes:
        buf = os.urandom(ln)
        h.pwrite(buf, off)
        tail[off - tail_off : off - tail_off + ln] = buf

    def whole(region_off, shadow):
        got = h.pread(len(shadow), region_off)
        if got == bytes(shadow):
            return (True, "%d bytes at %d" % (len(shadow), region_off))
        i = next(i for i in range(len(shadow)) if got[i] != shadow[i])
        return (False, "first difference at offset %d" % (region_off + i))

    check("head region matches shadow", lambda: whole(0, head))
    check("tail region matches shadow", lambda: whole(tail_off, tail))
    check("flush", lambda: h.flush())

    # FUA write.
    fua = os.urandom(8192 + 5)
    check("FUA write", lambda: h.pwrite(fua, 3 * MiB + 3, nbd.CMD_FLAG_FUA))
    head[3 * MiB + 3 : 3 * MiB + 3 + len(fua)] = fua
    check(
        "FUA write reads back",
        lambda: (h.pread(len(fua), 3 * MiB + 3) == fua, ""),
    )

    # WRITE_ZEROES with NO_HOLE, then with FAST_ZERO, then plain, then
    # with FUA; each over data written first.
    zoff = 8 * MiB
    for i, (name, flags) in enumerate(
        [
            ("zero NO_HOLE", nbd.CMD_FLAG_NO_HOLE),
            ("zero FAST_ZERO", nbd.CMD_FLAG_FAST_ZERO),
            ("zero NO_HOLE|FAST_ZERO", nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO),
            ("zero FUA", nbd.CMD_FLAG_FUA),
            ("zero (no flags)", 0),
        ]
    ):
        off = zoff + i * MiB + 100  # unaligned start
        ln = 200000 + i  # unaligned length
        h.pwrite(b"\xee" * (ln + 200), off - 100)
        check(name, lambda: h.zero(ln, off, flags))
        check(
            name + " reads back zeros, neighbours intact",
            lambda: (
                h.pread(ln + 200, off - 100)
                == b"\xee" * 100 + b"\0" * ln + b"\xee" * 100,
                "",
            ),
        )

    # TRIM then read: the trimmed range must not disturb neighbours.
    toff = 16 * MiB
    h.pwrite(b"\xcd" * (3 * MiB), toff)
    check("trim 1 MiB", lambda: h.trim(MiB, toff + MiB))
    check(
        "trim leaves neighbours intact",
        lambda: (
            h.pread(MiB, toff) == b"\xcd" * MiB
            and h.pread(MiB, toff + 2 * MiB) == b"\xcd" * MiB,
            "",
        ),
    )

    check("cache", lambda: h.cache(MiB, 0))
    check("cache unaligned", lambda: h.cache(12345, 4097))

    # Block status with REQ_ONE: exactly one extent, no longer than asked.
    def req_one(off, ln):
        res = extents_of(h, ln, off, nbd.CMD_FLAG_REQ_ONE)
        base = [r for r in res if r[0] == nbd.CONTEXT_BASE_ALLOCATION]
        if len(base) != 1:
            return (False, "got %d base:allocation replies: %r" % (len(base), res))
        ents = base[0][2]
        if len(ents) != 2:
            return (False, "want exactly one extent, got entries %r" % (ents,))
        if base[0][1] != off:
            return (False, "extent starts at %d, want %d" % (base[0][1], off))
        if not (0 < ents[0] <= ln):
            return (False, "extent length %d not in (0, %d]" % (ents[0], ln))
        return (True, "extent (%d, flags %d)" % (ents[0], ents[1]))

    check("block_status REQ_ONE over data+hole", lambda: req_one(0, 64 * MiB))
    check("block_status REQ_ONE over untouched space", lambda: req_one(128 * MiB, 8 * MiB))
    check("block_status REQ_ONE unaligned", lambda: req_one(4097, 3 * MiB))

    # Block status without REQ_ONE covers a prefix of the range contiguously.
    def contiguous():
        res = extents_of(h, 32 * MiB, 0)
        base = [r for r in res if r[0] == nbd.CONTEXT_BASE_ALLOCATION]
        if len(base) != 1:
            return (False, "got %d base:allocation replies" % len(base))
        ents = base[0][2]
        total = sum(ents[0::2])
        if len(ents) == 0 or len(ents) % 2 or any(x == 0 for x in ents[0::2]):
            return (False, "bad entries %r" % (ents,))
        if total > 32 * MiB:
            return (False, "extents cover %d bytes, more than asked" % total)
        return (True, "%d extents covering %d bytes" % (len(ents) // 2, total))

    check("block_status covers the range with non-empty extents", contiguous)

    # After all this, the shadowed head (outside the zeroed/trimmed areas,
    # which lie beyond it) still matches.
    check("head region still matches shadow", lambda: whole(0, head))
    h.shutdown()


def mode_multiconn(uri, *more):
    uris = [uri, *more]
    h1 = connect(uris[0])
    h2 = connect(uris[1 % len(uris)])
    h3 = connect(uris[2 % len(uris)])
    report(h1.can_multi_conn() == 1, "server advertises multi-conn")
    data = os.urandom(MiB + 4097)
    off = 5 * MiB + 17
    check("write on connection 1", lambda: h1.pwrite(data, off))
    check("flush on connection 2", lambda: h2.flush())
    check(
        "read on connection 3 sees connection 1's write",
        lambda: (h3.pread(len(data), off) == data, ""),
    )
    # And the other way round, with FUA instead of a flush.
    data2 = os.urandom(65536)
    check("FUA write on connection 3", lambda: h3.pwrite(data2, 0, nbd.CMD_FLAG_FUA))
    check(
        "read on connection 1 sees connection 3's FUA write",
        lambda: (h1.pread(len(data2), 0) == data2, ""),
    )
    check(
        "read on connection 2 sees both",
        lambda: (
            h2.pread(len(data2), 0) == data2 and h2.pread(len(data), off) == data,
            "",
        ),
    )
    # Zero on one connection, flush on another, read on the third.
    check("zero on connection 2", lambda: h2.zero(4096, off + 4096))
    check("flush on connection 1", lambda: h1.flush())
    expect = data[:4096] + b"\0" * 4096 + data[8192:]
    check(
        "read on connection 3 sees the zeroed range",
        lambda: (h3.pread(len(data), off) == expect, ""),
    )
    for h in (h1, h2, h3):
        h.shutdown()


MODES = {
    "rw": mode_rw,
    "ro": mode_ro,
    "bigread": mode_bigread,
    "roundtrip": mode_roundtrip,
    "multiconn": mode_multiconn,
}


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else None
    nuris = len(sys.argv) - 2
    if mode not in MODES or nuris < 1 or (nuris > 1 and mode != "multiconn") or nuris > 3:
        print("usage: errors.py {%s} URI" % "|".join(MODES), file=sys.stderr)
        return 2
    try:
        MODES[mode](*sys.argv[2:])
    except Exception:  # noqa: BLE001
        report(False, "%s: unexpected exception" % mode, traceback.format_exc())
    print("summary: passed=%d failed=%d" % (passes, failures))
    if passes == 0:
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
