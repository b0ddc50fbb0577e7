use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

fn pool(blocks: usize, bs: usize) -> KvBlockPool {
    KvBlockPool::new(KvPoolConfig::new(blocks, bs)).unwrap()
}

/// Storage that keeps each slot's token, so tests can read back what a
/// sequence would attend over through its block table.
struct TokenStorage {
    slots: Vec<Option<u32>>,
    block_size: usize,
}

impl TokenStorage {
    fn new(pool: &KvBlockPool) -> Self {
        let c = pool.config();
        Self {
            slots: vec![None; c.num_blocks * c.block_size],
            block_size: c.block_size,
        }
    }

    /// What `seq` reads back through its block table.
    fn read(&self, pool: &KvBlockPool, seq: SeqId) -> Vec<Option<u32>> {
        (0..pool.len(seq).unwrap())
            .map(|p| self.slots[pool.slot(seq, p).unwrap()])
            .collect()
    }
}

impl KvStorage for TokenStorage {
    type Error = std::convert::Infallible;

    fn copy_block(&mut self, from: BlockId, to: BlockId) -> std::result::Result<(), Self::Error> {
        let bs = self.block_size;
        let (f, t) = (from as usize * bs, to as usize * bs);
        for i in 0..bs {
            self.slots[t + i] = self.slots[f + i];
        }
        Ok(())
    }
}

#[test]
fn allocation_appends_and_frees_balance() {
    let mut p = pool(4, 2);
    assert_eq!(p.add_sequence(SeqId(1), &[1, 2, 3]).unwrap(), 0);
    assert_eq!(p.block_table(SeqId(1)).unwrap().len(), 2);
    assert_eq!(p.append(SeqId(1), 4).unwrap(), None);
    assert_eq!(p.block_table(SeqId(1)).unwrap().len(), 2);
    p.append(SeqId(1), 5).unwrap();
    assert_eq!(p.block_table(SeqId(1)).unwrap().len(), 3);
    assert_eq!(p.stats().used, 3);
    assert!(p.can_allocate(2));
    assert!(!p.can_allocate(3));
    assert_eq!(
        p.add_sequence(SeqId(2), &[9, 9, 9]),
        Err(PoolError::OutOfBlocks {
            requested: 2,
            free: 1
        })
    );
    assert!(
        p.len(SeqId(2)).is_err(),
        "a refused sequence leaves nothing"
    );
    p.free(SeqId(1)).unwrap();
    let s = p.stats();
    assert_eq!((s.used, s.free + s.cached), (0, 4));
    assert_eq!(p.free(SeqId(1)), Err(PoolError::UnknownSequence(1)));
}

#[test]
fn duplicate_ids_bad_configs_and_out_of_range_slots_are_errors() {
    assert!(KvBlockPool::new(KvPoolConfig::new(0, 16)).is_err());
    assert!(KvBlockPool::new(KvPoolConfig::new(4, 0)).is_err());
    let mut p = pool(4, 4);
    p.add_sequence(SeqId(1), &[1]).unwrap();
    assert_eq!(
        p.add_sequence(SeqId(1), &[1]),
        Err(PoolError::SequenceExists(1))
    );
    assert_eq!(
        p.fork(SeqId(1), SeqId(1)),
        Err(PoolError::SequenceExists(1))
    );
    assert!(matches!(
        p.slot(SeqId(1), 1),
        Err(PoolError::OutOfRange { .. })
    ));
    assert!(p.commit(SeqId(1), 2).is_err());
    assert!(p.append(SeqId(9), 1).is_err());
}

#[test]
fn prefix_blocks_are_reused_only_after_commit_and_never_the_last_token() {
    let mut p = pool(12, 2);
    let prompt = [1, 2, 3, 4, 5];
    p.add_sequence(SeqId(1), &prompt).unwrap();
    // Not computed yet: a second sequence must not share it.
    assert_eq!(p.add_sequence(SeqId(2), &prompt).unwrap(), 0);
    p.commit(SeqId(1), 5).unwrap();
    assert_eq!(p.add_sequence(SeqId(3), &prompt).unwrap(), 4);
    // A prompt that is exactly the cached blocks still computes its last token.
    assert_eq!(p.add_sequence(SeqId(4), &[1, 2, 3, 4]).unwrap(), 2);
    // A different second block shares only the first.
    assert_eq!(p.add_sequence(SeqId(5), &[1, 2, 9, 9, 9]).unwrap(), 2);
    let t1 = p.block_table(SeqId(1)).unwrap().to_vec();
    let t3 = p.block_table(SeqId(3)).unwrap().to_vec();
    assert_eq!(t1[..2], t3[..2]);
    assert_ne!(t1[2], t3[2]);
    assert_eq!(p.refs(t1[0]), 4);
    assert!(p.stats().hit_rate() > 0.0);
}

#[test]
fn cached_prefixes_survive_free_and_are_evicted_last_block_first() {
    let mut p = pool(4, 2);
    p.add_sequence(SeqId(1), &[1, 2, 3, 4, 5]).unwrap();
    p.commit(SeqId(1), 5).unwrap();
    p.free(SeqId(1)).unwrap();
    let s = p.stats();
    assert_eq!((s.cached, s.free), (2, 2));
    // Needs 3 blocks: the 2 free ones and the cached prefix's tail.
    p.add_sequence(SeqId(2), &[7, 7, 7, 7, 7, 7]).unwrap();
    assert_eq!(p.stats().evictions, 1);
    p.free(SeqId(2)).unwrap();
    // The head block of the old prefix is still there.
    assert_eq!(p.add_sequence(SeqId(3), &[1, 2, 3, 4, 5]).unwrap(), 2);
    p.clear_cache();
    let s = p.stats();
    assert_eq!(s.cached, 0);
    assert_eq!(s.free + s.used, 4);
}

#[test]
fn fork_shares_and_the_first_append_to_a_shared_partial_block_copies() {
    let mut p = pool(8, 4);
    let mut store = TokenStorage::new(&p);
    p.add_sequence(SeqId(1), &[10, 11, 12, 13, 14, 15]).unwrap();
    for pos in 0..6 {
        store.slots[p.slot(SeqId(1), pos).unwrap()] = Some(10 + pos as u32);
    }
    p.fork(SeqId(1), SeqId(2)).unwrap();
    let shared = p.block_table(SeqId(1)).unwrap()[1];
    assert_eq!(p.refs(shared), 2);
    let copy = p
        .append(SeqId(2), 99)
        .unwrap()
        .expect("shared partial block");
    assert_eq!(copy.from, shared);
    store.copy_block(copy.from, copy.to).unwrap();
    store.slots[p.slot(SeqId(2), 6).unwrap()] = Some(99);
    // The parent appends to its own block, now no longer shared: no copy.
    assert_eq!(p.append(SeqId(1), 50).unwrap(), None);
    store.slots[p.slot(SeqId(1), 6).unwrap()] = Some(50);
    let read = |s| store.read(&p, SeqId(s));
    assert_eq!(read(1), [10, 11, 12, 13, 14, 15, 50].map(Some));
    assert_eq!(read(2), [10, 11, 12, 13, 14, 15, 99].map(Some));
    assert_eq!(p.stats().copies, 1);
}

#[derive(Debug, Clone)]
enum Op {
    Add(u8, Vec<u32>),
    Append(u8, u32),
    Fork(u8, u8),
    Free(u8),
    ClearCache,
}

fn op() -> impl Strategy<Value = Op> {
    // A small alphabet makes shared prefixes common.
    let tokens = proptest::collection::vec(0u32..3, 0..12);
    prop_oneof![
        3 => (0u8..6, tokens).prop_map(|(s, t)| Op::Add(s, t)),
        5 => (0u8..6, 0u32..3).prop_map(|(s, t)| Op::Append(s, t)),
        1 => (0u8..6, 0u8..6).prop_map(|(a, b)| Op::Fork(a, b)),
        2 => (0u8..6).prop_map(Op::Free),
        1 => Just(Op::ClearCache),
    ]
}

/// Every block is exactly one of free, cached or held; refcounts equal the
/// number of block-table entries naming the block; index entries name
/// registered, unheld-or-held blocks.
fn check_invariants(p: &KvBlockPool) {
    let mut counted: HashMap<BlockId, u32> = HashMap::new();
    for s in p.seqs.values() {
        assert_eq!(s.blocks.len(), p.blocks_for(s.tokens.len()));
        for &b in &s.blocks {
            *counted.entry(b).or_default() += 1;
        }
    }
    let mut free = vec![false; p.blocks.len()];
    for &b in &p.free {
        assert!(!free[b as usize], "block {b} twice on the free list");
        free[b as usize] = true;
    }
    for (i, block) in p.blocks.iter().enumerate() {
        let id = i as BlockId;
        let refs = counted.get(&id).copied().unwrap_or(0);
        assert_eq!(block.refs, refs, "refcount of block {id}");
        let cached = p.cached.contains(id);
        match (refs > 0, free[i], cached) {
            (true, false, false) | (false, true, false) | (false, false, true) => {}
            state => panic!("block {id} is (held, free, cached) = {state:?}"),
        }
        if cached {
            assert!(
                block.registered.is_some(),
                "cached block {id} keeps no prefix"
            );
        }
        if free[i] {
            assert!(
                block.registered.is_none(),
                "free block {id} is still indexed"
            );
        }
    }
    for (&hash, &b) in &p.index {
        let r = p.blocks[b as usize].registered.as_ref();
        assert_eq!(r.map(|r| r.hash), Some(hash));
    }
    let s = p.stats();
    assert_eq!(s.free + s.cached + s.used, s.total);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn blocks_are_never_owned_twice_and_every_sequence_reads_its_own_tokens(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut p = pool(12, 2);
        let mut store = TokenStorage::new(&p);
        let mut own: HashMap<u8, Vec<u32>> = HashMap::new();
        for op in ops {
            match op {
                Op::Add(s, tokens) => {
                    // Odd sequences also reuse part-filled cached blocks.
                    let added = if s % 2 == 1 {
                        p.start_sequence(SeqId(s.into()), &tokens).map(|r| {
                            if let Some(c) = r.copy {
                                store.copy_block(c.from, c.to).unwrap();
                            }
                            r.cached
                        })
                    } else {
                        p.add_sequence(SeqId(s.into()), &tokens)
                    };
                    if let Ok(cached) = added {
                        // What a prefill does: write what is not cached, then commit.
                        prop_assert!(cached < tokens.len().max(1));
                        for (pos, &t) in tokens.iter().enumerate().skip(cached) {
                            store.slots[p.slot(SeqId(s.into()), pos).unwrap()] = Some(t);
                        }
                        p.commit(SeqId(s.into()), tokens.len()).unwrap();
                        prop_assert!(own.insert(s, tokens).is_none());
                    }
                }
                Op::Append(s, t) => {
                    if let Ok(copy) = p.append(SeqId(s.into()), t) {
                        if let Some(c) = copy {
                            store.copy_block(c.from, c.to).unwrap();
                        }
                        let len = p.len(SeqId(s.into())).unwrap();
                        store.slots[p.slot(SeqId(s.into()), len - 1).unwrap()] = Some(t);
                        p.commit(SeqId(s.into()), len).unwrap();
                        own.get_mut(&s).unwrap().push(t);
                    }
                }
                Op::Fork(a, b) => {
                    if p.fork(SeqId(a.into()), SeqId(b.into())).is_ok() {
                        let tokens = own[&a].clone();
                        own.insert(b, tokens);
                    }
                }
                Op::Free(s) => {
                    if p.free(SeqId(s.into())).is_ok() {
                        own.remove(&s);
                    }
                }
                Op::ClearCache => p.clear_cache(),
            }
            check_invariants(&p);
            for (&s, tokens) in &own {
                let want: Vec<Option<u32>> = tokens.iter().copied().map(Some).collect();
                prop_assert_eq!(store.read(&p, SeqId(s.into())), want, "sequence {}", s);
            }
        }
        for s in own.keys() {
            p.free(SeqId((*s).into())).unwrap();
        }
        check_invariants(&p);
        prop_assert_eq!(p.stats().used, 0);
        prop_assert!(p.blocks.iter().all(|b| b.refs == 0));
    }
}

#[test]
fn a_part_filled_block_is_reused_by_copying_its_matching_tokens() {
    let mut pool = KvBlockPool::new(KvPoolConfig::new(16, 4)).unwrap();
    let a = SeqId(1);
    // Two whole blocks and a third filled up to [20, 21, 22, 23].
    let first: Vec<u32> = (10..22).chain([90]).collect();
    pool.add_sequence(a, &first).unwrap();
    for t in [91, 92, 93] {
        pool.append(a, t).unwrap();
    }
    pool.commit(a, 16).unwrap();
    let source = pool.block_table(a).unwrap()[3];
    pool.free(a).unwrap();

    // Shares 12 tokens, then [90, 91] of the fourth block, then differs.
    let b = SeqId(2);
    let second: Vec<u32> = (10..22).chain([90, 91, 7, 8]).collect();
    let reuse = pool.start_sequence(b, &second).unwrap();
    let table = pool.block_table(b).unwrap().to_vec();
    assert_eq!(reuse.cached, 14);
    assert_eq!(
        reuse.copy,
        Some(BlockCopy {
            from: source,
            to: table[3]
        })
    );
    assert_ne!(table[3], source);
    assert_eq!(pool.stats().partial_tokens, 2);
    // The source stays cached for others.
    pool.free(b).unwrap();
    let c = SeqId(3);
    let third: Vec<u32> = (10..22).chain([90, 91, 92, 5]).collect();
    assert_eq!(pool.start_sequence(c, &third).unwrap().cached, 15);
}

#[test]
fn partial_reuse_leaves_the_last_token_and_needs_a_match() {
    let mut pool = KvBlockPool::new(KvPoolConfig::new(16, 4)).unwrap();
    let a = SeqId(1);
    pool.add_sequence(a, &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
    pool.commit(a, 9).unwrap();
    pool.free(a).unwrap();
    // Whole prompt cached: the last token is still computed.
    let b = SeqId(2);
    let reuse = pool.start_sequence(b, &[1, 2, 3, 4, 5, 6, 7]).unwrap();
    assert_eq!(reuse.cached, 6);
    pool.free(b).unwrap();
    // Nothing in common past the whole block: no copy.
    let c = SeqId(3);
    let reuse = pool.start_sequence(c, &[1, 2, 3, 4, 9, 9, 9]).unwrap();
    assert_eq!((reuse.cached, reuse.copy), (4, None));
    // Without prefix caching nothing is reused.
    let mut off = KvBlockPool::new(KvPoolConfig {
        prefix_caching: false,
        ..KvPoolConfig::new(16, 4)
    })
    .unwrap();
    off.add_sequence(a, &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
    off.commit(a, 9).unwrap();
    off.free(a).unwrap();
    assert_eq!(
        off.start_sequence(b, &[1, 2, 3, 4, 5, 6, 7]).unwrap(),
        PrefixReuse::default()
    );
}
