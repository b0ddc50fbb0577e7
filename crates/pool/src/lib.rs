//! Reuse of memory instead of allocating it.
//!
//! `switchyard-pool` owns [`KvBlockPool`], the block allocator for
//! key/value caches as vLLM's PagedAttention manages them: a fixed number of
//! blocks of `block_size` token slots, a block table per sequence, O(1)
//! allocate and free, reference counts so sequences share prefix blocks,
//! copy-on-write when a shared block is appended to, and a prefix index
//! (chained hashes of each full block's token ids, checked against the
//! tokens themselves) so a new sequence that starts with a cached prefix
//! reuses those blocks. The storage behind the blocks (one tensor per layer)
//! belongs to the model, through the [`KvStorage`] trait.
//!
//! [`BufferPool`] hands out host buffers in size classes (the rounding rule
//! is in [`classes`]) from lock-free per-class free lists, behind
//! [`PooledBuffer`] guards that return them on drop, 64-byte aligned, with
//! typed views (`&mut [f32]`, `&mut [half::f16]`, `&mut [u8]`), a cap on
//! cached bytes, `trim` for memory-pressure listeners, and stats. With
//! feature `candle`, a buffer becomes a model input tensor.
//!
//! # Example
//!
//! ```
//! use switchyard_pool::{KvBlockPool, KvPoolConfig, SeqId};
//!
//! let mut pool = KvBlockPool::new(KvPoolConfig::new(64, 16))?;
//! let prompt: Vec<u32> = (0..40).collect();
//! let seq = SeqId(7);
//! assert!(pool.can_allocate(prompt.len()));
//! let cached = pool.add_sequence(seq, &prompt)?; // 0: nothing cached yet
//! // ... the model writes keys and values of tokens `cached..40` at
//! // `pool.slot(seq, position)` ...
//! pool.commit(seq, prompt.len())?;
//! pool.append(seq, 1234)?; // one decoded token
//! assert_eq!(pool.block_table(seq)?.len(), 3); // 41 tokens in blocks of 16
//! pool.free(seq)?;
//! assert_eq!(pool.stats().used, 0);
//! # let _ = cached;
//! # Ok::<(), switchyard_pool::PoolError>(())
//! ```
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod buffer;
pub mod classes;
mod kv;
mod lru;

pub use buffer::{BufferPool, BufferStats, PooledBuffer};
pub use kv::{
    BlockCopy, BlockId, KvBlockPool, KvPoolConfig, KvStats, KvStorage, PrefixReuse, SeqId,
};

/// Errors from the pools.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Not enough free KV blocks for a request.
    #[error("out of KV blocks: requested {requested}, free {free}")]
    OutOfBlocks {
        /// Blocks asked for.
        requested: usize,
        /// Blocks free at the time.
        free: usize,
    },
    /// No sequence has this id.
    #[error("unknown sequence {0}")]
    UnknownSequence(u64),
    /// A sequence with this id is already in the pool.
    #[error("sequence {0} already exists")]
    SequenceExists(u64),
    /// A token position past the sequence's end.
    #[error("position {position} is past the sequence's {len} tokens")]
    OutOfRange {
        /// The position asked for.
        position: usize,
        /// Tokens the sequence holds.
        len: usize,
    },
    /// A buffer of this size cannot exist (its size class overflows, or
    /// the allocator refused it).
    #[error("a buffer of {bytes} bytes cannot be allocated")]
    TooLarge {
        /// Bytes asked for.
        bytes: usize,
    },
    /// A setting is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

/// Result with [`PoolError`].
pub type Result<T, E = PoolError> = std::result::Result<T, E>;
