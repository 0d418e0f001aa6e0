//! Best-of-N wall-clock timings of the codec kernels on one core, one JSON object per line,
//! for `bench/codec_vs_peers.sh` (which times par2cmdline, par2cmdline-turbo and sabctools on
//! the same inputs and prints ratios).
//!
//!   cargo run --release --example codec_timing -- par2 FILE PERCENT OUT.par2 [REPS]
//!   cargo run --release --example codec_timing -- yenc SIZE [REPS [KERNEL|all [LINE_LEN]]]
//!   cargo run --release --example codec_timing -- gf16 SIZE [REPS]

use spillway::codec::gf16::{Kernel as GfKernel, NibbleTables};
use spillway::codec::par2::{self, Par2Params};
use spillway::codec::yenc::{Kernel as YencKernel, LINE_LEN};

#[path = "common/best.rs"]
mod timing;
use timing::best;

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reps = |i: usize| args.get(i).and_then(|r| r.parse().ok()).unwrap_or(5);
    match args.first().map(String::as_str) {
        Some("par2") => {
            let data = std::fs::read(&args[1])?;
            let pct: u32 = args[2].parse()?;
            let name = std::path::Path::new(&args[1]).file_name().and_then(|n| n.to_str()).ok_or("file name")?;
            let params = Par2Params::for_len(data.len() as u64, pct);
            let (t, size) = best(reps(4), || -> Result<usize, Box<dyn std::error::Error>> {
                let set = par2::create(name, &data, pct)?;
                std::fs::write(&args[3], &set)?;
                Ok(set.len())
            });
            println!(
                "{{\"what\":\"par2_create\",\"bytes\":{},\"percent\":{pct},\"slice_size\":{},\"recovery\":{},\"seconds\":{},\"par2_bytes\":{}}}",
                data.len(),
                params.slice_size,
                params.recovery_slices,
                t.as_secs_f64(),
                size?
            );
        }
        Some("yenc") => {
            let size: usize = args[1].parse()?;
            let data = pseudo_random(size);
            let only = args.get(3).filter(|k| k.as_str() != "all");
            let line_len: usize = args.get(4).and_then(|l| l.parse().ok()).unwrap_or(LINE_LEN);
            for k in YencKernel::available().into_iter().filter(|k| only.is_none_or(|o| *o == k.kind().to_string())) {
                let mut body = Vec::new();
                let (te, crc_e) = best(reps(2), || {
                    body.clear();
                    k.encode_body(&data, line_len, &mut body)
                });
                let mut out = Vec::with_capacity(size);
                let (td, crc) = best(reps(2), || {
                    out.clear();
                    k.decode_body(&body, &mut out)
                });
                assert_eq!(crc?, crc32fast::hash(&data));
                assert_eq!(crc_e, crc32fast::hash(&data));
                println!(
                    "{{\"what\":\"yenc\",\"kernel\":\"{}\",\"bytes\":{size},\"encode_crc_gbps\":{:.3},\"decode_crc_gbps\":{:.3}}}",
                    k.kind(),
                    size as f64 / te.as_secs_f64() / 1e9,
                    size as f64 / td.as_secs_f64() / 1e9,
                );
            }
        }
        Some("crc32") => {
            let size: usize = args[1].parse()?;
            let data = pseudo_random(size);
            let (t, _) = best(reps(2), || crc32fast::hash(&data));
            println!("{{\"what\":\"crc32fast\",\"bytes\":{size},\"gbps\":{:.3}}}", size as f64 / t.as_secs_f64() / 1e9);
        }
        Some("gf16") => {
            let size: usize = args[1].parse()?;
            let src = pseudo_random(size);
            let mut dst = vec![0u8; size];
            let t = NibbleTables::new(0x1234);
            for k in GfKernel::available() {
                let (d, ()) = best(reps(2), || k.mul_add(&mut dst, &src, &t));
                println!(
                    "{{\"what\":\"gf16_mul_add\",\"kernel\":\"{}\",\"bytes\":{size},\"gbps\":{:.3}}}",
                    k.kind(),
                    size as f64 / d.as_secs_f64() / 1e9
                );
            }
            // The memory reference: a copy reads and writes each byte once, as the
            // multiply-add reads `src` and `dst` and writes `dst`.
            let (d, ()) = best(reps(2), || dst.copy_from_slice(std::hint::black_box(&src)));
            println!("{{\"what\":\"memcpy\",\"bytes\":{size},\"gbps\":{:.3}}}", size as f64 / d.as_secs_f64() / 1e9);
        }
        _ => return Err("usage: codec_timing par2 FILE PERCENT OUT | yenc SIZE | gf16 SIZE".into()),
    }
    Ok(())
}
