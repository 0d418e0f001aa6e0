#!/usr/bin/python3
"""Block-by-block reads of an NBD export through libnbd, compared with a file.

Run with /usr/bin/python3 (Debian's libnbd bindings are not visible to other
interpreters):

    blocks.py check URI EXPECT_FILE [OFFSET]
    blocks.py stripe-write URI STRIDE LEN
    blocks.py stripe-trim URI STRIDE KEEP

Reads the export from OFFSET (default 0) in 4 KiB blocks, as many as
EXPECT_FILE holds, each with its own NBD_CMD_READ, and prints one line per
block that is not plainly right:

    EIO N        the read failed with EIO (the server refused to serve it)
    ERR N errno  the read failed with another error
    WRONG N      the read succeeded but returned other bytes than EXPECT_FILE

and a last line `blocks: OK ok, E eio, R err, W wrong`. Exit status 0 when
every read succeeded with the right bytes, 1 otherwise (2 on a usage error).
The connection must survive every failed read: a read after it must work.

stripe-write writes LEN bytes at every multiple of STRIDE of the export;
each 4 KiB block at offset O holds the little-endian u64 O/4096 repeated
512 times. stripe-trim TRIMs everything but the first KEEP bytes of each
STRIDE. Both flush before they exit.
"""

import errno
import struct
import sys

import nbd

BS = 4096


def stripe_block(off):
    return struct.pack("<Q", off // BS) * (BS // 8)


def stripes(argv):
    uri, stride, n = argv[2], int(argv[3]), int(argv[4])
    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    for base in range(0, size, stride):
        if argv[1] == "stripe-write":
            piece = b"".join(stripe_block(base + i) for i in range(0, n, BS))
            for at in range(0, n, 1 << 20):
                h.pwrite(piece[at:at + (1 << 20)], base + at)
        else:
            h.trim(stride - n, base + n)
    h.flush()
    h.shutdown()
    print("%s done" % argv[1])
    return 0


def main(argv):
    if len(argv) == 5 and argv[1] in ("stripe-write", "stripe-trim"):
        return stripes(argv)
    if len(argv) not in (4, 5) or argv[1] != "check":
        print(__doc__, file=sys.stderr)
        return 2
    uri, path = argv[2], argv[3]
    base = int(argv[4]) if len(argv) == 5 else 0
    with open(path, "rb") as f:
        want = f.read()
    h = nbd.NBD()
    h.connect_uri(uri)
    ok = eio = err = wrong = 0
    for n in range(len(want) // BS):
        try:
            got = h.pread(BS, base + n * BS)
        except nbd.Error as e:
            if e.errnum == errno.EIO:
                eio += 1
                print("EIO %d" % n)
            else:
                err += 1
                print("ERR %d %s" % (n, errno.errorcode.get(e.errnum, e.errnum)))
            continue
        if got != want[n * BS:(n + 1) * BS]:
            wrong += 1
            print("WRONG %d" % n)
        else:
            ok += 1
    print("blocks: %d ok, %d eio, %d err, %d wrong" % (ok, eio, err, wrong))
    h.shutdown()
    return 0 if eio == err == wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
