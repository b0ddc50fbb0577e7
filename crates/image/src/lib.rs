//! Image input and output for the engine: decoding outside bytes safely,
//! encoding results, and the geometry and colour operations that image
//! pipelines need before and after a model runs.
//!
//! - [`decode`] reads PNG, JPEG and WebP within [`ImageLimits`]: the file
//!   size, the declared width, height and pixel count are checked against
//!   the limits before any pixel memory is allocated, and `image::Limits`
//!   caps what the decoder may allocate, so a decompression bomb is a typed
//!   [`ImageError::TooLarge`], never an out-of-memory. EXIF orientation is
//!   applied.
//! - [`encode`] writes PNG, JPEG (with a quality) or lossless WebP.
//! - [`resize`], [`resize_to_fit`], [`resize_to_fill`] and [`upscale`] run on
//!   fast_image_resize's SIMD convolutions (Lanczos3 by default); [`crop`],
//!   [`pad_to_multiple`] and [`convert`] cover the rest. Every size argument
//!   is checked: out-of-range input is an [`ImageError::InvalidArgument`].
//!
//! # Example
//!
//! ```
//! use switchyard_image::{Anchor, Filter, ImageFormat, ImageLimits};
//!
//! let photo = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
//!     50, 30, image::Rgb([200, 120, 40]),
//! ));
//! let bytes = switchyard_image::encode(&photo, ImageFormat::Png)?;
//!
//! // Outside bytes: decode within limits, then make both sides multiples of 8.
//! let decoded = switchyard_image::decode(&bytes, &ImageLimits::default())?;
//! let padded = switchyard_image::pad_to_multiple(&decoded, 8, [0, 0, 0, 255], Anchor::TopLeft)?;
//! assert_eq!((padded.width(), padded.height()), (56, 32));
//! let small = switchyard_image::resize_to_fit(&padded, 28, 28, Filter::Lanczos3)?;
//! assert_eq!((small.width(), small.height()), (28, 16));
//!
//! // A file that claims to be larger than the limits is refused unread.
//! let tight = ImageLimits { max_pixels: 1000, ..ImageLimits::default() };
//! assert!(switchyard_image::decode(&bytes, &tight).is_err());
//! # Ok::<(), switchyard_image::ImageError>(())
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod codec;
mod error;
mod ops;

pub use codec::{ImageFormat, ImageLimits, decode, decode_file, encode};
pub use error::{ImageError, Result};
pub use image::DynamicImage;
pub use ops::{
    Anchor, ColorMode, Filter, MAX_OUTPUT_PIXELS, convert, crop, pad_to_multiple, resize,
    resize_to_fill, resize_to_fit, upscale,
};
