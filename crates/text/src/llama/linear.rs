//! [`Linear`]: a projection whose matrix runs through switchyard-kernels
//! (repacked GGUF blocks, the default on the CPU) or through candle's
//! `QMatMul` (dense weights, GPUs, and for comparison).

use std::cell::RefCell;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};
use switchyard_kernels::{PackedMatrix, QuantFormat, QuantizedRows};

use crate::CandleComputePool;

/// Which code multiplies by GGUF-quantized matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QuantMatmul {
    /// switchyard-kernels on the CPU (weights repacked once at load, integer
    /// dot products, batched rows, candle's threads); candle elsewhere and
    /// for formats the kernels lack.
    #[default]
    Kernels,
    /// candle's `QMatMul` everywhere.
    Candle,
}

/// How a model is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// The quantized matmul implementation.
    pub matmul: QuantMatmul,
}

impl LoadOptions {
    /// Options with `matmul` chosen.
    pub fn with_matmul(mut self, matmul: QuantMatmul) -> Self {
        self.matmul = matmul;
        self
    }
}

/// The switchyard-kernels format of a candle quantized dtype.
fn kernel_format(dtype: GgmlDType) -> Option<QuantFormat> {
    Some(match dtype {
        GgmlDType::Q4_0 => QuantFormat::Q4_0,
        GgmlDType::Q4_1 => QuantFormat::Q4_1,
        GgmlDType::Q5_0 => QuantFormat::Q5_0,
        GgmlDType::Q5_1 => QuantFormat::Q5_1,
        GgmlDType::Q8_0 => QuantFormat::Q8_0,
        GgmlDType::Q4K => QuantFormat::Q4K,
        GgmlDType::Q5K => QuantFormat::Q5K,
        GgmlDType::Q6K => QuantFormat::Q6K,
        _ => return None,
    })
}

/// A projection's matrix.
#[derive(Debug)]
pub(crate) enum Weight {
    /// candle's quantized or dense matmul.
    Candle(QMatMul),
    /// Repacked for switchyard-kernels.
    Packed(PackedMatrix),
}

impl Weight {
    /// `q` as the options ask: repacked when the kernels are chosen, the
    /// tensor is on the CPU and its format is supported; candle's otherwise.
    pub(crate) fn quantized(q: QTensor, options: &LoadOptions) -> candle_core::Result<Self> {
        let format = kernel_format(q.dtype());
        if let (QuantMatmul::Kernels, Some(format), true) =
            (options.matmul, format, q.device().is_cpu())
            && let [rows, cols] = q.shape().dims()
        {
            let packed = PackedMatrix::from_gguf(format, *rows, *cols, &q.data()?)
                .map_err(candle_core::Error::wrap)?;
            return Ok(Self::Packed(packed));
        }
        Ok(Self::Candle(QMatMul::from_qtensor(q)?))
    }
}

thread_local! {
    /// Quantized activations, reused across calls on a thread.
    static ACTIVATIONS: RefCell<QuantizedRows> = RefCell::new(QuantizedRows::new());
}

/// `rows x k` activations times `w^T` through the kernels.
pub(crate) fn run_packed(
    w: &PackedMatrix,
    x: &[f32],
    rows: usize,
) -> switchyard_kernels::Result<Vec<f32>> {
    let mut out = Vec::new();
    run_packed_into(w, x, rows, &mut out)?;
    Ok(out)
}

/// [`run_packed`] into `out`, resized to `rows x n`. A buffer that already
/// has that length (the same matrix's output at the previous layer) is
/// neither reallocated nor cleared: the kernels write every value.
pub(crate) fn run_packed_into(
    w: &PackedMatrix,
    x: &[f32],
    rows: usize,
    out: &mut Vec<f32>,
) -> switchyard_kernels::Result<()> {
    out.resize(rows * w.rows(), 0.0);
    ACTIVATIONS.with_borrow_mut(|act| {
        act.quantize_on(x, rows, w.cols(), &CandleComputePool)?;
        switchyard_kernels::matmul(w, act, out, &CandleComputePool)
    })
}

/// `x` (`[.., k]`) as f32 values and its row count.
fn rows_of(x: &Tensor) -> candle_core::Result<(Vec<f32>, usize)> {
    let k = x.dims().last().copied().unwrap_or(0).max(1);
    Ok((
        x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        x.elem_count() / k,
    ))
}

/// `out` (`rows x n`) as a tensor shaped like `like` with its last
/// dimension `n`, in `like`'s dtype.
fn tensor_like(out: Vec<f32>, n: usize, like: &Tensor) -> candle_core::Result<Tensor> {
    let mut shape = like.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Tensor::from_vec(out, shape, like.device())?.to_dtype(like.dtype())
}

/// `x W^T` through the kernels: `x` is `[.., k]`.
fn packed_forward(w: &PackedMatrix, x: &Tensor) -> candle_core::Result<Tensor> {
    let (data, rows) = rows_of(x)?;
    let out = run_packed(w, &data, rows).map_err(candle_core::Error::wrap)?;
    tensor_like(out, w.rows(), x)
}

/// A layer's query, key and value projections.
#[derive(Debug)]
pub(crate) enum Qkv {
    /// Three projections through [`Linear`].
    Separate { q: Linear, k: Linear, v: Linear },
    /// Stacked into one matrix: the activations are quantized and read once
    /// and the output split into the three.
    Fused {
        qkv: PackedMatrix,
        q_out: usize,
        k_out: usize,
    },
}

impl Qkv {
    /// Fuses the projections when all run through the kernels without
    /// biases and stack (same format, whole groups).
    pub(crate) fn new(q: Linear, k: Linear, v: Linear) -> Self {
        if let (Weight::Packed(pq), Weight::Packed(pk), Weight::Packed(pv)) =
            (&q.weight, &k.weight, &v.weight)
            && q.bias.is_none()
            && k.bias.is_none()
            && v.bias.is_none()
            && let Ok(qkv) = PackedMatrix::stack(&[pq.clone(), pk.clone(), pv.clone()])
        {
            return Self::Fused {
                qkv,
                q_out: pq.rows(),
                k_out: pk.rows(),
            };
        }
        Self::Separate { q, k, v }
    }

    /// Queries, keys and values of `x` (`[n, hidden]`), each `[n, out]`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        match self {
            Self::Separate { q, k, v } => Ok((q.forward(x)?, k.forward(x)?, v.forward(x)?)),
            Self::Fused { qkv, q_out, k_out } => {
                let (data, rows) = rows_of(x)?;
                let all = run_packed(qkv, &data, rows).map_err(candle_core::Error::wrap)?;
                let widths = [*q_out, *k_out, qkv.rows() - q_out - k_out];
                let mut parts = widths.map(|w| Vec::with_capacity(rows * w));
                for row in all.chunks_exact(qkv.rows()) {
                    let (q, rest) = row.split_at(widths[0]);
                    let (k, v) = rest.split_at(widths[1]);
                    parts[0].extend_from_slice(q);
                    parts[1].extend_from_slice(k);
                    parts[2].extend_from_slice(v);
                }
                let [q, k, v] = parts;
                Ok((
                    tensor_like(q, widths[0], x)?,
                    tensor_like(k, widths[1], x)?,
                    tensor_like(v, widths[2], x)?,
                ))
            }
        }
    }

    /// Whether the projections run through switchyard-kernels.
    pub(crate) fn uses_kernels(&self) -> bool {
        match self {
            Self::Separate { q, k, v } => q.uses_kernels() && k.uses_kernels() && v.uses_kernels(),
            Self::Fused { .. } => true,
        }
    }
}

/// A feed-forward block, `down(silu(gate x) * up x)`.
#[derive(Debug)]
pub(crate) enum Mlp {
    /// Three projections through [`Linear`].
    Separate {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    /// Gate and up stacked into one matrix (one pass over the activations)
    /// and the activation function applied between kernel calls on plain
    /// slices, with no tensors in between.
    Fused {
        gate_up: PackedMatrix,
        down: PackedMatrix,
    },
}

impl Mlp {
    /// Fuses the three projections when all run through the kernels
    /// without biases and gate and up stack (same format, whole groups).
    pub(crate) fn new(gate: Linear, up: Linear, down: Linear) -> Self {
        if let (Weight::Packed(g), Weight::Packed(u), Weight::Packed(d)) =
            (&gate.weight, &up.weight, &down.weight)
            && gate.bias.is_none()
            && up.bias.is_none()
            && down.bias.is_none()
            && g.rows() == u.rows()
            && let Ok(gate_up) = PackedMatrix::stack(&[g.clone(), u.clone()])
        {
            return Self::Fused {
                gate_up,
                down: d.clone(),
            };
        }
        Self::Separate { gate, up, down }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Separate { gate, up, down } => {
                down.forward(&(candle_nn::ops::silu(&gate.forward(x)?)? * up.forward(x)?)?)
            }
            Self::Fused { gate_up, down } => {
                let (data, rows) = rows_of(x)?;
                let out =
                    fused_mlp(gate_up, down, &data, rows).map_err(candle_core::Error::wrap)?;
                tensor_like(out, down.rows(), x)
            }
        }
    }

    /// Whether the block runs through switchyard-kernels.
    pub(crate) fn uses_kernels(&self) -> bool {
        match self {
            Self::Separate { gate, up, down } => {
                gate.uses_kernels() && up.uses_kernels() && down.uses_kernels()
            }
            Self::Fused { .. } => true,
        }
    }
}

/// `down(silu(gate x) * up x)` for `rows` rows of `x` on plain slices, gate
/// and up stacked in `gate_up`.
pub(crate) fn fused_mlp(
    gate_up: &PackedMatrix,
    down: &PackedMatrix,
    x: &[f32],
    rows: usize,
) -> switchyard_kernels::Result<Vec<f32>> {
    let mut buffers = MlpBuffers::default();
    fused_mlp_into(gate_up, down, x, rows, &mut buffers)?;
    Ok(buffers.out)
}

/// The buffers of [`fused_mlp_into`], kept from one layer to the next.
#[derive(Debug, Default)]
pub(crate) struct MlpBuffers {
    /// Gate and up projections, `[rows, 2 * inter]`.
    gate_up: Vec<f32>,
    /// The result, `[rows, n]`.
    pub(crate) out: Vec<f32>,
}

/// [`fused_mlp`] into `buffers.out`, reusing every buffer.
pub(crate) fn fused_mlp_into(
    gate_up: &PackedMatrix,
    down: &PackedMatrix,
    x: &[f32],
    rows: usize,
    buffers: &mut MlpBuffers,
) -> switchyard_kernels::Result<()> {
    let inter = gate_up.rows() / 2;
    run_packed_into(gate_up, x, rows, &mut buffers.gate_up)?;
    buffers.out.resize(rows * down.rows(), 0.0);
    ACTIVATIONS.with_borrow_mut(|act| {
        act.quantize_silu_gated(&buffers.gate_up, rows, inter, &CandleComputePool)?;
        switchyard_kernels::matmul(down, act, &mut buffers.out, &CandleComputePool)
    })
}

/// A projection: `y = x W^T (+ b)`.
#[derive(Debug)]
pub(crate) struct Linear {
    pub(crate) weight: Weight,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            Weight::Candle(w) => w.forward(x)?,
            Weight::Packed(w) => packed_forward(w, x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// Whether this projection runs through switchyard-kernels.
    pub(crate) fn uses_kernels(&self) -> bool {
        matches!(self.weight, Weight::Packed(_))
    }

    /// The repacked matrix, when the projection is nothing else (no bias).
    pub(crate) fn packed(&self) -> Option<&PackedMatrix> {
        match (&self.weight, &self.bias) {
            (Weight::Packed(w), None) => Some(w),
            _ => None,
        }
    }
}
