//! The entry point: instruction-set choice, threads, and shape checks.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::activations::QuantizedRows;
use crate::out::OutView;
use crate::packed::PackedMatrix;
use crate::{KernelError, Result, scalar};

/// A pool of compute threads the kernels are handed; they start none of
/// their own. [`ComputePool::run`] calls `job(t)` once for each
/// `t in 0..threads()`, concurrently, and returns when all have returned.
///
/// switchyard-text implements it over the pool candle's CPU kernels use, so
/// the two never oversubscribe the cores. [`Inline`] runs on the caller.
pub trait ComputePool: Sync {
    /// Number of threads `run` uses (at least 1).
    fn threads(&self) -> usize;
    /// Runs `job(t)` for every thread index `t`.
    fn run(&self, job: &(dyn Fn(usize) + Sync));
}

/// The calling thread only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inline;

impl ComputePool for Inline {
    fn threads(&self) -> usize {
        1
    }

    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        job(0);
    }
}

/// An instruction-set path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Portable Rust; the reference the others match bit for bit.
    Scalar,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// x86-64 AVX-512 with VNNI (on 256-bit registers, AVX-512VL).
    Avx512Vnni,
    /// aarch64 baseline NEON (widening multiplies).
    Neon,
    /// aarch64 NEON with the Armv8.2 dot-product extension (`sdot`).
    NeonDotprod,
}

impl Isa {
    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => crate::x86::has_vnni(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => true,
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => crate::neon::has_dotprod(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The paths this CPU can run, fastest last.
    pub fn available() -> Vec<Isa> {
        [
            Isa::Scalar,
            Isa::Avx2,
            Isa::Avx512Vnni,
            Isa::Neon,
            Isa::NeonDotprod,
        ]
        .into_iter()
        .filter(|i| i.is_available())
        .collect()
    }

    /// The fastest path this CPU can run (detected once; `matmul` asks on
    /// every call).
    pub fn best() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Isa::available().pop().unwrap_or(Isa::Scalar))
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Neon => "neon",
            Isa::NeonDotprod => "neon-dotprod",
        })
    }
}

/// `out = x * w^T`: `x` is `m x k` activations (already quantized), `w` is
/// `n x k` weights, `out` is `m x n` (row-major), computed with the fastest
/// path this CPU has, split over `pool`'s threads by column groups.
///
/// # Errors
/// [`KernelError::ShapeMismatch`] when `k` or `out`'s length disagree.
pub fn matmul(
    w: &PackedMatrix,
    x: &QuantizedRows,
    out: &mut [f32],
    pool: &dyn ComputePool,
) -> Result<()> {
    matmul_with(Isa::best(), w, x, out, pool)
}

/// [`matmul`] on a chosen path.
///
/// # Errors
/// As [`matmul`], and [`KernelError::Unsupported`] when this CPU cannot run
/// `isa`.
pub fn matmul_with(
    isa: Isa,
    w: &PackedMatrix,
    x: &QuantizedRows,
    out: &mut [f32],
    pool: &dyn ComputePool,
) -> Result<()> {
    if x.cols() != w.cols() {
        return Err(KernelError::ShapeMismatch {
            expected: w.cols(),
            got: x.cols(),
        });
    }
    let want = x.rows() * w.rows();
    if out.len() != want {
        return Err(KernelError::ShapeMismatch {
            expected: want,
            got: out.len(),
        });
    }
    if !isa.is_available() {
        return Err(KernelError::Unsupported { isa });
    }
    if x.rows() == 0 {
        return Ok(());
    }
    let view = OutView::new(out, x.rows(), w.rows());
    let groups = w.groups();
    let threads = pool.threads().max(1);
    // Chunks of whole 4-group tiles, about four per thread so a slow thread
    // is helped by the others without many trips to the shared cursor.
    let chunk = groups.div_ceil(threads * 4).next_multiple_of(4).max(4);
    let cursor = AtomicUsize::new(0);
    let job = |_t: usize| {
        loop {
            let start = cursor.fetch_add(chunk, Ordering::Relaxed);
            if start >= groups {
                break;
            }
            let range = start..groups.min(start + chunk);
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => crate::x86::gemm_groups(false, w, x, range, &view),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Vnni => crate::x86::gemm_groups(true, w, x, range, &view),
                #[cfg(target_arch = "aarch64")]
                Isa::Neon => crate::neon::gemm_groups(false, w, x, range, &view),
                #[cfg(target_arch = "aarch64")]
                Isa::NeonDotprod => crate::neon::gemm_groups(true, w, x, range, &view),
                _ => scalar::gemm_groups(w, x, range, &view),
            }
        }
    };
    if threads == 1 || groups <= chunk {
        job(0);
    } else {
        pool.run(&job);
    }
    Ok(())
}
