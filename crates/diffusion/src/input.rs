//! Input images from outside bytes, decoded within limits.

use image::{GrayImage, RgbImage};
use switchyard_image::ImageLimits;

use crate::error::{DiffusionError, Result};

/// Decodes an input image (PNG, JPEG or WebP) within `limits` as RGB; a
/// corrupt file or a decompression bomb is a [`DiffusionError::Image`].
pub fn decode_image(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage> {
    switchyard_image::decode(bytes, limits)
        .map(|image| image.to_rgb8())
        .map_err(|e| DiffusionError::Image(e.to_string()))
}

/// Decodes an inpainting mask within `limits` as grey (white repaints).
pub fn decode_mask(bytes: &[u8], limits: &ImageLimits) -> Result<GrayImage> {
    switchyard_image::decode(bytes, limits)
        .map(|image| image.to_luma8())
        .map_err(|e| DiffusionError::Image(e.to_string()))
}
