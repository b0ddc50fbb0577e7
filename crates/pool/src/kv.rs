//! [`KvBlockPool`]: paged key/value-cache blocks, as vLLM's PagedAttention
//! manages them — block tables per sequence, shared prefix blocks with
//! reference counts, copy-on-write, and a prefix index for prefix caching.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::lru::LruList;
use crate::{PoolError, Result};

/// A physical block's index in the KV storage.
pub type BlockId = u32;

/// Names a sequence in the pool (the caller's choice: one per request, or
/// one per sample of a request with `n > 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// Size of a [`KvBlockPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPoolConfig {
    /// Blocks in the storage.
    pub num_blocks: usize,
    /// Token slots per block.
    pub block_size: usize,
    /// Keep full blocks of finished sequences for reuse by later sequences
    /// that start with the same tokens.
    pub prefix_caching: bool,
}

impl KvPoolConfig {
    /// `num_blocks` blocks of `block_size` slots, prefix caching on.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self {
            num_blocks,
            block_size,
            prefix_caching: true,
        }
    }
}

/// Where the blocks physically live (the text crate's tensors, one per layer,
/// `[num_blocks * block_size, kv_heads, head_dim]`). The pool decides which
/// block goes where; the storage only copies when the pool says so.
pub trait KvStorage {
    /// What a failed copy reports.
    type Error;
    /// Copy every slot of block `from` into block `to` (copy-on-write).
    fn copy_block(&mut self, from: BlockId, to: BlockId) -> std::result::Result<(), Self::Error>;
}

/// A copy the storage must make before the sequence writes its next token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    /// The shared block.
    pub from: BlockId,
    /// The sequence's own copy.
    pub to: BlockId,
}

/// Counters and gauges of a [`KvBlockPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvStats {
    /// Blocks in all.
    pub total: usize,
    /// Blocks nobody holds and no prefix is cached in.
    pub free: usize,
    /// Blocks nobody holds that keep a cached prefix (evicted on demand).
    pub cached: usize,
    /// Blocks held by at least one sequence.
    pub used: usize,
    /// Sequences in the pool.
    pub sequences: usize,
    /// Full prompt blocks looked up in the prefix index.
    pub prefix_queries: u64,
    /// Of those, found.
    pub prefix_hits: u64,
    /// Cached blocks reclaimed for new data.
    pub evictions: u64,
    /// Copies asked of the storage (copy-on-write, and part-filled prefix
    /// blocks reused by [`KvBlockPool::start_sequence`]).
    pub copies: u64,
    /// Prompt tokens reused from part-filled cached blocks.
    pub partial_tokens: u64,
}

impl KvStats {
    /// Share of looked-up prompt blocks found in the cache.
    pub fn hit_rate(&self) -> f64 {
        if self.prefix_queries == 0 {
            0.0
        } else {
            self.prefix_hits as f64 / self.prefix_queries as f64
        }
    }
}

/// What a full, computed block holds, for the prefix index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registered {
    hash: u64,
    parent: u64,
    tokens: Box<[u32]>,
}

#[derive(Debug, Clone, Default)]
struct Block {
    refs: u32,
    registered: Option<Registered>,
}

#[derive(Debug, Clone)]
struct Sequence {
    blocks: Vec<BlockId>,
    tokens: Vec<u32>,
    /// Tokens whose keys and values are written (see [`KvBlockPool::commit`]).
    computed: usize,
    /// Chain hash of each full block, in order.
    hashes: Vec<u64>,
}

/// Hashes the u64 keys of the pool's maps (sequence ids, chain hashes) with
/// one multiply-xorshift instead of SipHash: keys are not attacker-chosen
/// block contents but ids and already-mixed hashes.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = mix(self.0 ^ n);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

const ROOT: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Emptied sequences kept for reuse, at most.
const SPARE_SEQUENCES: usize = 64;

/// The hash of a block of `tokens` that follows the block hashed `parent`.
fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    tokens
        .iter()
        .fold(mix(parent), |h, &t| mix(h ^ u64::from(t)))
}

/// The KV-cache block allocator.
///
/// Every operation is O(1) in the number of blocks (O(blocks touched) for
/// a whole prompt). A refused operation changes nothing.
///
/// ```
/// use switchyard_pool::{KvBlockPool, KvPoolConfig, SeqId};
///
/// let mut pool = KvBlockPool::new(KvPoolConfig::new(8, 4))?;
/// let system: Vec<u32> = (0..8).collect(); // two full blocks
/// let a = SeqId(1);
/// assert_eq!(pool.add_sequence(a, &[&system[..], &[100]].concat())?, 0);
/// pool.commit(a, 9)?; // the prefill wrote all 9 tokens
/// pool.free(a)?;
///
/// // A later request with the same system prompt reuses its two blocks.
/// let b = SeqId(2);
/// assert_eq!(pool.add_sequence(b, &[&system[..], &[200]].concat())?, 8);
/// assert_eq!(pool.stats().prefix_hits, 2);
/// # Ok::<(), switchyard_pool::PoolError>(())
/// ```
#[derive(Debug, Clone)]
pub struct KvBlockPool {
    config: KvPoolConfig,
    blocks: Vec<Block>,
    free: Vec<BlockId>,
    cached: LruList,
    index: IdMap<u64, BlockId>,
    seqs: IdMap<SeqId, Sequence>,
    /// Emptied sequences kept for their allocations.
    spare: Vec<Sequence>,
    stats: KvStats,
}

impl KvBlockPool {
    /// A pool with every block free.
    pub fn new(config: KvPoolConfig) -> Result<Self> {
        if config.block_size == 0 || config.num_blocks == 0 {
            return Err(PoolError::InvalidConfig {
                field: "kv pool",
                reason: "num_blocks and block_size must be at least 1".to_owned(),
            });
        }
        if u32::try_from(config.num_blocks).is_err() {
            return Err(PoolError::InvalidConfig {
                field: "num_blocks",
                reason: format!("{} does not fit a u32 block id", config.num_blocks),
            });
        }
        let n = config.num_blocks;
        Ok(Self {
            config,
            blocks: vec![Block::default(); n],
            // Popped from the back: block 0 goes first.
            free: (0..n as BlockId).rev().collect(),
            cached: LruList::new(n),
            index: IdMap::default(),
            seqs: IdMap::default(),
            spare: Vec::new(),
            stats: KvStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KvPoolConfig {
        &self.config
    }

    /// Blocks needed for `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.config.block_size)
    }

    /// Blocks that can be handed out now (free plus evictable cached ones).
    pub fn available(&self) -> usize {
        self.free.len() + self.cached.len()
    }

    /// Whether a new sequence of `tokens` tokens fits now (admission
    /// control; prefix hits can only lower the need).
    pub fn can_allocate(&self, tokens: usize) -> bool {
        self.blocks_for(tokens) <= self.available()
    }

    fn sequence(&self, seq: SeqId) -> Result<&Sequence> {
        self.seqs.get(&seq).ok_or(PoolError::UnknownSequence(seq.0))
    }

    /// The block table of `seq`: its blocks in token order.
    pub fn block_table(&self, seq: SeqId) -> Result<&[BlockId]> {
        Ok(&self.sequence(seq)?.blocks)
    }

    /// Tokens held by `seq`.
    pub fn len(&self, seq: SeqId) -> Result<usize> {
        Ok(self.sequence(seq)?.tokens.len())
    }

    /// The storage slot (row of `[num_blocks * block_size, ...]`) of token
    /// `position` of `seq`.
    pub fn slot(&self, seq: SeqId, position: usize) -> Result<usize> {
        let s = self.sequence(seq)?;
        let bs = self.config.block_size;
        let block = s
            .blocks
            .get(position / bs)
            .filter(|_| position < s.tokens.len())
            .ok_or(PoolError::OutOfRange {
                position,
                len: s.tokens.len(),
            })?;
        Ok(*block as usize * bs + position % bs)
    }

    /// Counters and gauges.
    pub fn stats(&self) -> KvStats {
        let free = self.free.len();
        let cached = self.cached.len();
        KvStats {
            total: self.config.num_blocks,
            free,
            cached,
            used: self.config.num_blocks - free - cached,
            sequences: self.seqs.len(),
            ..self.stats
        }
    }

    /// Reference count of `block` (how many sequences hold it).
    pub fn refs(&self, block: BlockId) -> u32 {
        self.blocks.get(block as usize).map_or(0, |b| b.refs)
    }

    fn take_block(&mut self) -> Result<BlockId> {
        if let Some(b) = self.free.pop() {
            return Ok(b);
        }
        let Some(b) = self.cached.pop_front() else {
            return Err(PoolError::OutOfBlocks {
                requested: 1,
                free: 0,
            });
        };
        if let Some(r) = self.blocks[b as usize].registered.take()
            && self.index.get(&r.hash) == Some(&b)
        {
            self.index.remove(&r.hash);
        }
        self.stats.evictions += 1;
        Ok(b)
    }

    fn retain(&mut self, b: BlockId) {
        let block = &mut self.blocks[b as usize];
        if block.refs == 0 {
            self.cached.remove(b);
        }
        block.refs += 1;
    }

    fn release(&mut self, b: BlockId) {
        let block = &mut self.blocks[b as usize];
        block.refs = block.refs.saturating_sub(1);
        if block.refs == 0 {
            if block.registered.is_some() {
                self.cached.push_back(b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// The cached block holding the full block `tokens` after `parent`.
    fn lookup(&self, parent: u64, tokens: &[u32]) -> Option<(BlockId, u64)> {
        let hash = chain_hash(parent, tokens);
        let &b = self.index.get(&hash)?;
        let r = self.blocks[b as usize].registered.as_ref()?;
        // A hash collision must never hand out another prompt's keys.
        (r.parent == parent && *r.tokens == *tokens).then_some((b, hash))
    }

    /// Start `seq` with `prompt`. Returns how many leading tokens are already
    /// in cached blocks (the caller computes only the rest; at least the
    /// last token is always left to compute).
    pub fn add_sequence(&mut self, seq: SeqId, prompt: &[u32]) -> Result<usize> {
        if self.seqs.contains_key(&seq) {
            return Err(PoolError::SequenceExists(seq.0));
        }
        let bs = self.config.block_size;
        let mut hits: Vec<(BlockId, u64)> = Vec::new();
        if self.config.prefix_caching {
            let full = prompt.len().saturating_sub(1) / bs;
            let mut parent = ROOT;
            for chunk in prompt.chunks_exact(bs).take(full) {
                self.stats.prefix_queries += 1;
                match self.lookup(parent, chunk) {
                    Some((b, hash)) => {
                        self.stats.prefix_hits += 1;
                        hits.push((b, hash));
                        parent = hash;
                    }
                    None => break,
                }
            }
        }
        let needed = self.blocks_for(prompt.len());
        let fresh = needed - hits.len();
        let revived = hits
            .iter()
            .filter(|(b, _)| self.blocks[*b as usize].refs == 0)
            .count();
        let available = self.available() - revived;
        if fresh > available {
            return Err(PoolError::OutOfBlocks {
                requested: fresh,
                free: available,
            });
        }
        for &(b, _) in &hits {
            self.retain(b);
        }
        let mut s = self.spare.pop().unwrap_or_else(|| Sequence {
            blocks: Vec::new(),
            tokens: Vec::new(),
            computed: 0,
            hashes: Vec::new(),
        });
        s.blocks.extend(hits.iter().map(|&(b, _)| b));
        for _ in 0..fresh {
            let b = self.take_block()?;
            self.retain(b);
            s.blocks.push(b);
        }
        let cached = hits.len() * bs;
        s.tokens.extend_from_slice(prompt);
        s.computed = cached;
        s.hashes.extend(hits.iter().map(|&(_, h)| h));
        self.seqs.insert(seq, s);
        Ok(cached)
    }

    /// Say that the first `computed` tokens of `seq` have their keys and
    /// values written: its full blocks among them enter the prefix index.
    pub fn commit(&mut self, seq: SeqId, computed: usize) -> Result<()> {
        let bs = self.config.block_size;
        let caching = self.config.prefix_caching;
        let s = self
            .seqs
            .get_mut(&seq)
            .ok_or(PoolError::UnknownSequence(seq.0))?;
        if computed > s.tokens.len() {
            return Err(PoolError::OutOfRange {
                position: computed,
                len: s.tokens.len(),
            });
        }
        s.computed = s.computed.max(computed);
        let full = s.computed / bs;
        while s.hashes.len() < full {
            let i = s.hashes.len();
            let parent = s.hashes.last().copied().unwrap_or(ROOT);
            let tokens = &s.tokens[i * bs..(i + 1) * bs];
            let hash = chain_hash(parent, tokens);
            s.hashes.push(hash);
            if !caching {
                continue;
            }
            let b = s.blocks[i];
            let block = &mut self.blocks[b as usize];
            if block.registered.is_none() && !self.index.contains_key(&hash) {
                block.registered = Some(Registered {
                    hash,
                    parent,
                    tokens: tokens.into(),
                });
                self.index.insert(hash, b);
            }
        }
        Ok(())
    }

    /// Make room for one more token of `seq` and record it. Returns the copy
    /// the storage must make first when the last block was shared
    /// (copy-on-write); the token's slot is then [`slot`](Self::slot) of
    /// position `len - 1`.
    pub fn append(&mut self, seq: SeqId, token: u32) -> Result<Option<BlockCopy>> {
        let bs = self.config.block_size;
        let s = self.sequence(seq)?;
        let len = s.tokens.len();
        let last = s.blocks.last().copied();
        let mut copy = None;
        if len.is_multiple_of(bs) {
            let b = self.take_block()?;
            self.retain(b);
            self.seq_mut(seq)?.blocks.push(b);
        } else if let Some(last) = last
            && self.blocks[last as usize].refs > 1
        {
            let to = self.take_block()?;
            self.retain(to);
            self.release(last);
            if let Some(slot) = self.seq_mut(seq)?.blocks.last_mut() {
                *slot = to;
            }
            self.stats.copies += 1;
            copy = Some(BlockCopy { from: last, to });
        }
        self.seq_mut(seq)?.tokens.push(token);
        Ok(copy)
    }

    fn seq_mut(&mut self, seq: SeqId) -> Result<&mut Sequence> {
        self.seqs
            .get_mut(&seq)
            .ok_or(PoolError::UnknownSequence(seq.0))
    }

    /// Start `child` as a copy of `parent` that shares all its blocks (for
    /// `n > 1` samples or beams); the first append to a shared partial
    /// block copies it.
    pub fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<()> {
        if self.seqs.contains_key(&child) {
            return Err(PoolError::SequenceExists(child.0));
        }
        let copy = self.sequence(parent)?.clone();
        for &b in &copy.blocks {
            self.retain(b);
        }
        self.seqs.insert(child, copy);
        Ok(())
    }

    /// End `seq`: its blocks go back (blocks holding a computed prefix stay
    /// cached for reuse until the space is needed; the prefix's last blocks
    /// are evicted first).
    pub fn free(&mut self, seq: SeqId) -> Result<()> {
        let mut s = self
            .seqs
            .remove(&seq)
            .ok_or(PoolError::UnknownSequence(seq.0))?;
        for &b in s.blocks.iter().rev() {
            self.release(b);
        }
        if self.spare.len() < SPARE_SEQUENCES {
            s.blocks.clear();
            s.tokens.clear();
            s.hashes.clear();
            self.spare.push(s);
        }
        Ok(())
    }

    /// Drop every cached prefix (their blocks become free).
    pub fn clear_cache(&mut self) {
        while let Some(b) = self.cached.pop_front() {
            self.blocks[b as usize].registered = None;
            self.free.push(b);
        }
        self.index
            .retain(|_, b| self.blocks[*b as usize].registered.is_some());
    }
}

#[path = "kv_partial.rs"]
mod partial;
pub use partial::PrefixReuse;

#[cfg(test)]
#[path = "kv_tests.rs"]
mod tests;
