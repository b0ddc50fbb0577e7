//! Arbitrary bytes through the engine's image loading: a decoded image or a
//! typed error within small limits, never a panic or a large allocation.
//! A decoded image also goes through the operations a request may ask for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_image::{Anchor, Filter, ImageFormat, ImageLimits};

fuzz_target!(|data: &[u8]| {
    let limits = ImageLimits {
        max_bytes: 1 << 20,
        max_side: 2048,
        max_pixels: 1 << 20,
        max_alloc: 16 << 20,
    };
    let Ok(image) = switchyard_image::decode(data, &limits) else {
        return;
    };
    assert!(u64::from(image.width()) * u64::from(image.height()) <= limits.max_pixels);
    let side = data.first().map_or(1, |b| u32::from(*b % 31) + 1);
    let _ = switchyard_image::resize(&image, side, side + 3, Filter::Lanczos3);
    let _ = switchyard_image::pad_to_multiple(&image, 8, [0, 0, 0, 255], Anchor::Center);
    let _ = switchyard_image::crop(&image, side, 1, side, side);
    let _ = switchyard_image::encode(&image, ImageFormat::Png);
});
