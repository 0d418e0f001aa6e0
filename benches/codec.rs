//! Criterion benches for the codec kernels (not part of the test suite):
//!
//!   cargo bench --bench codec                 # everything
//!   cargo bench --bench codec -- gf16         # GF(2^16) region multiply-add per kernel
//!   cargo bench --bench codec -- par2_create  # PAR2 create of 4 MiB at 5% and 10%
//!   cargo bench --bench codec -- yenc         # yEnc encode / decode per kernel
//!
//! `bench/codec_vs_peers.sh` compares the same work with par2cmdline, par2cmdline-turbo and
//! sabctools.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spillway::codec::gf16::{Kernel as GfKernel, NibbleTables};
use spillway::codec::par2;
use spillway::codec::yenc::{Kernel as YencKernel, LINE_LEN};

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn gf16(c: &mut Criterion) {
    let mut g = c.benchmark_group("gf16_mul_add");
    for size in [2100usize, 65536] {
        let src = pseudo_random(size);
        let mut dst = vec![0u8; size];
        let t = NibbleTables::new(0x1234);
        g.throughput(Throughput::Bytes(size as u64));
        for k in GfKernel::available() {
            g.bench_with_input(BenchmarkId::new(k.kind().to_string(), size), &size, |b, _| {
                b.iter(|| k.mul_add(&mut dst, &src, &t))
            });
        }
    }
    g.finish();
}

fn par2_create(c: &mut Criterion) {
    let mut g = c.benchmark_group("par2_create");
    g.sample_size(10);
    let data = pseudo_random(4 << 20);
    g.throughput(Throughput::Bytes(data.len() as u64));
    for pct in [5u32, 10] {
        g.bench_with_input(BenchmarkId::new("4MiB", pct), &pct, |b, &pct| {
            b.iter(|| par2::create("X", &data, pct).map(|v| v.len()))
        });
    }
    g.finish();
}

fn yenc(c: &mut Criterion) {
    let mut g = c.benchmark_group("yenc");
    let data = pseudo_random(4 << 20);
    g.throughput(Throughput::Bytes(data.len() as u64));
    for k in YencKernel::available() {
        let mut body = Vec::new();
        g.bench_function(BenchmarkId::new("encode", k.kind().to_string()), |b| {
            b.iter(|| {
                body.clear();
                k.encode_body(&data, LINE_LEN, &mut body)
            })
        });
        let mut out = Vec::new();
        g.bench_function(BenchmarkId::new("decode_crc", k.kind().to_string()), |b| {
            b.iter(|| {
                out.clear();
                k.decode_body(&body, &mut out)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, gf16, par2_create, yenc);
criterion_main!(benches);
