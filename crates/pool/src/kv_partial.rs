//! Token-granular prefix reuse: past the whole blocks a new sequence finds
//! in the prefix index, the part-filled block its prompt continues into may
//! still match the first tokens of a cached block, or of the block a live
//! sequence on the same prefix is filling. Those keys and values are reused
//! by copying that block into the sequence's own (as SGLang's radix cache
//! reuses any common prefix), so a shared prompt whose length is not a
//! multiple of the block size is still computed only once.

use super::{BlockCopy, KvBlockPool, ROOT, Result, SeqId};
use crate::PoolError;

/// What [`KvBlockPool::start_sequence`] found in the prefix cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefixReuse {
    /// Leading prompt tokens whose keys and values are in place once `copy`
    /// is made (at least the last prompt token is always left to compute).
    pub cached: usize,
    /// A block the storage must copy before the rest of the prompt is
    /// computed: its first tokens are the prompt's next ones.
    pub copy: Option<BlockCopy>,
}

impl KvBlockPool {
    /// Start `seq` with `prompt` like [`add_sequence`](Self::add_sequence),
    /// and also reuse the longest run of the next tokens that some cached
    /// block (continuing the same prefix) begins with. The returned copy
    /// must be made before anything else is allocated from the pool.
    pub fn start_sequence(&mut self, seq: SeqId, prompt: &[u32]) -> Result<PrefixReuse> {
        let whole = self.add_sequence(seq, prompt)?;
        let bs = self.config.block_size;
        let rest = &prompt[whole..];
        let none = PrefixReuse {
            cached: whole,
            copy: None,
        };
        if !self.config.prefix_caching || rest.len() < 2 {
            return Ok(none);
        }
        let s = self
            .seqs
            .get(&seq)
            .ok_or(PoolError::UnknownSequence(seq.0))?;
        let parent = s.hashes.last().copied().unwrap_or(ROOT);
        let Some(&to) = s.blocks.get(whole / bs) else {
            return Ok(none);
        };
        let usable = rest.len() - 1;
        let common = |tokens: &[u32]| {
            let n = tokens.iter().zip(rest).take_while(|(a, b)| a == b).count();
            n.min(usable)
        };
        // Full blocks still in the index (a block evicted to make room for
        // this sequence has left it)...
        let cached = self.index.values().filter_map(|&b| {
            let r = self.blocks[b as usize].registered.as_ref()?;
            (r.parent == parent && b != to).then(|| (common(&r.tokens), b))
        });
        // ...and the part-filled last blocks of live sequences on the same
        // prefix (their computed rows never change).
        let h = whole / bs;
        let live = self.seqs.iter().filter_map(|(&id, q)| {
            let on_prefix =
                q.hashes.len() == h && q.hashes.last().copied().unwrap_or(ROOT) == parent;
            if id == seq || !on_prefix {
                return None;
            }
            let b = *q.blocks.get(h)?;
            let written = q.computed.min((h + 1) * bs);
            let tokens = q.tokens.get(h * bs..written)?;
            Some((common(tokens), b))
        });
        let best = cached.chain(live).max();
        let Some((reused, from)) = best.filter(|&(n, _)| n > 0) else {
            return Ok(none);
        };
        let cached = whole + reused;
        if let Some(s) = self.seqs.get_mut(&seq) {
            s.computed = cached;
        }
        self.stats.copies += 1;
        self.stats.partial_tokens += reused as u64;
        Ok(PrefixReuse {
            cached,
            copy: Some(BlockCopy { from, to }),
        })
    }
}
