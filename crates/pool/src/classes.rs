//! Size classes of the [`BufferPool`](crate::BufferPool).
//!
//! The rule, after PyTorch's caching allocator:
//!
//! - up to 1 MiB, sizes round up to a multiple of 512 bytes (2048 classes);
//! - above 1 MiB, sizes round up to the next quarter step between powers of
//!   two: 2^k, 1.25 x 2^k, 1.5 x 2^k, 1.75 x 2^k (PyTorch's
//!   `roundup_power2_divisions = 4`), so at most 25 % is wasted and a
//!   buffer is reused for requests within a quarter of its size.
//!
//! A zero-byte request takes the smallest class.

/// Largest size of the small classes.
pub const SMALL_LIMIT: usize = 1 << 20;
/// Granule of the small classes.
pub const SMALL_STEP: usize = 512;
const SMALL_CLASSES: usize = SMALL_LIMIT / SMALL_STEP;
/// Quarter steps per power of two above [`SMALL_LIMIT`].
const DIVISIONS: usize = 4;

/// The class of a `bytes`-byte request and the bytes that class holds;
/// `None` if the rounded size overflows.
pub fn class_of(bytes: usize) -> Option<(usize, usize)> {
    let bytes = bytes.max(1);
    if bytes <= SMALL_LIMIT {
        let class = bytes.div_ceil(SMALL_STEP) - 1;
        return Some((class, (class + 1) * SMALL_STEP));
    }
    // bytes > 1 MiB: find k with 2^k < bytes <= 2^(k+1), then the quarter.
    let k = usize::BITS as usize - 1 - (bytes - 1).leading_zeros() as usize;
    let base = 1usize << k;
    let step = base / DIVISIONS;
    let quarter = (bytes - base).div_ceil(step);
    let size = base.checked_add(quarter.checked_mul(step)?)?;
    // quarter is 1..=4; 4 quarters is the next power of two.
    let class = SMALL_CLASSES + (k - 20) * DIVISIONS + (quarter - 1);
    Some((class, size))
}

/// The number of classes `class_of` can return on this target.
pub fn class_count() -> usize {
    SMALL_CLASSES + (usize::BITS as usize - 20) * DIVISIONS
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_and_large_rounding() {
        assert_eq!(class_of(0), Some((0, 512)));
        assert_eq!(class_of(1), Some((0, 512)));
        assert_eq!(class_of(512), Some((0, 512)));
        assert_eq!(class_of(513), Some((1, 1024)));
        assert_eq!(class_of(SMALL_LIMIT), Some((2047, SMALL_LIMIT)));
        let mib = 1 << 20;
        assert_eq!(class_of(mib + 1).map(|c| c.1), Some(mib + mib / 4));
        assert_eq!(class_of(mib + mib / 4).map(|c| c.1), Some(mib + mib / 4));
        assert_eq!(class_of(3 * mib).map(|c| c.1), Some(3 * mib)); // 1.5 x 2 MiB
        assert_eq!(class_of(16 * mib).map(|c| c.1), Some(16 * mib));
        assert_eq!(class_of(16 * mib + 1).map(|c| c.1), Some(20 * mib));
        assert_eq!(class_of(usize::MAX), None);
    }

    proptest! {
        #[test]
        fn a_class_fits_wastes_at_most_a_quarter_and_is_monotone(bytes in 1usize..(1 << 40)) {
            let (class, size) = class_of(bytes).unwrap();
            prop_assert!(size >= bytes);
            prop_assert!(class < class_count());
            if bytes > SMALL_LIMIT {
                prop_assert!((size - bytes) * 4 <= size);
            } else {
                prop_assert!(size - bytes < SMALL_STEP);
            }
            prop_assert_eq!(size % 64, 0);
            // The class's own size maps to the same class.
            prop_assert_eq!(class_of(size), Some((class, size)));
            let (next, _) = class_of(size + 1).unwrap();
            prop_assert_eq!(next, class + 1);
        }
    }
}
