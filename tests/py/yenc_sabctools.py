"""yEnc interop and speed peer: SABnzbd's sabctools (PyPI wheel, SIMD yEnc and CRC32).

    python3 tests/py/yenc_sabctools.py decode IN.yenc OUT.bin   # prints JSON: name, size, crc
    python3 tests/py/yenc_sabctools.py encode IN.bin OUT.body   # prints JSON: crc
    python3 tests/py/yenc_sabctools.py bench SIZE REPS          # prints JSON: GB/s each way

sabctools decodes NNTP responses, so `decode` wraps the file as a 222 BODY response ending
in ".\\r\\n" (our encoder escapes '.' at the start of a line, so no dot-stuffing is needed).
"""
import json
import os
import sys
import time

import sabctools


def nntp_decode(yenc: bytes):
    response = b"222 0 <spillway@test>\r\n" + yenc + b".\r\n"
    decoder = sabctools.Decoder(1 << 22)
    decoder.expect("body")
    buf = memoryview(decoder)
    pos = 0
    while pos < len(response):
        n = min(len(buf), len(response) - pos)
        buf[:n] = response[pos : pos + n]
        decoder.process(n)
        pos += n
    out = list(decoder)
    if len(out) != 1:
        raise SystemExit(f"expected one response, got {len(out)}")
    return out[0]


def main():
    cmd = sys.argv[1]
    if cmd == "decode":
        r = nntp_decode(open(sys.argv[2], "rb").read())
        open(sys.argv[3], "wb").write(bytes(r.data or b""))
        print(json.dumps({"name": r.file_name, "size": r.file_size, "end_size": r.end_size,
                          "crc": r.crc, "crc_expected": r.crc_expected, "decoded": r.bytes_decoded}))
    elif cmd == "encode":
        body, crc = sabctools.yenc_encode(open(sys.argv[2], "rb").read())
        open(sys.argv[3], "wb").write(body)
        print(json.dumps({"crc": crc}))
    elif cmd == "bench":
        size, reps = int(sys.argv[2]), int(sys.argv[3])
        data = os.urandom(size)
        best_enc = best_dec = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            body, crc = sabctools.yenc_encode(data)
            best_enc = min(best_enc, time.perf_counter() - t)
        yenc = b"=ybegin line=128 size=%d name=X\r\n" % size + body
        yenc += b"\r\n=yend size=%d crc32=%08x\r\n" % (size, crc)
        for _ in range(reps):
            t = time.perf_counter()
            r = nntp_decode(yenc)
            best_dec = min(best_dec, time.perf_counter() - t)
            assert r.crc == crc
        print(json.dumps({"size": size, "simd": sabctools.simd, "encode_gbps": size / best_enc / 1e9,
                          "decode_gbps": size / best_dec / 1e9}))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
