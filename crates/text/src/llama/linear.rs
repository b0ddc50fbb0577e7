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

/// `x W^T` through the kernels: `x` is `[.., k]` f32.
fn packed_forward(w: &PackedMatrix, x: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = dims.last().copied().unwrap_or(0);
    let rows = x.elem_count() / k.max(1);
    let data: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; rows * w.rows()];
    ACTIVATIONS
        .with_borrow_mut(|act| {
            act.quantize(&data, rows, k)?;
            switchyard_kernels::matmul(w, act, &mut out, &CandleComputePool)
        })
        .map_err(candle_core::Error::wrap)?;
    let mut shape = dims;
    if let Some(last) = shape.last_mut() {
        *last = w.rows();
    }
    Tensor::from_vec(out, shape, x.device())?.to_dtype(x.dtype())
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
}
