//! [`PagedKvCache`]: the keys and values of every sequence, kept outside the
//! model in fixed-size blocks that `switchyard-pool`'s `KvBlockPool` hands
//! out.

use candle_core::{DType, Device, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use switchyard_kernels::attention::KvElement;
use switchyard_pool::{BlockId, KvStorage};

use super::attention_cpu::LayerKv;
use super::config::LlamaConfig;
use crate::{Result, TextError};

/// Key and value storage for all layers: per layer one `[num_blocks *
/// block_size, kv_heads * head_dim]` matrix of keys and one of values. Slot
/// `b * block_size + i` holds the `i`-th token of block `b`.
///
/// On the CPU in f32 or f16 the matrices are plain host vectors, so attention
/// reads and writes rows in place (f16 halves the memory and the bandwidth
/// attention spends reading it, as llama.cpp's default cache does);
/// elsewhere they are candle tensors on the device.
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
    HostF32(HostRows<f32>),
    /// f16 rows in host memory.
    HostF16(HostRows<f16>),
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
            Store::HostF32(HostRows::zeroed(config.layers, elems))
        } else if device.is_cpu() && dtype == DType::F16 {
            Store::HostF16(HostRows::zeroed(config.layers, elems))
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
            Store::HostF32(_) => DType::F32,
            Store::HostF16(_) => DType::F16,
            Store::Tensors { keys, .. } => keys.first().map_or(DType::F32, Tensor::dtype),
        }
    }

    /// Whether keys and values are rows in host memory.
    pub(crate) fn is_host(&self) -> bool {
        !matches!(self.store, Store::Tensors { .. })
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
            Store::HostF32(_) | Store::HostF16(_) => {
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
    /// head_dim]`, row-major f32) into slot `slots[i]` of layer `layer`,
    /// rounded to the storage's element type.
    pub(crate) fn write_rows(
        &mut self,
        layer: usize,
        slots: &[u32],
        k: &[f32],
        v: &[f32],
    ) -> candle_core::Result<()> {
        if k.len() != slots.len() * self.row || v.len() != slots.len() * self.row {
            candle_core::bail!("{} slots for {} key values", slots.len(), k.len());
        }
        match &mut self.store {
            Store::HostF32(rows) => rows.write(layer, self.row, slots, k, v),
            Store::HostF16(rows) => rows.write(layer, self.row, slots, k, v),
            Store::Tensors { .. } => candle_core::bail!("row writes need host kv storage"),
        }
    }

    /// Layer `layer`'s whole key and value storage (`[slots, kv_heads *
    /// head_dim]`, row-major) when it lives in host memory, so attention
    /// reads a sequence's slots in place; `None` otherwise.
    pub(crate) fn host_layer(&self, layer: usize) -> Option<HostLayer<'_>> {
        match &self.store {
            Store::HostF32(rows) => Some(HostLayer::F32(rows.layer(layer))),
            Store::HostF16(rows) => Some(HostLayer::F16(rows.layer(layer))),
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
            Store::HostF32(rows) => rows.gather(layer, self.row, slots),
            Store::HostF16(rows) => rows.gather(layer, self.row, slots),
            Store::Tensors { keys, values } => Ok((
                keys[layer].index_select(slots, 0)?,
                values[layer].index_select(slots, 0)?,
            )),
        }
    }

    /// Layers stored.
    pub(crate) fn layers(&self) -> usize {
        match &self.store {
            Store::HostF32(rows) => rows.keys.len(),
            Store::HostF16(rows) => rows.keys.len(),
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
            Store::HostF32(rows) => rows.copy_block(bs * self.row, from, to),
            Store::HostF16(rows) => rows.copy_block(bs * self.row, from, to),
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

/// One layer's host keys and values, in the element type they are stored as.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HostLayer<'a> {
    /// Stored as f32.
    F32(LayerKv<'a, f32>),
    /// Stored as f16.
    F16(LayerKv<'a, f16>),
}

/// Per layer one key and one value matrix in host memory, as `T`.
#[derive(Debug)]
struct HostRows<T> {
    keys: Vec<Vec<T>>,
    values: Vec<Vec<T>>,
}

/// f32 <-> storage conversions the host rows need.
trait HostElement: KvElement + Default + candle_core::WithDType {
    /// `dst = src`, rounded to nearest (ties to even) when `Self` is
    /// narrower.
    fn store_row(dst: &mut [Self], src: &[f32]);
}

impl HostElement for f32 {
    fn store_row(dst: &mut [Self], src: &[f32]) {
        dst.copy_from_slice(src);
    }
}

impl HostElement for f16 {
    fn store_row(dst: &mut [Self], src: &[f32]) {
        // half converts whole slices with F16C where the CPU has it.
        dst.convert_from_f32_slice(src);
    }
}

impl<T: HostElement> HostRows<T> {
    /// `layers` zeroed key and value matrices of `elems` values each
    /// (zeroed allocations: the OS hands out pages as they are touched).
    fn zeroed(layers: usize, elems: usize) -> Self {
        Self {
            keys: (0..layers).map(|_| vec![T::default(); elems]).collect(),
            values: (0..layers).map(|_| vec![T::default(); elems]).collect(),
        }
    }

    fn layer(&self, layer: usize) -> LayerKv<'_, T> {
        LayerKv {
            k: &self.keys[layer],
            v: &self.values[layer],
        }
    }

    fn write(
        &mut self,
        layer: usize,
        row: usize,
        slots: &[u32],
        k: &[f32],
        v: &[f32],
    ) -> candle_core::Result<()> {
        let (keys, values) = (&mut self.keys[layer], &mut self.values[layer]);
        for ((&slot, k), v) in slots
            .iter()
            .zip(k.chunks_exact(row))
            .zip(v.chunks_exact(row))
        {
            let at = slot as usize * row;
            if at + row > keys.len() {
                candle_core::bail!("slot {slot} is outside the cache");
            }
            T::store_row(&mut keys[at..at + row], k);
            T::store_row(&mut values[at..at + row], v);
        }
        Ok(())
    }

    /// Rows `slots` of layer `layer`'s keys and values as `[len, row]`
    /// tensors of the stored type.
    fn gather(
        &self,
        layer: usize,
        row: usize,
        slots: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let slots = slots.to_vec1::<u32>()?;
        let pick = |from: &[T]| -> candle_core::Result<Tensor> {
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
        Ok((pick(&self.keys[layer])?, pick(&self.values[layer])?))
    }

    /// Copy block `from` over block `to` in every layer; `n` values a block.
    fn copy_block(&mut self, n: usize, from: usize, to: usize) {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            t.copy_within(from * n..(from + 1) * n, to * n);
        }
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

    /// Host storage (f32 and f16) and device storage hold the same rows
    /// after the same writes and block copies.
    #[test]
    fn host_rows_match_tensor_storage() {
        for host_dtype in [DType::F32, DType::F16] {
            check_host_against_tensors(host_dtype);
        }
    }

    fn check_host_against_tensors(host_dtype: DType) {
        let c = config();
        let row = c.kv_heads * c.head_dim;
        let mut host = PagedKvCache::new(&c, 3, 2, host_dtype, &Device::Cpu).unwrap();
        let mut dense = PagedKvCache::new(&c, 3, 2, DType::F64, &Device::Cpu).unwrap();
        assert!(host.is_host() && !dense.is_host());
        assert_eq!(host.dtype(), host_dtype);
        let slots = [4u32, 1, 2];
        // Small integers: exact in f16 too.
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
        assert_eq!(hk.dtype(), host_dtype);
        let as_f32 = |t: Tensor| -> Vec<f32> {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(as_f32(hk), as_f32(dk));
        assert_eq!(as_f32(hv), as_f32(dv));
        // Block 2 (slots 4, 5) now holds block 0's copy: an empty slot 0
        // over what row 0 wrote, and slot 1's row.
        let keys = host_keys(&host, 1);
        assert!(keys[4 * row..5 * row].iter().all(|&x| x == 0.0));
        assert_eq!(&keys[5 * row..6 * row], &k[row..2 * row]);
        assert!(host_keys(&host, 0).iter().all(|&x| x == 0.0));
        assert!(dense.host_layer(1).is_none());
        // Bad slots are errors, not panics.
        assert!(host.write_rows(0, &[6], &k[..row], &v[..row]).is_err());
        assert!(host.write_rows(0, &[0, 1], &k[..row], &v[..row]).is_err());
    }

    fn host_keys(cache: &PagedKvCache, layer: usize) -> Vec<f32> {
        match cache.host_layer(layer).unwrap() {
            HostLayer::F32(kv) => kv.k.to_vec(),
            HostLayer::F16(kv) => kv.k.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// f16 storage rounds to nearest: what attention reads back is the
    /// f32 written, within half an f16 ulp.
    #[test]
    fn f16_rows_round_to_nearest() {
        let c = config();
        let row = c.kv_heads * c.head_dim;
        let mut cache = PagedKvCache::new(&c, 1, 2, DType::F16, &Device::Cpu).unwrap();
        let k: Vec<f32> = (0..row).map(|i| 1.0 + i as f32 / 3000.0).collect();
        cache.write_rows(0, &[1], &k, &k).unwrap();
        let HostLayer::F16(kv) = cache.host_layer(0).unwrap() else {
            panic!("f16 storage")
        };
        for (got, want) in kv.k[row..].iter().zip(&k) {
            assert_eq!(*got, f16::from_f32(*want));
        }
    }
}
