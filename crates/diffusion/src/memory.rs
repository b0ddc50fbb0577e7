//! Memory-saving options of a pipeline (diffusers' `enable_vae_slicing` and
//! `enable_vae_tiling`).

use crate::error::{Result, invalid};

/// How the VAE trades time for peak memory. Both are off by default; they
/// change only how the work is split, not the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryOptions {
    /// Encode and decode one image of a batch at a time: the VAE's peak
    /// memory is one image's instead of the batch's. Results are the same.
    pub vae_slicing: bool,
    /// Decode in overlapping latent tiles blended with linear ramps, so
    /// images far larger than the VAE's activations would allow still
    /// decode. A latent that fits in one tile decodes exactly as without.
    pub vae_tiling: Option<VaeTiling>,
}

/// Tile geometry for [`MemoryOptions::vae_tiling`], in latent cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeTiling {
    /// Side of a tile (64 latents = 512 pixels for SD).
    pub tile: usize,
    /// Cells shared by neighbouring tiles, blended (16 = 128 pixels).
    pub overlap: usize,
}

impl Default for VaeTiling {
    fn default() -> Self {
        Self {
            tile: 64,
            overlap: 16,
        }
    }
}

impl VaeTiling {
    /// Checks the geometry: tiles of at least 4 cells, overlap at least 1
    /// and at most half a tile.
    pub fn validate(&self) -> Result<()> {
        if self.tile < 4 {
            return Err(invalid(
                "vae_tiling.tile",
                format!("{} is below 4", self.tile),
            ));
        }
        if self.overlap == 0 || 2 * self.overlap > self.tile {
            return Err(invalid(
                "vae_tiling.overlap",
                format!("{} must be 1..={}", self.overlap, self.tile / 2),
            ));
        }
        Ok(())
    }
}
