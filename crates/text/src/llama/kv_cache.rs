//! [`PagedKvCache`]: the keys and values of every sequence, kept outside the
//! model in fixed-size blocks that `switchyard-pool`'s `KvBlockPool` hands
//! out.

use candle_core::{DType, Device, Storage, Tensor};
use switchyard_pool::{BlockId, KvStorage};

use super::config::LlamaConfig;
use crate::{Result, TextError};

/// Key and value storage for all layers: per layer one tensor of keys and one
/// of values, each `[num_blocks * block_size, kv_heads * head_dim]`. Slot
/// `b * block_size + i` holds the `i`-th token of block `b`.
///
/// The cache only stores; which block belongs to which sequence is the
/// `KvBlockPool`'s business. It implements [`KvStorage`] so the pool's
/// copy-on-write copies land here.
#[derive(Debug)]
pub struct PagedKvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    num_blocks: usize,
    block_size: usize,
    row: usize,
}

impl PagedKvCache {
    /// Zeroed storage for `num_blocks` blocks of `block_size` tokens, shaped
    /// for `config`, in `dtype` on `device`.
    pub fn new(
        config: &LlamaConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if num_blocks == 0 || block_size == 0 {
            return Err(TextError::InvalidInput {
                field: "kv cache",
                reason: "blocks and block size must be > 0".into(),
            });
        }
        let row = config.kv_heads * config.head_dim;
        let slots = num_blocks
            .checked_mul(block_size)
            .ok_or_else(|| TextError::InvalidInput {
                field: "kv cache",
                reason: "blocks x block size overflows".into(),
            })?;
        let mut keys = Vec::with_capacity(config.layers);
        let mut values = Vec::with_capacity(config.layers);
        for _ in 0..config.layers {
            keys.push(Tensor::zeros((slots, row), dtype, device)?);
            values.push(Tensor::zeros((slots, row), dtype, device)?);
        }
        Ok(Self {
            keys,
            values,
            num_blocks,
            block_size,
            row,
        })
    }

    /// Bytes one token takes across all layers (keys and values).
    pub fn bytes_per_token(config: &LlamaConfig, dtype: DType) -> usize {
        2 * config.layers * config.kv_heads * config.head_dim * dtype.size_in_bytes()
    }

    /// Blocks in the storage.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Element type of the stored keys and values.
    pub fn dtype(&self) -> DType {
        self.keys.first().map_or(DType::F32, Tensor::dtype)
    }

    /// The slot of `position` in a sequence with block table `blocks`, or
    /// an error if the table does not reach that far or names a block the
    /// storage does not have.
    pub(crate) fn slot(&self, blocks: &[BlockId], position: usize) -> Result<u32> {
        let block = blocks
            .get(position / self.block_size)
            .copied()
            .ok_or_else(|| TextError::InvalidInput {
                field: "block table",
                reason: format!(
                    "{} blocks of {} do not cover position {position}",
                    blocks.len(),
                    self.block_size
                ),
            })?;
        if block as usize >= self.num_blocks {
            return Err(TextError::InvalidInput {
                field: "block table",
                reason: format!("block {block} is outside the {} blocks", self.num_blocks),
            });
        }
        Ok(block * self.block_size as u32 + (position % self.block_size) as u32)
    }

    /// Write `k` and `v` (`[n, kv_heads * head_dim]`) of layer `layer` into
    /// the slots named by `index` (`[n, kv_heads * head_dim]`, each row
    /// filled with its slot).
    pub(crate) fn write(
        &self,
        layer: usize,
        index: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<()> {
        self.keys[layer].scatter_set(index, &k.to_dtype(self.dtype())?.contiguous()?, 0)?;
        self.values[layer].scatter_set(index, &v.to_dtype(self.dtype())?.contiguous()?, 0)
    }

    /// Runs `f` over layer `layer`'s whole key and value storage as f32
    /// slices (`[slots, kv_heads * head_dim]`, row-major) when they live in
    /// host memory as contiguous f32, so attention can read a sequence's
    /// slots in place instead of gathering copies; `None` otherwise.
    pub(crate) fn with_host_f32<R>(
        &self,
        layer: usize,
        f: impl FnOnce(&[f32], &[f32]) -> R,
    ) -> candle_core::Result<Option<R>> {
        let (keys, kl) = self.keys[layer].storage_and_layout();
        let (values, vl) = self.values[layer].storage_and_layout();
        match (&*keys, &*values) {
            (Storage::Cpu(k), Storage::Cpu(v))
                if kl.is_contiguous() && vl.is_contiguous() && self.dtype() == DType::F32 =>
            {
                let k = &k.as_slice::<f32>()?[kl.start_offset()..];
                let v = &v.as_slice::<f32>()?[vl.start_offset()..];
                Ok(Some(f(k, v)))
            }
            _ => Ok(None),
        }
    }

    /// Keys and values of layer `layer` at `slots` (`[len]`), each
    /// `[len, kv_heads * head_dim]`.
    pub(crate) fn gather(
        &self,
        layer: usize,
        slots: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.keys[layer].index_select(slots, 0)?,
            self.values[layer].index_select(slots, 0)?,
        ))
    }

    /// Layers stored.
    pub(crate) fn layers(&self) -> usize {
        self.keys.len()
    }

    /// Width of one stored row.
    pub(crate) fn row(&self) -> usize {
        self.row
    }
}

impl KvStorage for PagedKvCache {
    type Error = candle_core::Error;

    fn copy_block(&mut self, from: BlockId, to: BlockId) -> candle_core::Result<()> {
        let bs = self.block_size;
        let (from, to) = (from as usize, to as usize);
        if from >= self.num_blocks || to >= self.num_blocks {
            candle_core::bail!(
                "copy of block {from} to {to} outside {} blocks",
                self.num_blocks
            );
        }
        for t in self.keys.iter().chain(self.values.iter()) {
            let src = t.narrow(0, from * bs, bs)?.copy()?;
            t.slice_set(&src, 0, to * bs)?;
        }
        Ok(())
    }
}
