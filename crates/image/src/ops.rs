//! Geometry and colour operations: resize, fit, fill, crop, pad, upscale,
//! convert.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, GenericImage, GenericImageView};

use crate::error::{ImageError, Result, invalid};

/// The most pixels any operation here produces (a 16384 x 16384 image);
/// larger requests are refused rather than allocated.
pub const MAX_OUTPUT_PIXELS: u64 = 1 << 28;

/// The resampling filter of a resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Filter {
    /// Nearest neighbour: blocky, exact for masks.
    Nearest,
    /// Bilinear.
    Bilinear,
    /// Catmull-Rom bicubic.
    CatmullRom,
    /// Mitchell-Netravali bicubic.
    Mitchell,
    /// Lanczos, 3 lobes: the sharpest (the default).
    #[default]
    Lanczos3,
}

impl Filter {
    fn algorithm(self) -> ResizeAlg {
        match self {
            Self::Nearest => ResizeAlg::Nearest,
            Self::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
            Self::CatmullRom => ResizeAlg::Convolution(FilterType::CatmullRom),
            Self::Mitchell => ResizeAlg::Convolution(FilterType::Mitchell),
            Self::Lanczos3 => ResizeAlg::Convolution(FilterType::Lanczos3),
        }
    }
}

/// The colour layouts [`convert`] produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColorMode {
    /// 8-bit RGB.
    Rgb,
    /// 8-bit RGB with alpha.
    Rgba,
    /// 8-bit grey (luma).
    Gray,
}

/// Where [`pad_to_multiple`] keeps the original inside the larger canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Anchor {
    /// Original at the top left; padding right and below.
    #[default]
    TopLeft,
    /// Original centred.
    Center,
}

fn check_output(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(invalid("size", format!("{width}x{height} has no pixels")));
    }
    if u64::from(width) * u64::from(height) > MAX_OUTPUT_PIXELS {
        return Err(invalid(
            "size",
            format!("{width}x{height} is over {MAX_OUTPUT_PIXELS} pixels"),
        ));
    }
    Ok(())
}

/// 8-bit grey+alpha and 16-bit images resize natively; anything else the
/// resizer cannot take is converted to 8-bit RGBA first.
fn resizable(image: &DynamicImage) -> std::borrow::Cow<'_, DynamicImage> {
    use fast_image_resize::IntoImageView;
    if image.pixel_type().is_some() {
        std::borrow::Cow::Borrowed(image)
    } else {
        std::borrow::Cow::Owned(DynamicImage::ImageRgba8(image.to_rgba8()))
    }
}

fn run_resizer(
    image: &DynamicImage,
    width: u32,
    height: u32,
    options: &ResizeOptions,
) -> Result<DynamicImage> {
    check_output(width, height)?;
    let source = resizable(image);
    let mut out = DynamicImage::new(width, height, source.color());
    Resizer::new()
        .resize(source.as_ref(), &mut out, options)
        .map_err(|e| ImageError::Unsupported(e.to_string()))?;
    Ok(out)
}

/// Resizes to exactly `width` x `height` (the aspect ratio may change).
/// Alpha is premultiplied while filtering, so edges do not darken.
pub fn resize(
    image: &DynamicImage,
    width: u32,
    height: u32,
    filter: Filter,
) -> Result<DynamicImage> {
    let options = ResizeOptions::new().resize_alg(filter.algorithm());
    run_resizer(image, width, height, &options)
}

/// Scales to cover `width` x `height` and crops the overflow evenly from
/// both sides (the usual preprocessing for a fixed model input size).
pub fn resize_to_fill(
    image: &DynamicImage,
    width: u32,
    height: u32,
    filter: Filter,
) -> Result<DynamicImage> {
    let options = ResizeOptions::new()
        .resize_alg(filter.algorithm())
        .fit_into_destination(Some((0.5, 0.5)));
    run_resizer(image, width, height, &options)
}

/// Scales to fit inside `max_width` x `max_height`, keeping the aspect ratio
/// (each side at least 1 pixel). An image already inside is returned as is.
pub fn resize_to_fit(
    image: &DynamicImage,
    max_width: u32,
    max_height: u32,
    filter: Filter,
) -> Result<DynamicImage> {
    check_output(max_width, max_height)?;
    let (w, h) = image.dimensions();
    if w <= max_width && h <= max_height {
        return Ok(image.clone());
    }
    let scale = f64::min(
        f64::from(max_width) / f64::from(w),
        f64::from(max_height) / f64::from(h),
    );
    let fit = |side: u32, max: u32| ((f64::from(side) * scale).round() as u32).clamp(1, max);
    resize(image, fit(w, max_width), fit(h, max_height), filter)
}

/// Enlarges by `factor` (above 1, at most 16) with `filter`. This is
/// resampling, not a learned super-resolution model.
pub fn upscale(image: &DynamicImage, factor: f32, filter: Filter) -> Result<DynamicImage> {
    if !factor.is_finite() || factor <= 1.0 || factor > 16.0 {
        return Err(invalid("factor", format!("{factor} is outside (1, 16]")));
    }
    let grow = |side: u32| (f64::from(side) * f64::from(factor)).round() as u32;
    resize(image, grow(image.width()), grow(image.height()), filter)
}

/// The `width` x `height` region at (`x`, `y`); a region that does not lie
/// wholly inside the image is an error rather than silently clamped.
pub fn crop(image: &DynamicImage, x: u32, y: u32, width: u32, height: u32) -> Result<DynamicImage> {
    check_output(width, height)?;
    let (w, h) = image.dimensions();
    let inside = x.checked_add(width).is_some_and(|r| r <= w)
        && y.checked_add(height).is_some_and(|b| b <= h);
    if !inside {
        return Err(invalid(
            "region",
            format!("{width}x{height} at ({x}, {y}) is not inside the {w}x{h} image"),
        ));
    }
    Ok(image.crop_imm(x, y, width, height))
}

/// Grows the canvas so both sides are multiples of `multiple` (8 for Stable
/// Diffusion), filling new pixels with `fill` (RGBA; converted to the
/// image's colour type). The original pixels are unchanged.
pub fn pad_to_multiple(
    image: &DynamicImage,
    multiple: u32,
    fill: [u8; 4],
    anchor: Anchor,
) -> Result<DynamicImage> {
    if multiple == 0 {
        return Err(invalid("multiple", "must be at least 1"));
    }
    let (w, h) = image.dimensions();
    let up = |side: u32| side.div_ceil(multiple).checked_mul(multiple);
    let (Some(pw), Some(ph)) = (up(w), up(h)) else {
        return Err(invalid(
            "multiple",
            format!("{multiple} overflows the size"),
        ));
    };
    if (pw, ph) == (w, h) {
        return Ok(image.clone());
    }
    check_output(pw, ph)?;
    let mut canvas = DynamicImage::new(pw, ph, image.color());
    let pixel = image::Rgba(fill);
    for y in 0..ph {
        for x in 0..pw {
            canvas.put_pixel(x, y, pixel);
        }
    }
    let (dx, dy) = match anchor {
        Anchor::TopLeft => (0, 0),
        Anchor::Center => ((pw - w) / 2, (ph - h) / 2),
    };
    canvas
        .copy_from(image, dx, dy)
        .map_err(|e| ImageError::Unsupported(e.to_string()))?;
    Ok(canvas)
}

/// The image in another colour layout (8 bits per channel).
pub fn convert(image: &DynamicImage, mode: ColorMode) -> DynamicImage {
    match mode {
        ColorMode::Rgb => DynamicImage::ImageRgb8(image.to_rgb8()),
        ColorMode::Rgba => DynamicImage::ImageRgba8(image.to_rgba8()),
        ColorMode::Gray => DynamicImage::ImageLuma8(image.to_luma8()),
    }
}

#[cfg(test)]
mod tests {
    use image::{Rgb, RgbImage};
    use proptest::prelude::*;

    use super::*;

    fn noise(w: u32, h: u32, seed: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            let v = (x.wrapping_mul(73) ^ y.wrapping_mul(151) ^ seed).wrapping_mul(2_654_435_761);
            Rgb([(v >> 8) as u8, (v >> 16) as u8, (v >> 24) as u8])
        }))
    }

    #[test]
    fn a_flat_image_stays_flat_under_every_filter() -> Result<()> {
        let flat = DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 30, Rgb([10, 200, 90])));
        for filter in [
            Filter::Nearest,
            Filter::Bilinear,
            Filter::CatmullRom,
            Filter::Mitchell,
            Filter::Lanczos3,
        ] {
            for (w, h) in [(17, 9), (64, 64), (40, 30)] {
                let out = resize(&flat, w, h, filter)?;
                assert_eq!(out.dimensions(), (w, h));
                assert!(out.to_rgb8().pixels().all(|p| *p == Rgb([10, 200, 90])));
            }
        }
        Ok(())
    }

    #[test]
    fn fill_crops_the_overflow_evenly() -> Result<()> {
        // Left half black, right half white, 200 wide: filled into a square
        // the centre column stays the boundary.
        let image = DynamicImage::ImageRgb8(RgbImage::from_fn(200, 100, |x, _| {
            if x < 100 { Rgb([0; 3]) } else { Rgb([255; 3]) }
        }));
        let out = resize_to_fill(&image, 50, 50, Filter::Nearest)?.to_rgb8();
        assert_eq!(out.dimensions(), (50, 50));
        assert_eq!(out.get_pixel(24, 10), &Rgb([0; 3]));
        assert_eq!(out.get_pixel(25, 10), &Rgb([255; 3]));
        Ok(())
    }

    #[test]
    fn fit_keeps_aspect_and_small_images() -> Result<()> {
        let image = noise(300, 100, 1);
        assert_eq!(
            resize_to_fit(&image, 90, 90, Filter::Bilinear)?.dimensions(),
            (90, 30)
        );
        assert_eq!(resize_to_fit(&image, 300, 500, Filter::Bilinear)?, image);
        Ok(())
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        let image = noise(16, 16, 2);
        let bad = |r: Result<DynamicImage>| matches!(r, Err(ImageError::InvalidArgument { .. }));
        assert!(bad(resize(&image, 0, 10, Filter::Lanczos3)));
        assert!(bad(resize(&image, 1 << 15, 1 << 15, Filter::Lanczos3)));
        assert!(bad(upscale(&image, 1.0, Filter::Lanczos3)));
        assert!(bad(upscale(&image, f32::NAN, Filter::Lanczos3)));
        assert!(bad(upscale(&image, 17.0, Filter::Lanczos3)));
        assert!(bad(crop(&image, 10, 0, 7, 4)));
        assert!(bad(crop(&image, u32::MAX, 0, 7, 4)));
        assert!(bad(pad_to_multiple(&image, 0, [0; 4], Anchor::TopLeft)));
    }

    #[test]
    fn upscale_and_convert() -> Result<()> {
        let image = noise(10, 6, 3);
        assert_eq!(
            upscale(&image, 2.5, Filter::Lanczos3)?.dimensions(),
            (25, 15)
        );
        let gray = convert(&image, ColorMode::Gray);
        assert_eq!(gray.color(), image::ColorType::L8);
        assert_eq!(
            convert(&gray, ColorMode::Rgba).color(),
            image::ColorType::Rgba8
        );
        // Grey with alpha and 16-bit images resize too.
        let la = DynamicImage::ImageLumaA8(image.to_luma_alpha8());
        assert_eq!(
            resize(&la, 5, 5, Filter::Bilinear)?.color(),
            image::ColorType::La8
        );
        let wide = DynamicImage::ImageRgb16(image.to_rgb16());
        assert_eq!(
            resize(&wide, 5, 5, Filter::Bilinear)?.color(),
            image::ColorType::Rgb16
        );
        Ok(())
    }

    proptest! {
        #[test]
        fn crop_is_the_source_region(w in 1u32..40, h in 1u32..40, x in 0u32..40, y in 0u32..40,
                                     cw in 1u32..40, ch in 1u32..40) {
            let image = noise(w, h, 4);
            match crop(&image, x, y, cw, ch) {
                Ok(part) => {
                    prop_assert!(x + cw <= w && y + ch <= h);
                    for (px, py, p) in part.pixels() {
                        prop_assert_eq!(p, image.get_pixel(x + px, y + py));
                    }
                }
                Err(_) => prop_assert!(x + cw > w || y + ch > h),
            }
        }

        #[test]
        fn padding_reaches_the_multiple_and_keeps_the_original(
            w in 1u32..50, h in 1u32..50, multiple in 1u32..20, center: bool) {
            let image = noise(w, h, 5);
            let anchor = if center { Anchor::Center } else { Anchor::TopLeft };
            let padded = pad_to_multiple(&image, multiple, [1, 2, 3, 255], anchor)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (pw, ph) = padded.dimensions();
            prop_assert!(pw % multiple == 0 && ph % multiple == 0);
            prop_assert!(pw >= w && pw < w + multiple && ph >= h && ph < h + multiple);
            let (dx, dy) = if center { ((pw - w) / 2, (ph - h) / 2) } else { (0, 0) };
            for (x, y, p) in image.pixels() {
                prop_assert_eq!(p, padded.get_pixel(x + dx, y + dy));
            }
            if pw > w {
                let edge = if center && dx > 0 { 0 } else { pw - 1 };
                prop_assert_eq!(padded.get_pixel(edge, 0), image::Rgba([1, 2, 3, 255]));
            }
        }

        #[test]
        fn resize_gives_the_requested_size(w in 1u32..64, h in 1u32..64,
                                           tw in 1u32..64, th in 1u32..64) {
            let out = resize(&noise(w, h, 6), tw, th, Filter::CatmullRom)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(out.dimensions(), (tw, th));
        }
    }
}
