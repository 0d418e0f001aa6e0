#!/usr/bin/python3
"""Lays out data, a trimmed range and a zeroed range for `nbdinfo --map`.

    map_layout.py URI

Writes non-zero data over [0, 4 MiB), then TRIMs [1 MiB, 2 MiB) and
WRITE_ZEROES [3 MiB, 4 MiB) (no flags: the server may punch a hole), flushes
and disconnects. Exits non-zero on any error.
"""

import sys

import nbd

MiB = 1024 * 1024


def main():
    if len(sys.argv) != 2:
        print("usage: map_layout.py URI", file=sys.stderr)
        return 2
    h = nbd.NBD()
    h.connect_uri(sys.argv[1])
    for i in range(4):
        h.pwrite(bytes([0x41 + i]) * MiB, i * MiB)
    h.trim(MiB, MiB)
    h.zero(MiB, 3 * MiB)
    h.flush()
    # The data ranges must still read back; the trimmed/zeroed ones as zero.
    assert h.pread(MiB, 0) == b"\x41" * MiB, "data at [0, 1M) changed"
    assert h.pread(MiB, 2 * MiB) == b"\x43" * MiB, "data at [2M, 3M) changed"
    assert h.pread(MiB, 3 * MiB) == b"\0" * MiB, "zeroed [3M, 4M) not zero"
    h.shutdown()
    print("layout written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
