//! The [`Loader`] seam: how the cache gets a model it does not hold.

use switchyard_core::DeviceId;

use crate::LoadError;

/// A loaded model and what it weighs.
#[derive(Debug, Clone)]
pub struct Loaded<V> {
    /// The model.
    pub value: V,
    /// Bytes it occupies on the device (the cache's weigher).
    pub bytes: u64,
}

/// Loads models for a [`ModelCache`](crate::ModelCache). Knows files and
/// formats; the cache knows nothing of them.
pub trait Loader<K, V>: Send + Sync {
    /// Load `key` on `device`.
    fn load(&self, key: &K, device: DeviceId) -> Result<Loaded<V>, LoadError>;

    /// Bytes `key` will need on `device`, estimated before loading (from
    /// file sizes, as Ollama estimates), so a load that cannot fit is
    /// refused before it starts. `None`: unknown, no refusal.
    fn estimate_bytes(&self, key: &K, device: DeviceId) -> Option<u64> {
        let _ = (key, device);
        None
    }

    /// What reloading `key` costs, in any unit consistent across keys
    /// (seconds by default: the measured load time is used when this
    /// returns `None`). GDSF keeps expensive, often-used models.
    fn cost(&self, key: &K) -> Option<f64> {
        let _ = key;
        None
    }
}
