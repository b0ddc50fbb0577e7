//! [`CandleComputePool`]: switchyard-kernels' threads are candle's threads.

use switchyard_kernels::ComputePool;

/// The persistent worker pool candle's own CPU kernels use
/// (`candle_core::utils::barrier_pool`), handed to switchyard-kernels so the
/// quantized matmuls and candle's other ops share one set of threads and
/// never oversubscribe the cores. Its size follows candle's settings, read
/// once when candle starts the pool: `CANDLE_NUM_THREADS`, else
/// `RAYON_NUM_THREADS`, else the physical cores.
#[derive(Debug, Clone, Copy, Default)]
pub struct CandleComputePool;

impl ComputePool for CandleComputePool {
    fn threads(&self) -> usize {
        // The pool's own count: `get_num_threads` reads the environment
        // and /proc on every call, tens of microseconds a matmul.
        candle_core::utils::barrier_pool().n_workers() + 1
    }

    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        candle_core::utils::barrier_pool().execute(job);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn runs_every_thread_index_once() {
        let calls = AtomicUsize::new(0);
        let seen = parking_lot::Mutex::new(Vec::new());
        CandleComputePool.run(&|t| {
            calls.fetch_add(1, Ordering::Relaxed);
            seen.lock().push(t);
        });
        let mut seen = seen.into_inner();
        seen.sort_unstable();
        let n = calls.load(Ordering::Relaxed);
        assert_eq!(n, CandleComputePool.threads());
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
    }
}
