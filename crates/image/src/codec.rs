//! Decoding with limits, and encoding.

use std::io::Cursor;
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageReader};

use crate::error::{ImageError, Result, invalid};

/// Limits on what [`decode`] accepts: outside input never gets to allocate
/// more than these allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest encoded input, in bytes.
    pub max_bytes: usize,
    /// Largest width or height, in pixels.
    pub max_side: u32,
    /// Largest width x height.
    pub max_pixels: u64,
    /// Most bytes the decoder may allocate (passed to `image::Limits`).
    pub max_alloc: u64,
}

impl Default for ImageLimits {
    /// 32 MiB files, sides up to 8192, 40 megapixels, 512 MiB of decoder
    /// memory: any photo, no bomb.
    fn default() -> Self {
        Self {
            max_bytes: 32 << 20,
            max_side: 8192,
            max_pixels: 40_000_000,
            max_alloc: 512 << 20,
        }
    }
}

/// The formats read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// PNG (lossless).
    Png,
    /// JPEG at the given quality (1..=100); alpha is dropped.
    Jpeg {
        /// 1 (smallest) to 100 (best).
        quality: u8,
    },
    /// WebP, lossless.
    WebP,
}

impl ImageFormat {
    /// The MIME type (`image/png`, ...).
    pub fn mime_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg { .. } => "image/jpeg",
            Self::WebP => "image/webp",
        }
    }

    /// The format `bytes` are in, from their magic number.
    pub fn sniff(bytes: &[u8]) -> Result<Self> {
        match image::guess_format(bytes) {
            Ok(image::ImageFormat::Png) => Ok(Self::Png),
            Ok(image::ImageFormat::Jpeg) => Ok(Self::Jpeg { quality: 90 }),
            Ok(image::ImageFormat::WebP) => Ok(Self::WebP),
            Ok(other) => Err(ImageError::Unsupported(format!("{other:?} files"))),
            Err(_) => Err(ImageError::UnknownFormat),
        }
    }

    fn to_image(self) -> image::ImageFormat {
        match self {
            Self::Png => image::ImageFormat::Png,
            Self::Jpeg { .. } => image::ImageFormat::Jpeg,
            Self::WebP => image::ImageFormat::WebP,
        }
    }
}

/// Decodes a PNG, JPEG or WebP file within `limits`, applying its EXIF
/// orientation. The header is checked against the limits before any pixel
/// memory is allocated, so a decompression bomb costs nothing.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            len: bytes.len(),
            max: limits.max_bytes,
        });
    }
    let format = ImageFormat::sniff(bytes)?.to_image();
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| from_image(e, (0, 0)))?;
    check_size(width, height, limits)?;

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_side);
    image_limits.max_image_height = Some(limits.max_side);
    image_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(image_limits);
    let size = (width, height);
    let mut decoder = reader.into_decoder().map_err(|e| from_image(e, size))?;
    if decoder.total_bytes() > limits.max_alloc {
        return Err(ImageError::TooLarge {
            width,
            height,
            reason: format!(
                "decoding needs {} bytes; the limit is {}",
                decoder.total_bytes(),
                limits.max_alloc
            ),
        });
    }
    let orientation = decoder.orientation().map_err(|e| from_image(e, size))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| from_image(e, size))?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Reads and decodes a file (see [`decode`]); files over
/// [`ImageLimits::max_bytes`] are refused before they are read.
pub fn decode_file(path: &Path, limits: &ImageLimits) -> Result<DynamicImage> {
    let io = |e: std::io::Error| ImageError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > limits.max_bytes as u64 {
        return Err(ImageError::TooManyBytes {
            len: usize::try_from(len).unwrap_or(usize::MAX),
            max: limits.max_bytes,
        });
    }
    decode(&std::fs::read(path).map_err(io)?, limits)
}

fn check_size(width: u32, height: u32, limits: &ImageLimits) -> Result<()> {
    let too_large = |reason: String| ImageError::TooLarge {
        width,
        height,
        reason,
    };
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format!(
            "{width}x{height} has no pixels"
        )));
    }
    if width > limits.max_side || height > limits.max_side {
        return Err(too_large(format!(
            "a side is over the limit of {}",
            limits.max_side
        )));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(too_large(format!(
            "more than the limit of {} pixels",
            limits.max_pixels
        )));
    }
    Ok(())
}

fn from_image(error: image::ImageError, (width, height): (u32, u32)) -> ImageError {
    match error {
        image::ImageError::Limits(e) => ImageError::TooLarge {
            width,
            height,
            reason: e.to_string(),
        },
        image::ImageError::Unsupported(e) => ImageError::Unsupported(e.to_string()),
        image::ImageError::Encoding(e) => ImageError::Encode(e.to_string()),
        other => ImageError::Corrupt(other.to_string()),
    }
}

/// Encodes `image` as `format`. JPEG drops alpha; WebP is written lossless
/// from 8-bit RGB(A); 16-bit and float images are converted to 8 bits where
/// the format needs it.
pub fn encode(image: &DynamicImage, format: ImageFormat) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let (w, h) = (image.width(), image.height());
    let failed = |e: image::ImageError| from_image(e, (w, h));
    match format {
        ImageFormat::Png => {
            let image = match image {
                DynamicImage::ImageRgb32F(_) => &DynamicImage::ImageRgb16(image.to_rgb16()),
                DynamicImage::ImageRgba32F(_) => &DynamicImage::ImageRgba16(image.to_rgba16()),
                _ => image,
            };
            PngEncoder::new(&mut out)
                .write_image(image.as_bytes(), w, h, image.color().into())
                .map_err(failed)?;
        }
        ImageFormat::Jpeg { quality } => {
            if !(1..=100).contains(&quality) {
                return Err(invalid("quality", format!("{quality} is outside 1..=100")));
            }
            let rgb = image.to_rgb8();
            JpegEncoder::new_with_quality(&mut out, quality)
                .write_image(rgb.as_raw(), w, h, image::ExtendedColorType::Rgb8)
                .map_err(failed)?;
        }
        ImageFormat::WebP => {
            let encoder = WebPEncoder::new_lossless(&mut out);
            if image.color().has_alpha() {
                let rgba = image.to_rgba8();
                encoder.write_image(rgba.as_raw(), w, h, image::ExtendedColorType::Rgba8)
            } else {
                let rgb = image.to_rgb8();
                encoder.write_image(rgb.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            }
            .map_err(failed)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
        }))
    }

    #[test]
    fn png_and_webp_round_trip_exactly() -> Result<()> {
        let image = gradient(37, 21);
        for format in [ImageFormat::Png, ImageFormat::WebP] {
            let bytes = encode(&image, format)?;
            assert_eq!(ImageFormat::sniff(&bytes)?.to_image(), format.to_image());
            let back = decode(&bytes, &ImageLimits::default())?;
            assert_eq!(back.to_rgb8(), image.to_rgb8(), "{format:?}");
        }
        Ok(())
    }

    #[test]
    fn jpeg_round_trips_closely_and_checks_quality() -> Result<()> {
        let image = gradient(32, 32);
        let bytes = encode(&image, ImageFormat::Jpeg { quality: 95 })?;
        let back = decode(&bytes, &ImageLimits::default())?.to_rgb8();
        let worst = back
            .as_raw()
            .iter()
            .zip(image.to_rgb8().as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max();
        assert!(worst.is_some_and(|d| d < 40), "{worst:?}");
        assert!(matches!(
            encode(&image, ImageFormat::Jpeg { quality: 0 }),
            Err(ImageError::InvalidArgument {
                field: "quality",
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn limits_refuse_before_decoding() -> Result<()> {
        let bytes = encode(&gradient(64, 48), ImageFormat::Png)?;
        let small = |f: fn(&mut ImageLimits)| {
            let mut limits = ImageLimits::default();
            f(&mut limits);
            decode(&bytes, &limits)
        };
        assert!(matches!(
            small(|l| l.max_bytes = 10),
            Err(ImageError::TooManyBytes { .. })
        ));
        assert!(matches!(
            small(|l| l.max_side = 50),
            Err(ImageError::TooLarge {
                width: 64,
                height: 48,
                ..
            })
        ));
        assert!(matches!(
            small(|l| l.max_pixels = 64 * 48 - 1),
            Err(ImageError::TooLarge { .. })
        ));
        assert!(matches!(
            small(|l| l.max_alloc = 1000),
            Err(ImageError::TooLarge { .. })
        ));
        assert!(small(|_| {}).is_ok());
        Ok(())
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let limits = ImageLimits::default();
        assert!(matches!(decode(&[], &limits), Err(ImageError::Empty)));
        assert!(matches!(
            decode(b"hello world", &limits),
            Err(ImageError::UnknownFormat)
        ));
        assert!(matches!(
            decode(b"GIF89a\x01\x00\x01\x00", &limits),
            Err(ImageError::Unsupported(_))
        ));
        let Ok(png) = encode(&gradient(8, 8), ImageFormat::Png) else {
            panic!("encode failed")
        };
        for cut in [9, 20, 40, png.len() - 5] {
            assert!(
                matches!(decode(&png[..cut], &limits), Err(ImageError::Corrupt(_))),
                "cut at {cut}"
            );
        }
    }
}
