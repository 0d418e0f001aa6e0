//! Best-of-N timings of the chunk pipeline on one core, one JSON object per line, for
//! `bench/pipeline.sh` (which also times the `lz4` and `zstd` command-line tools on the
//! same file and prints ratios).
//!
//!   cargo run --release --example pipeline_timing -- frames FILE [REPS]
//!       each codec and level at each frame size: ratio, compress and decompress GB/s
//!   cargo run --release --example pipeline_timing -- whole FILE CODEC [REPS]
//!       one codec over the whole file in 64 KiB frames (the chunk layout): GB/s and ratio
//!   cargo run --release --example pipeline_timing -- chunks FILE [REPS]
//!       building 4 MiB chunk objects with each pipeline (compress, PAR2, yEnc): MB/s, and
//!       the time a 4 KiB read from a frame not in the frame cache adds (read the frame
//!       from a chunk file, check, decompress; yEnc: the whole object)

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use spillway::chunk::format::{self, BlockIn, ChunkHeader, KIND_SPILL, TRANSPORT_RAW, TRANSPORT_YENC};
use spillway::codec::{par2, yenc, Compression};

#[path = "common/best.rs"]
mod timing;
use timing::best;

const BLOCK: usize = 4096;
const CHUNK: usize = 4 << 20;

fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

/// Compress `data` in frames of `frame` bytes; total stored bytes (a frame that does not
/// shrink counts raw, as in a chunk).
fn compress_frames(codec: Compression, data: &[u8], frame: usize) -> (usize, Vec<Option<Vec<u8>>>) {
    let frames: Vec<Option<Vec<u8>>> = data.chunks(frame).map(|f| codec.compress(f)).collect();
    let stored = frames.iter().zip(data.chunks(frame)).map(|(z, raw)| z.as_ref().map_or(raw.len(), Vec::len)).sum();
    (stored, frames)
}

fn decompress_frames(codec: Compression, data: &[u8], frame: usize, frames: &[Option<Vec<u8>>]) -> usize {
    let mut n = 0;
    for (z, raw) in frames.iter().zip(data.chunks(frame)) {
        n += match z {
            Some(z) => codec.decompress(z, raw.len()).map_or(0, |d| d.len()),
            None => raw.len(),
        };
    }
    n
}

fn codecs() -> Vec<Compression> {
    vec![Compression::Lz4, Compression::Zstd(1), Compression::Zstd(3), Compression::Zstd(6), Compression::Zstd(9)]
}

fn header(par2_percent: u8, transport: u8) -> ChunkHeader {
    ChunkHeader {
        codec: 0,
        kind: KIND_SPILL,
        par2_percent,
        transport,
        volume_id: [1; 16],
        chunk_id: 1,
        wal_segment: 1,
        wal_offset: 0,
    }
}

/// One chunk object as the spiller builds it: frames, recovery object, transport.
fn build(data: &[u8], codec: Compression, par2_percent: u8, yenc: bool) -> (Vec<u8>, Option<Vec<u8>>) {
    let ins: Vec<BlockIn> =
        data.chunks(BLOCK).enumerate().map(|(i, d)| BlockIn { block: i as u64, seq: 1, data: d }).collect();
    let transport = if yenc { TRANSPORT_YENC } else { TRANSPORT_RAW };
    let (obj, _) = format::build(header(par2_percent, transport), codec, &ins, &[]);
    let rec = (par2_percent > 0).then(|| par2::create("0000000000000001", &obj, u32::from(par2_percent)));
    let rec = rec.map(|r| r.expect("par2 create"));
    if yenc {
        let rec = rec.map(|r| yenc::encode("0000000000000001.par2", &r));
        (yenc::encode("0000000000000001", &obj), rec)
    } else {
        (obj, rec)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reps = |i: usize| args.get(i).and_then(|r| r.parse().ok()).unwrap_or(5);
    let data = std::fs::read(args.get(1).ok_or("FILE")?)?;
    let data = &data[..data.len() / BLOCK * BLOCK];
    match args.first().map(String::as_str) {
        Some("frames") => {
            for codec in codecs() {
                for frame in [16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10] {
                    let (tc, (stored, frames)) = best(reps(2), || compress_frames(codec, data, frame));
                    let (td, n) = best(reps(2), || decompress_frames(codec, data, frame, &frames));
                    assert_eq!(n, data.len());
                    // What one 4 KiB read of this frame size costs: decompress one frame.
                    let one =
                        frames.iter().zip(data.chunks(frame)).find_map(|(z, raw)| z.as_ref().map(|z| (z, raw.len())));
                    let per_read = one.map_or(Duration::ZERO, |(z, len)| {
                        best(reps(2) * 20, || codec.decompress(z, len).map(|d| d.len())).0
                    });
                    println!(
                        "{{\"what\":\"frames\",\"codec\":\"{codec}\",\"frame\":{frame},\"ratio\":{:.4},\"compress_gbps\":{:.4},\"decompress_gbps\":{:.4},\"read_4k_us\":{:.2}}}",
                        data.len() as f64 / stored as f64,
                        gbps(data.len(), tc),
                        gbps(data.len(), td),
                        per_read.as_secs_f64() * 1e6
                    );
                }
            }
        }
        Some("whole") => {
            let codec: Compression = args.get(2).ok_or("CODEC")?.parse()?;
            let frame = 64 << 10;
            let (tc, (stored, frames)) = best(reps(3), || compress_frames(codec, data, frame));
            let (td, _) = best(reps(3), || decompress_frames(codec, data, frame, &frames));
            println!(
                "{{\"what\":\"whole\",\"codec\":\"{codec}\",\"bytes\":{},\"stored\":{stored},\"compress_s\":{},\"decompress_s\":{}}}",
                data.len(),
                tc.as_secs_f64(),
                td.as_secs_f64()
            );
        }
        Some("chunks") => {
            let chunk = &data[..CHUNK.min(data.len())];
            let dir = tempfile::tempdir()?;
            let pipelines: [(&str, Compression, u8, bool); 7] = [
                ("none", Compression::None, 0, false),
                ("lz4", Compression::Lz4, 0, false),
                ("zstd:3", Compression::Zstd(3), 0, false),
                ("lz4 + par2 5%", Compression::Lz4, 5, false),
                ("lz4 + par2 10%", Compression::Lz4, 10, false),
                ("lz4 + yenc", Compression::Lz4, 0, true),
                ("lz4 + par2 10% + yenc", Compression::Lz4, 10, true),
            ];
            for (name, codec, pct, ye) in pipelines {
                let (t, (obj, rec)) = best(reps(2), || build(chunk, codec, pct, ye));
                let path = dir.path().join("chunk");
                std::fs::write(&path, &obj)?;
                // A read of block 100 when its frame is not cached, from a file in the page
                // cache: the CPU and syscall cost the pipeline adds, not the disk's.
                let raw_obj = if ye { yenc::decode(&obj)?.data } else { obj.clone() };
                let t_obj = format::parse_object(&raw_obj)?;
                let e = t_obj.blocks[100];
                let fl = t_obj.frames[e.frame as usize];
                let (read, got) = best(reps(2) * 50, || -> Result<Vec<u8>, Box<dyn std::error::Error>> {
                    let mut f = std::fs::File::open(&path)?;
                    let stored = if ye {
                        let mut all = Vec::new();
                        f.read_to_end(&mut all)?;
                        let d = yenc::decode(&all)?.data;
                        d[fl.offset as usize..(fl.offset + u64::from(fl.stored_len)) as usize].to_vec()
                    } else {
                        f.seek(SeekFrom::Start(fl.offset))?;
                        let mut b = vec![0u8; fl.stored_len as usize];
                        f.read_exact(&mut b)?;
                        b
                    };
                    let frame = format::open_frame(codec, &fl, &stored)?;
                    Ok(frame[e.offset as usize..e.offset as usize + BLOCK].to_vec())
                });
                assert_eq!(got?, chunk[100 * BLOCK..101 * BLOCK]);
                println!(
                    "{{\"what\":\"chunk\",\"pipeline\":\"{name}\",\"raw\":{},\"stored\":{},\"par2\":{},\"build_mbps\":{:.1},\"read_4k_us\":{:.1}}}",
                    chunk.len(),
                    obj.len(),
                    rec.map_or(0, |r| r.len()),
                    chunk.len() as f64 / t.as_secs_f64() / 1e6,
                    read.as_secs_f64() * 1e6
                );
            }
        }
        _ => return Err("usage: pipeline_timing frames|whole|chunks FILE ...".into()),
    }
    Ok(())
}
