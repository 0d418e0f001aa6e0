//! spillway's codec kernels, in a crate of their own so they build (and cross-build for
//! aarch64) without the rest of spillway: GF(2^16) region arithmetic, PAR2 recovery data and
//! yEnc, each with scalar, SSSE3/AVX2 and NEON kernels chosen at run time. spillway re-exports
//! them as `spillway::codec::{gf16, par2, simd, yenc}`. See `docs/codecs.md`.

pub mod gf16;
pub mod par2;
pub mod simd;
pub mod yenc;
