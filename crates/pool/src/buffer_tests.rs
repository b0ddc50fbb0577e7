use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

#[test]
fn release_then_acquire_in_the_same_class_is_a_hit() {
    let pool = BufferPool::new(1 << 30);
    let a = pool.acquire(10_000).unwrap();
    assert_eq!((a.len(), a.capacity()), (10_000, 10_240));
    let ptr = a.as_bytes().as_ptr();
    drop(a);
    let b = pool.acquire(10_100).unwrap();
    assert_eq!(b.as_bytes().as_ptr(), ptr);
    let s = pool.stats();
    assert_eq!((s.hits, s.misses), (1, 1));
    assert_eq!((s.bytes_in_use, s.bytes_cached), (10_240, 0));
    drop(b);
    let s = pool.stats();
    assert_eq!(
        (s.bytes_in_use, s.bytes_cached, s.peak_in_use),
        (0, 10_240, 10_240)
    );
}

#[test]
fn views_are_aligned_typed_and_sized_to_the_request() {
    let pool = BufferPool::new(1 << 20);
    let mut b = pool.acquire_zeroed(4 * 1001).unwrap();
    assert_eq!(b.as_bytes().as_ptr() as usize % 64, 0);
    assert!(b.as_f32().iter().all(|&x| x == 0.0));
    b.as_f32_mut()[1000] = 2.5;
    assert_eq!(b.as_f32().len(), 1001);
    assert_eq!(b.as_f16().len(), 2002);
    assert_eq!(b.as_slice::<u64>().len(), 500);
    b.as_f16_mut()[0] = half::f16::from_f32(1.0);
    assert_eq!(b.as_bytes()[..2], half::f16::from_f32(1.0).to_le_bytes());
    assert_eq!(b.as_bytes_mut().len(), 4004);
    let empty = pool.acquire(0).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.capacity(), 512);
}

#[test]
fn reused_buffers_keep_contents_unless_zeroed() {
    let pool = BufferPool::new(1 << 20);
    let mut a = pool.acquire(256).unwrap();
    a.as_bytes_mut().fill(7);
    drop(a);
    let b = pool.acquire(256).unwrap();
    assert!(b.as_bytes().iter().all(|&x| x == 7));
    drop(b);
    let c = pool.acquire_zeroed(256).unwrap();
    assert!(c.as_bytes().iter().all(|&x| x == 0));
}

#[test]
fn the_cap_and_trim_release_memory() {
    let pool = BufferPool::new(4096);
    let bufs: Vec<_> = (0..3).map(|_| pool.acquire(2048).unwrap()).collect();
    drop(bufs);
    let s = pool.stats();
    // Two fit under the 4096-byte cap; the third went to the allocator.
    assert_eq!((s.bytes_cached, s.bytes_released), (4096, 2048));
    let big = BufferPool::new(1 << 30);
    drop((
        big.acquire(1 << 20).unwrap(),
        big.acquire(512).unwrap(),
        big.acquire(512).unwrap(),
    ));
    // Largest first: the 1 MiB buffer alone covers 1000 bytes.
    assert_eq!(big.trim(1000), 1 << 20);
    assert_eq!(big.stats().bytes_cached, 1024);
    assert_eq!(big.trim_all(), 1024);
    assert_eq!(big.stats().bytes_cached, 0);
    assert_eq!(big.trim_all(), 0);
}

#[test]
fn impossible_sizes_are_typed_errors() {
    let pool = BufferPool::new(0);
    assert!(matches!(
        pool.acquire(usize::MAX),
        Err(PoolError::TooLarge { .. })
    ));
    assert!(matches!(
        pool.acquire(usize::MAX / 2 + 2),
        Err(PoolError::TooLarge { .. })
    ));
}

#[test]
fn threads_share_a_pool_and_the_books_balance() {
    let pool = BufferPool::new(1 << 30);
    std::thread::scope(|s| {
        for t in 0..4 {
            let pool = pool.clone();
            s.spawn(move || {
                for i in 0..500 {
                    let mut b = pool.acquire(512 * (1 + (i + t) % 7)).unwrap();
                    b.as_bytes_mut()[0] = t as u8;
                    assert_eq!(b.as_bytes()[0], t as u8);
                }
            });
        }
    });
    let s = pool.stats();
    assert_eq!(s.hits + s.misses, 2000);
    assert_eq!(s.bytes_in_use, 0);
    assert!(s.misses <= 4 * 7, "{} misses", s.misses);
}

proptest! {
    #[test]
    fn live_buffers_never_overlap_and_the_books_balance(
        ops in proptest::collection::vec((any::<bool>(), 0usize..5000, any::<u8>()), 1..200),
        cap in 0u64..20_000,
    ) {
        let pool = BufferPool::new(cap);
        let mut live: Vec<(PooledBuffer, u8)> = Vec::new();
        for (acquire, size, mark) in ops {
            if acquire || live.is_empty() {
                let mut b = pool.acquire(size).unwrap();
                prop_assert!(b.capacity() >= size);
                prop_assert_eq!(b.as_bytes().as_ptr() as usize % 64, 0);
                b.as_bytes_mut().fill(mark);
                live.push((b, mark));
            } else {
                let (b, mark) = live.swap_remove(size % live.len());
                // Nobody else wrote into it while it was out.
                prop_assert!(b.as_bytes().iter().all(|&x| x == mark));
            }
            let s = pool.stats();
            let held: usize = live.iter().map(|(b, _)| b.capacity()).sum();
            prop_assert_eq!(s.bytes_in_use, held as u64);
            prop_assert!(s.bytes_cached <= cap);
            let mut starts: HashMap<usize, usize> = HashMap::new();
            for (b, _) in &live {
                let p = b.as_bytes().as_ptr() as usize;
                prop_assert!(starts.insert(p, b.capacity()).is_none());
            }
        }
        for (b, mark) in &live {
            prop_assert!(b.as_bytes().iter().all(|x| x == mark));
        }
    }
}

#[cfg(feature = "candle")]
#[test]
fn a_buffer_becomes_an_input_tensor() {
    let pool = BufferPool::new(1 << 20);
    let mut b = pool.acquire(4 * 6).unwrap();
    for (i, x) in b.as_f32_mut().iter_mut().enumerate() {
        *x = i as f32;
    }
    let t = b.to_tensor_f32((2, 3), &candle_core::Device::Cpu).unwrap();
    drop(b);
    assert_eq!(
        t.to_vec2::<f32>().unwrap(),
        [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    );
    let small = pool.acquire(4).unwrap();
    assert!(
        small
            .to_tensor_f32((2, 3), &candle_core::Device::Cpu)
            .is_err()
    );
}
