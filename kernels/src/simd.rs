//! The instruction sets the codec kernels come in. Each codec decides for itself which of
//! them the CPU can run (`gf16::Kernel::get`, `yenc::Kernel::get`).

use std::fmt;

/// Which implementation a kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelKind {
    Scalar,
    Ssse3,
    Avx2,
    Neon,
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelKind::Scalar => "scalar",
            KernelKind::Ssse3 => "ssse3",
            KernelKind::Avx2 => "avx2",
            KernelKind::Neon => "neon",
        })
    }
}
