//! [`PagedKvCache`]: the keys and values of every sequence, kept outside the
//! model in fixed-size blocks that `switchyard-pool`'s `KvBlockPool` hands
//! out.

use candle_core::{DType, Device, Tensor};
use switchyard_pool::{BlockId, KvStorage};

use super::config::LlamaConfig;
use crate::{Result, TextError};

/// Key and value storage for all layers: per layer one `[num_blocks *
/// block_size, kv_heads * head_dim]` matrix of keys and one of values. Slot
/// `b * block_size + i` holds the `i`-th token of block `b`.
///
/// On the CPU in f32 the matrices are plain host vectors, so attention reads
/// and writes rows in place; elsewhere they are candle tensors on the device.
///
/// The cache only stores; which block belongs to which sequence is the
/// `KvBlockPool`'s business. It implements [`KvStorage`] so the pool's
/// copy-on-write copies land here.
#[derive(Debug)]
pub struct PagedKvCache {
    store: Store,
    num_blocks: usize,
    block_size: usize,
    row: usize,
}

/// Where the keys and values live.
#[derive(Debug)]
enum Store {
    /// f32 rows in host memory.
    Host {
        keys: Vec<Vec<f32>>,
        values: Vec<Vec<f32>>,
    },
    /// Tensors on a device, in any dtype.
    Tensors {
        keys: Vec<Tensor>,
        values: Vec<Tensor>,
    },
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
        let too_big = || TextError::InvalidInput {
            field: "kv cache",
            reason: "blocks x block size overflows".into(),
        };
        let slots = num_blocks.checked_mul(block_size).ok_or_else(too_big)?;
        let elems = slots.checked_mul(row).ok_or_else(too_big)?;
        let store = if device.is_cpu() && dtype == DType::F32 {
            // Zeroed allocations: the OS hands out pages as they are touched.
            Store::Host {
                keys: (0..config.layers).map(|_| vec![0f32; elems]).collect(),
                values: (0..config.layers).map(|_| vec![0f32; elems]).collect(),
            }
        } else {
            let mut keys = Vec::with_capacity(config.layers);
            let mut values = Vec::with_capacity(config.layers);
            for _ in 0..config.layers {
                keys.push(Tensor::zeros((slots, row), dtype, device)?);
                values.push(Tensor::zeros((slots, row), dtype, device)?);
            }
            Store::Tensors { keys, values }
        };
        Ok(Self {
            store,
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
        match &self.store {
            Store::Host { .. } => DType::F32,
            Store::Tensors { keys, .. } => keys.first().map_or(DType::F32, Tensor::dtype),
        }
    }

    /// Whether keys and values are f32 rows in host memory.
    pub(crate) fn is_host(&self) -> bool {
        matches!(self.store, Store::Host { .. })
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
    /// `slots` (`n` of them); `index` is the same slots as a `[n, kv_heads *
    /// head_dim]` tensor (each row filled with its slot) for device storage,
    /// built by the caller once per step.
    pub(crate) fn write(
        &mut self,
        layer: usize,
        slots: &[u32],
        index: Option<&Tensor>,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<()> {
        match &mut self.store {
            Store::Host { .. } => {
                let k = k.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let v = v.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                self.write_rows(layer, slots, &k, &v)
            }
            Store::Tensors { keys, values } => {
                let Some(index) = index else {
                    candle_core::bail!("device kv storage needs a write index");
                };
                let dtype = keys[layer].dtype();
                keys[layer].scatter_set(index, &k.to_dtype(dtype)?.contiguous()?, 0)?;
                values[layer].scatter_set(index, &v.to_dtype(dtype)?.contiguous()?, 0)
            }
        }
    }

    /// Host storage: write row `i` of `k` and `v` (`[n, kv_heads *
    /// head_dim]`, row-major f32) into slot `slots[i]` of layer `layer`.
    pub(crate) fn write_rows(
        &mut self,
        layer: usize,
        slots: &[u32],
        k: &[f32],
        v: &[f32],
    ) -> candle_core::Result<()> {
        let row = self.row;
        let Store::Host { keys, values } = &mut self.store else {
            candle_core::bail!("row writes need host kv storage");
        };
        if k.len() != slots.len() * row || v.len() != slots.len() * row {
            candle_core::bail!("{} slots for {} key values", slots.len(), k.len());
        }
        let (keys, values) = (&mut keys[layer], &mut values[layer]);
        for ((&slot, k), v) in slots
            .iter()
            .zip(k.chunks_exact(row))
            .zip(v.chunks_exact(row))
        {
            let at = slot as usize * row;
            if at + row > keys.len() {
                candle_core::bail!("slot {slot} is outside the cache");
            }
            keys[at..at + row].copy_from_slice(k);
            values[at..at + row].copy_from_slice(v);
        }
        Ok(())
    }

    /// Layer `layer`'s whole key and value storage as f32 slices (`[slots,
    /// kv_heads * head_dim]`, row-major) when it lives in host memory, so
    /// attention reads a sequence's slots in place; `None` otherwise.
    pub(crate) fn host_layer(&self, layer: usize) -> Option<(&[f32], &[f32])> {
        match &self.store {
            Store::Host { keys, values } => Some((&keys[layer], &values[layer])),
            Store::Tensors { .. } => None,
        }
    }

    /// Keys and values of layer `layer` at `slots` (`[len]`), each
    /// `[len, kv_heads * head_dim]`.
    pub(crate) fn gather(
        &self,
        layer: usize,
        slots: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        match &self.store {
            Store::Host { keys, values } => {
                let slots = slots.to_vec1::<u32>()?;
                let row = self.row;
                let pick = |from: &[f32]| -> candle_core::Result<Tensor> {
                    let mut out = Vec::with_capacity(slots.len() * row);
                    for &s in &slots {
                        let at = s as usize * row;
                        match from.get(at..at + row) {
                            Some(r) => out.extend_from_slice(r),
                            None => candle_core::bail!("slot {s} is outside the cache"),
                        }
                    }
                    Tensor::from_vec(out, (slots.len(), row), &Device::Cpu)
                };
                Ok((pick(&keys[layer])?, pick(&values[layer])?))
            }
            Store::Tensors { keys, values } => Ok((
                keys[layer].index_select(slots, 0)?,
                values[layer].index_select(slots, 0)?,
            )),
        }
    }

    /// Layers stored.
    pub(crate) fn layers(&self) -> usize {
        match &self.store {
            Store::Host { keys, .. } => keys.len(),
            Store::Tensors { keys, .. } => keys.len(),
        }
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
        match &mut self.store {
            Store::Host { keys, values } => {
                let n = bs * self.row;
                for t in keys.iter_mut().chain(values.iter_mut()) {
                    t.copy_within(from * n..(from + 1) * n, to * n);
                }
            }
            Store::Tensors { keys, values } => {
                for t in keys.iter().chain(values.iter()) {
                    let src = t.narrow(0, from * bs, bs)?.copy()?;
                    t.slice_set(&src, 0, to * bs)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LlamaConfig {
        LlamaConfig::from_hf_json(
            r#"{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10}"#,
        )
        .unwrap()
    }

    /// Host and device storage hold the same rows after the same writes
    /// and block copies.
    #[test]
    fn host_rows_match_tensor_storage() {
        let c = config();
        let row = c.kv_heads * c.head_dim;
        let mut host = PagedKvCache::new(&c, 3, 2, DType::F32, &Device::Cpu).unwrap();
        let mut dense = PagedKvCache::new(&c, 3, 2, DType::F64, &Device::Cpu).unwrap();
        assert!(host.is_host() && !dense.is_host());
        let slots = [4u32, 1, 2];
        let k: Vec<f32> = (0..3 * row).map(|i| i as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        let (kt, vt) = (
            Tensor::from_slice(&k, (3, row), &Device::Cpu).unwrap(),
            Tensor::from_slice(&v, (3, row), &Device::Cpu).unwrap(),
        );
        let index: Vec<u32> = slots
            .iter()
            .flat_map(|&s| std::iter::repeat_n(s, row))
            .collect();
        let index = Tensor::from_vec(index, (3, row), &Device::Cpu).unwrap();
        host.write(1, &slots, None, &kt, &vt).unwrap();
        dense.write(1, &slots, Some(&index), &kt, &vt).unwrap();
        host.copy_block(0, 2).unwrap();
        dense.copy_block(0, 2).unwrap();
        let all = Tensor::from_vec((0..6u32).collect(), 6, &Device::Cpu).unwrap();
        let (hk, hv) = host.gather(1, &all).unwrap();
        let (dk, dv) = dense.gather(1, &all).unwrap();
        let as_f32 = |t: Tensor| -> Vec<f32> {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(as_f32(hk.clone()), as_f32(dk));
        assert_eq!(as_f32(hv), as_f32(dv));
        // Block 2 (slots 4, 5) now holds block 0's copy: an empty slot 0
        // over what row 0 wrote, and slot 1's row.
        let (keys, _) = host.host_layer(1).unwrap();
        assert!(keys[4 * row..5 * row].iter().all(|&x| x == 0.0));
        assert_eq!(&keys[5 * row..6 * row], &k[row..2 * row]);
        assert!(host.host_layer(0).unwrap().0.iter().all(|&x| x == 0.0));
        assert!(dense.host_layer(1).is_none());
        // Bad slots are errors, not panics.
        assert!(host.write_rows(0, &[6], &k[..row], &v[..row]).is_err());
        assert!(host.write_rows(0, &[0, 1], &k[..row], &v[..row]).is_err());
    }
}
