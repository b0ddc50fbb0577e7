//! Memory-saving options of a pipeline (diffusers' `enable_attention_slicing`,
//! `enable_vae_slicing` and `enable_vae_tiling`).

use crate::error::{Result, invalid};

/// How the pipeline trades time for peak memory. All are off by default;
/// they change only how the work is split, not the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryOptions {
    /// Compute the UNet's (and ControlNets') attention over a few (batch x
    /// head) rows at a time: the attention scores, the largest activation
    /// of a UNet step (`rows x heads x (h x w)^2` floats), then exist for a
    /// slice only. Results are the same as unsliced.
    pub attention_slicing: Option<AttentionSlicing>,
    /// Encode and decode one image of a batch at a time: the VAE's peak
    /// memory is one image's instead of the batch's. Results are the same.
    pub vae_slicing: bool,
    /// Decode in overlapping latent tiles blended with linear ramps, so
    /// images far larger than the VAE's activations would allow still
    /// decode. A latent that fits in one tile decodes exactly as without.
    pub vae_tiling: Option<VaeTiling>,
}

/// How many (batch x head) rows of attention run at once, as diffusers'
/// `enable_attention_slicing(slice_size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionSlicing {
    /// Half of each layer's heads (diffusers' `"auto"`): about half the
    /// peak for a modest cost.
    Auto,
    /// One row at a time (diffusers' `"max"`): the smallest peak, the
    /// slowest.
    Max,
    /// This many rows at a time (at least 1).
    Size(usize),
}

impl MemoryOptions {
    /// Checks every option.
    pub fn validate(&self) -> Result<()> {
        if self.attention_slicing == Some(AttentionSlicing::Size(0)) {
            return Err(invalid(
                "attention_slicing",
                "a slice of 0 rows; use Size(n) with n >= 1",
            ));
        }
        if let Some(tiling) = self.vae_tiling {
            tiling.validate()?;
        }
        Ok(())
    }
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
