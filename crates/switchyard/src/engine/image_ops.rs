//! Image processing requests (the `image-processing` kind): a list of
//! [`ImageOp`]s run in order by `switchyard-image`, on a worker of their own
//! so that a large resize never holds up a dispatcher.

use std::sync::Arc;

use switchyard_batch::{BatchContext, BatchHandler, BatchKey};
use switchyard_image::{
    Anchor, ColorMode, DynamicImage, Filter, ImageError, MAX_OUTPUT_PIXELS, convert, crop,
    pad_to_multiple, resize, resize_to_fill, resize_to_fit, upscale,
};

use crate::engine::error::{EngineError, Result};

/// Most operations one request may chain.
pub const MAX_IMAGE_OPS: usize = 32;

/// One step of an image-processing request.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ImageOp {
    /// Resize to exactly `width` x `height` (the aspect ratio may change).
    Resize {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Resampling filter.
        filter: Filter,
    },
    /// Shrink or grow to fit inside `width` x `height`, keeping the aspect
    /// ratio.
    Fit {
        /// Largest width.
        width: u32,
        /// Largest height.
        height: u32,
        /// Resampling filter.
        filter: Filter,
    },
    /// Cover `width` x `height` keeping the aspect ratio, cropping the
    /// overflow around the centre.
    Fill {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Resampling filter.
        filter: Filter,
    },
    /// Grow both sides by `factor` (above 1, at most 16).
    Upscale {
        /// How many times larger.
        factor: f32,
        /// Resampling filter.
        filter: Filter,
    },
    /// Keep the `width` x `height` rectangle whose top-left corner is at
    /// (`x`, `y`).
    Crop {
        /// Left edge.
        x: u32,
        /// Top edge.
        y: u32,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// Pad both sides up to a multiple of `multiple` with `fill` (RGBA).
    PadToMultiple {
        /// The multiple (8 for Stable Diffusion).
        multiple: u32,
        /// The padding colour.
        fill: [u8; 4],
        /// Where the original sits in the padded image.
        anchor: Anchor,
    },
    /// Convert the pixel format.
    Convert(ColorMode),
}

impl ImageOp {
    /// Resize to exactly `width` x `height` with Lanczos3.
    pub fn resize(width: u32, height: u32) -> Self {
        ImageOp::Resize {
            width,
            height,
            filter: Filter::default(),
        }
    }

    /// Applies the operation.
    ///
    /// # Errors
    /// When its arguments do not suit the image.
    pub fn apply(&self, image: &DynamicImage) -> std::result::Result<DynamicImage, ImageError> {
        match *self {
            ImageOp::Resize {
                width,
                height,
                filter,
            } => resize(image, width, height, filter),
            ImageOp::Fit {
                width,
                height,
                filter,
            } => resize_to_fit(image, width, height, filter),
            ImageOp::Fill {
                width,
                height,
                filter,
            } => resize_to_fill(image, width, height, filter),
            ImageOp::Upscale { factor, filter } => upscale(image, factor, filter),
            ImageOp::Crop {
                x,
                y,
                width,
                height,
            } => crop(image, x, y, width, height),
            ImageOp::PadToMultiple {
                multiple,
                fill,
                anchor,
            } => pad_to_multiple(image, multiple, fill, anchor),
            ImageOp::Convert(mode) => Ok(convert(image, mode)),
        }
    }
}

/// Checks an image-processing request before it is queued.
pub(crate) fn check_ops(image: &DynamicImage, ops: &[ImageOp]) -> Result<()> {
    if ops.is_empty() {
        return Err(EngineError::invalid("ops", "is empty"));
    }
    if ops.len() > MAX_IMAGE_OPS {
        return Err(EngineError::invalid(
            "ops",
            format!("{} operations; at most {MAX_IMAGE_OPS}", ops.len()),
        ));
    }
    let pixels = u64::from(image.width()) * u64::from(image.height());
    if pixels == 0 || pixels > MAX_OUTPUT_PIXELS {
        return Err(EngineError::invalid(
            "image",
            format!(
                "is {}x{}; it must have 1..={MAX_OUTPUT_PIXELS} pixels",
                image.width(),
                image.height()
            ),
        ));
    }
    Ok(())
}

/// An image and the operations to run on it.
#[derive(Debug, Clone)]
pub(crate) struct ImageJob {
    pub(crate) image: DynamicImage,
    pub(crate) ops: Vec<ImageOp>,
}

/// Runs image jobs one at a time (batching buys nothing here; the batcher
/// gives the worker thread, priorities and cancellation).
#[derive(Debug)]
pub(crate) struct ImageOpsHandler {
    model: Arc<str>,
}

impl ImageOpsHandler {
    pub(crate) fn new(model: &str) -> Self {
        Self {
            model: model.into(),
        }
    }
}

impl BatchHandler for ImageOpsHandler {
    type Input = ImageJob;
    type Output = DynamicImage;
    type Error = Arc<ImageError>;

    fn run(
        &self,
        batch: &mut [ImageJob],
        context: &BatchContext<'_>,
    ) -> Vec<std::result::Result<DynamicImage, Arc<ImageError>>> {
        batch
            .iter()
            .enumerate()
            .map(|(i, job)| {
                let mut image = job.image.clone();
                for op in &job.ops {
                    if context.is_cancelled(i) {
                        break;
                    }
                    image = op.apply(&image).map_err(Arc::new)?;
                }
                Ok(image)
            })
            .collect()
    }

    fn key(&self, _: &ImageJob) -> BatchKey {
        BatchKey::new(Arc::clone(&self.model), 0)
    }

    fn cost(&self, job: &ImageJob) -> u64 {
        u64::from(job.image.width()) * u64::from(job.image.height())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn image(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([9, 99, 199])))
    }

    #[test]
    fn ops_run_in_order() {
        let mut img = image(50, 30);
        for op in [
            ImageOp::PadToMultiple {
                multiple: 8,
                fill: [0, 0, 0, 255],
                anchor: Anchor::TopLeft,
            },
            ImageOp::Crop {
                x: 0,
                y: 0,
                width: 40,
                height: 32,
            },
            ImageOp::resize(20, 16),
            ImageOp::Convert(ColorMode::Gray),
        ] {
            img = op.apply(&img).unwrap();
        }
        assert_eq!((img.width(), img.height()), (20, 16));
        assert!(matches!(img, DynamicImage::ImageLuma8(_)));
    }

    #[test]
    fn bad_requests_are_refused_before_queueing() {
        assert!(check_ops(&image(4, 4), &[]).is_err());
        let many = vec![ImageOp::Convert(ColorMode::Rgb); MAX_IMAGE_OPS + 1];
        assert!(check_ops(&image(4, 4), &many).is_err());
        assert!(check_ops(&image(0, 4), &[ImageOp::resize(2, 2)]).is_err());
        assert!(check_ops(&image(4, 4), &[ImageOp::resize(2, 2)]).is_ok());
    }
}
