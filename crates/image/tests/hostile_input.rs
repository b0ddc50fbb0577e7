//! Hostile files: decompression bombs and damaged bytes get typed errors
//! without the memory they ask for.

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use switchyard_image::{ImageError, ImageFormat, ImageLimits, decode};

/// A real PNG of `side` x `side` black grey pixels: a few kilobytes that
/// inflate to `side * side` bytes.
fn bomb(side: u32) -> Vec<u8> {
    let pixels = vec![0u8; (side * side) as usize];
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::NoFilter)
        .write_image(&pixels, side, side, ExtendedColorType::L8)
        .expect("encoding zeros cannot fail");
    out
}

#[test]
fn a_bomb_over_the_pixel_limit_is_refused_from_its_header() {
    let file = bomb(7000);
    assert!(file.len() < 200_000, "{} bytes", file.len());
    match decode(&file, &ImageLimits::default()) {
        Err(ImageError::TooLarge { width, height, .. }) => {
            assert_eq!((width, height), (7000, 7000))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn a_bomb_inside_the_pixel_limit_is_held_to_the_allocation_limit() {
    let file = bomb(3000);
    let limits = ImageLimits {
        max_alloc: 4 << 20,
        ..ImageLimits::default()
    };
    assert!(matches!(
        decode(&file, &limits),
        Err(ImageError::TooLarge { .. })
    ));
    // The same file under the default limits is an ordinary image.
    let image = decode(&file, &ImageLimits::default()).expect("9 MB fits the defaults");
    assert_eq!((image.width(), image.height()), (3000, 3000));
}

#[test]
fn damaged_files_of_every_format_are_corrupt_not_panics() {
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(24, 16, |x, y| {
        image::Rgb([x as u8 * 10, y as u8 * 15, 99])
    }));
    for format in [
        ImageFormat::Png,
        ImageFormat::Jpeg { quality: 80 },
        ImageFormat::WebP,
    ] {
        let good = switchyard_image::encode(&image, format).expect("encode");
        // Truncated: PNG and WebP refuse; JPEG decoders (like browsers)
        // may fill the missing tail with grey, so only the header cut fails.
        for cut in (8..good.len()).step_by(good.len() / 7 + 1) {
            let result = decode(&good[..cut], &ImageLimits::default());
            let lenient = matches!(format, ImageFormat::Jpeg { .. }) && cut > 200;
            assert!(
                result.is_err() || lenient,
                "{format:?} cut at {cut} decoded"
            );
        }
        let mut flipped = good.clone();
        for i in (16..flipped.len()).step_by(5) {
            flipped[i] ^= 0x5a;
        }
        match decode(&flipped, &ImageLimits::default()) {
            Ok(_)
            | Err(
                ImageError::Corrupt(_) | ImageError::TooLarge { .. } | ImageError::Unsupported(_),
            ) => {}
            Err(other) => panic!("{format:?}: unexpected error {other:?}"),
        }
    }
}
