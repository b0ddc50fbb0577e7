//! Opening a component's safetensors, optionally rewriting some tensors as
//! they load.
//!
//! candle-transformers' modules keep their weights private, so the only
//! place to change a weight (a LoRA delta merged in, the VAE posterior's
//! variance removed) is while the module is built: the [`VarBuilder`] here
//! hands every tensor to a patch function before the module sees it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use crate::error::{DiffusionError, Result};

/// Rewrites some tensors as they load.
pub(crate) trait Patch: Send + Sync {
    /// Whether the tensor called `name` is rewritten.
    fn touches(&self, name: &str) -> bool;
    /// The rewritten tensor, from the stored one in F32.
    fn apply(&self, name: &str, stored: &Tensor) -> candle_core::Result<Tensor>;
}

/// Memory-maps `files` and builds a [`VarBuilder`] over them; with a patch,
/// each tensor it rewrites is computed in F32 and cast to `dtype` after.
pub(crate) fn open<'a>(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
    patch: Option<Arc<dyn Patch>>,
) -> Result<VarBuilder<'a>> {
    let mapped = map(files)?;
    let backend: Box<dyn SimpleBackend> = match patch {
        None => Box::new(mapped),
        Some(patch) => Box::new(Patched {
            inner: mapped,
            patch,
        }),
    };
    Ok(VarBuilder::from_backend(backend, dtype, device.clone()))
}

/// Memory-maps safetensors files.
fn map(files: &[PathBuf]) -> Result<MmapedSafetensors> {
    // SAFETY: the files are mapped read-only and only read while a component
    // loads; callers must not rewrite model files in place while a model
    // loads from them (as with any mmap-based loader).
    #[allow(unsafe_code)]
    let mapped = unsafe { MmapedSafetensors::multi(files) };
    mapped.map_err(|e| DiffusionError::Io {
        path: files.first().cloned().unwrap_or_default(),
        reason: e.to_string(),
    })
}

/// The name and shape of every tensor in `files` (headers only).
pub(crate) fn tensor_shapes(files: &[PathBuf]) -> Result<HashMap<String, Vec<usize>>> {
    Ok(map(files)?
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect())
}

struct Patched {
    inner: MmapedSafetensors,
    patch: Arc<dyn Patch>,
}

impl Patched {
    fn load(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let stored = self.inner.load(name, device)?;
        if self.patch.touches(name) {
            self.patch
                .apply(name, &stored.to_dtype(DType::F32)?)?
                .to_dtype(dtype)
        } else {
            stored.to_dtype(dtype)
        }
    }
}

impl SimpleBackend for Patched {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dtype, device)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            });
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.get(name).is_ok()
    }
}
