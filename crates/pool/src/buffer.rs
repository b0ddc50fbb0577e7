//! [`BufferPool`]: host buffers in size classes, reused instead of
//! allocated, handed out behind RAII guards.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytemuck::{Pod, Zeroable};
use crossbeam::queue::SegQueue;

use crate::classes::{class_count, class_of};
use crate::{PoolError, Result};

/// 64 bytes, 64-aligned: the unit buffers are made of, so every buffer
/// starts on a cache line (and an AVX-512 register's width).
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

const LINE: usize = std::mem::size_of::<Line>();

/// Counters and gauges of a [`BufferPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BufferStats {
    /// Acquisitions served from the cache.
    pub hits: u64,
    /// Acquisitions that allocated.
    pub misses: u64,
    /// Bytes held by live buffers (class sizes).
    pub bytes_in_use: u64,
    /// Bytes cached for reuse.
    pub bytes_cached: u64,
    /// Most bytes ever in use at once.
    pub peak_in_use: u64,
    /// Bytes released to the allocator by `trim` or because the cache was
    /// at its cap.
    pub bytes_released: u64,
}

struct Inner {
    classes: Vec<OnceLock<Box<SegQueue<Vec<Line>>>>>,
    max_cached: u64,
    cached: AtomicU64,
    in_use: AtomicU64,
    peak: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    released: AtomicU64,
    /// Highest class that ever held a buffer (trim scans up to it).
    top_class: AtomicUsize,
}

impl Inner {
    fn queue(&self, class: usize) -> Option<&SegQueue<Vec<Line>>> {
        self.classes
            .get(class)
            .map(|q| &**q.get_or_init(|| Box::new(SegQueue::new())))
    }

    fn give_back(&self, class: usize, lines: Vec<Line>) {
        let bytes = (lines.len() * LINE) as u64;
        self.in_use.fetch_sub(bytes, Ordering::AcqRel);
        let reserved = self
            .cached
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                c.checked_add(bytes).filter(|&n| n <= self.max_cached)
            });
        match (reserved, self.queue(class)) {
            (Ok(_), Some(queue)) => {
                self.top_class.fetch_max(class, Ordering::AcqRel);
                queue.push(lines);
            }
            (Ok(_), None) => {
                self.cached.fetch_sub(bytes, Ordering::AcqRel);
                self.released.fetch_add(bytes, Ordering::Relaxed);
            }
            (Err(_), _) => {
                self.released.fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }
}

/// Host buffers in size classes (see [`crate::classes`] for the rounding
/// rule), kept on lock-free per-class free lists and handed out as
/// [`PooledBuffer`] guards that come back on drop.
///
/// A reused buffer keeps its previous contents: use
/// [`acquire_zeroed`](Self::acquire_zeroed) where that matters. Buffers
/// start on 64-byte boundaries. Cheap to clone (one shared pool).
///
/// ```
/// use switchyard_pool::BufferPool;
///
/// let pool = BufferPool::new(64 << 20);
/// {
///     let mut input = pool.acquire_zeroed(1000 * 4)?;
///     input.as_f32_mut()[0] = 1.5;
///     assert_eq!(input.as_f32().len(), 1000);
/// } // back in the pool
/// let again = pool.acquire(3900)?; // same class (4096 bytes): a hit
/// assert_eq!(pool.stats().hits, 1);
/// # drop(again);
/// # Ok::<(), switchyard_pool::PoolError>(())
/// ```
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<Inner>,
}

impl BufferPool {
    /// A pool that caches at most `max_cached_bytes` of free buffers.
    pub fn new(max_cached_bytes: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                classes: (0..class_count()).map(|_| OnceLock::new()).collect(),
                max_cached: max_cached_bytes,
                cached: AtomicU64::new(0),
                in_use: AtomicU64::new(0),
                peak: AtomicU64::new(0),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                released: AtomicU64::new(0),
                top_class: AtomicUsize::new(0),
            }),
        }
    }

    /// A buffer of at least `bytes` bytes with unspecified contents.
    pub fn acquire(&self, bytes: usize) -> Result<PooledBuffer> {
        let (class, size) = class_of(bytes).ok_or(PoolError::TooLarge { bytes })?;
        let inner = &self.inner;
        let lines = match inner.queue(class).and_then(SegQueue::pop) {
            Some(lines) => {
                inner.hits.fetch_add(1, Ordering::Relaxed);
                inner.cached.fetch_sub(size as u64, Ordering::AcqRel);
                lines
            }
            None => {
                inner.misses.fetch_add(1, Ordering::Relaxed);
                let mut lines = Vec::new();
                lines
                    .try_reserve_exact(size / LINE)
                    .map_err(|_| PoolError::TooLarge { bytes })?;
                lines.resize(size / LINE, Line::zeroed());
                lines
            }
        };
        let in_use = inner.in_use.fetch_add(size as u64, Ordering::AcqRel) + size as u64;
        inner.peak.fetch_max(in_use, Ordering::AcqRel);
        Ok(PooledBuffer {
            lines,
            len: bytes,
            class,
            pool: Arc::clone(inner),
        })
    }

    /// A buffer of at least `bytes` bytes, all zero.
    pub fn acquire_zeroed(&self, bytes: usize) -> Result<PooledBuffer> {
        let mut buffer = self.acquire(bytes)?;
        buffer.lines.fill(Line::zeroed());
        Ok(buffer)
    }

    /// Release cached buffers to the allocator, largest classes first,
    /// until at least `bytes` are released or none are cached. Returns the
    /// bytes released.
    pub fn trim(&self, bytes: u64) -> u64 {
        let inner = &self.inner;
        let mut freed = 0u64;
        let top = inner.top_class.load(Ordering::Acquire);
        for class in (0..=top).rev() {
            let Some(queue) = inner.classes.get(class).and_then(OnceLock::get) else {
                continue;
            };
            while freed < bytes {
                let Some(lines) = queue.pop() else { break };
                let size = (lines.len() * LINE) as u64;
                inner.cached.fetch_sub(size, Ordering::AcqRel);
                freed += size;
            }
            if freed >= bytes {
                break;
            }
        }
        inner.released.fetch_add(freed, Ordering::Relaxed);
        freed
    }

    /// Release every cached buffer (for a memory-pressure listener).
    pub fn trim_all(&self) -> u64 {
        self.trim(u64::MAX)
    }

    /// Counters and gauges.
    pub fn stats(&self) -> BufferStats {
        let i = &self.inner;
        BufferStats {
            hits: i.hits.load(Ordering::Relaxed),
            misses: i.misses.load(Ordering::Relaxed),
            bytes_in_use: i.in_use.load(Ordering::Acquire),
            bytes_cached: i.cached.load(Ordering::Acquire),
            peak_in_use: i.peak.load(Ordering::Acquire),
            bytes_released: i.released.load(Ordering::Relaxed),
        }
    }

    /// The cap on cached bytes.
    pub fn max_cached_bytes(&self) -> u64 {
        self.inner.max_cached
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("max_cached_bytes", &self.inner.max_cached)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A buffer from a [`BufferPool`]; it goes back to the pool when dropped.
pub struct PooledBuffer {
    lines: Vec<Line>,
    len: usize,
    class: usize,
    pool: Arc<Inner>,
}

impl PooledBuffer {
    /// Bytes asked for (the views' length).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether zero bytes were asked for.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes actually held (the class size).
    pub fn capacity(&self) -> usize {
        self.lines.len() * LINE
    }

    /// The bytes asked for.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }

    /// The bytes asked for, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }

    /// The first `len / size_of::<T>()` elements as `T` (any plain-data
    /// type: `f32`, `half::f16`, `u32` ...).
    pub fn as_slice<T: Pod>(&self) -> &[T] {
        let n = self.len / std::mem::size_of::<T>().max(1);
        &bytemuck::cast_slice(&self.lines)[..n]
    }

    /// [`as_slice`](Self::as_slice), writable.
    pub fn as_slice_mut<T: Pod>(&mut self) -> &mut [T] {
        let n = self.len / std::mem::size_of::<T>().max(1);
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..n]
    }

    /// As `f32`s.
    pub fn as_f32(&self) -> &[f32] {
        self.as_slice()
    }

    /// As `f32`s, writable.
    pub fn as_f32_mut(&mut self) -> &mut [f32] {
        self.as_slice_mut()
    }

    /// As `half::f16`s.
    pub fn as_f16(&self) -> &[half::f16] {
        self.as_slice()
    }

    /// As `half::f16`s, writable.
    pub fn as_f16_mut(&mut self) -> &mut [half::f16] {
        self.as_slice_mut()
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let lines = std::mem::take(&mut self.lines);
        self.pool.give_back(self.class, lines);
    }
}

impl fmt::Debug for PooledBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuffer")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

#[cfg(feature = "candle")]
impl PooledBuffer {
    /// A candle tensor of `shape` from the buffer's first `f32`s, for model
    /// inputs. candle's CPU tensors own their storage, so this copies once;
    /// the buffer can go back to the pool right after.
    pub fn to_tensor_f32(
        &self,
        shape: impl Into<candle_core::Shape>,
        device: &candle_core::Device,
    ) -> Result<candle_core::Tensor> {
        let shape = shape.into();
        let n = shape.elem_count();
        let data = self.as_f32();
        if n > data.len() {
            return Err(PoolError::InvalidConfig {
                field: "shape",
                reason: format!("{n} elements, buffer holds {}", data.len()),
            });
        }
        candle_core::Tensor::from_slice(&data[..n], shape, device).map_err(|e| {
            PoolError::InvalidConfig {
                field: "tensor",
                reason: e.to_string(),
            }
        })
    }
}

#[cfg(test)]
#[path = "buffer_tests.rs"]
mod tests;
