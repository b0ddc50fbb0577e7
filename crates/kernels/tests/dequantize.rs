//! Our block decoding against candle's, for every format and random blocks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{any_format, candle_dequantize, random_blocks};
use proptest::prelude::*;
use switchyard_kernels::{KernelError, PackedMatrix, QuantFormat, dequantize};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dequantize_matches_candle(format in any_format(), rows in 1usize..12, blocks in 1usize..4, seed: u64) {
        let cols = blocks * format.block_len();
        let data = random_blocks(format, rows * blocks, seed);
        let want = candle_dequantize(format, rows, cols, &data);
        let mut got = Vec::new();
        dequantize(format, &data, &mut got).expect("dequantize");
        prop_assert_eq!(&got, &want);

        // The repacked matrix gives back every row exactly.
        let packed = PackedMatrix::from_gguf(format, rows, cols, &data).expect("pack");
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            packed.dequantize_row(r, &mut row).expect("row");
            prop_assert_eq!(&row[..], &want[r * cols..(r + 1) * cols], "row {}", r);
        }
    }
}

#[test]
fn gguf_type_ids_round_trip() {
    for format in QuantFormat::ALL {
        assert_eq!(
            QuantFormat::from_gguf_type(format.gguf_type()),
            Some(format)
        );
    }
    assert_eq!(
        QuantFormat::from_gguf_type(0),
        None,
        "F32 is not a block format"
    );
}

#[test]
fn bad_shapes_and_lengths_are_typed_errors() {
    let q = QuantFormat::Q4_0;
    assert!(matches!(
        PackedMatrix::from_gguf(q, 2, 48, &[0; 36]),
        Err(KernelError::BadShape { .. })
    ));
    assert!(matches!(
        PackedMatrix::from_gguf(q, 0, 32, &[]),
        Err(KernelError::BadShape { .. })
    ));
    assert!(matches!(
        PackedMatrix::from_gguf(q, 2, 32, &[0; 35]),
        Err(KernelError::BadData { .. })
    ));
    assert!(matches!(
        PackedMatrix::from_gguf(QuantFormat::Q4K, 1, 32, &[0; 18]),
        Err(KernelError::BadShape { .. })
    ));
    let mut out = Vec::new();
    assert!(matches!(
        dequantize(q, &[0; 19], &mut out),
        Err(KernelError::BadData { .. })
    ));
    let w = PackedMatrix::from_gguf(q, 2, 32, &[0; 36]).expect("pack");
    let mut row = [0f32; 32];
    assert!(matches!(
        w.dequantize_row(2, &mut row),
        Err(KernelError::OutOfRange { index: 2, len: 2 })
    ));
    assert!(matches!(
        w.dequantize_row(0, &mut row[..31]),
        Err(KernelError::ShapeMismatch { .. })
    ));
}

#[test]
fn stacking_keeps_every_row() {
    let format = QuantFormat::Q4_1;
    let (a_data, b_data) = (random_blocks(format, 16, 1), random_blocks(format, 3, 2));
    let a = PackedMatrix::from_gguf(format, 16, 32, &a_data).unwrap();
    let b = PackedMatrix::from_gguf(format, 3, 32, &b_data).unwrap();
    let both = PackedMatrix::stack(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(both.rows(), 19);
    let (mut got, mut want) = ([0f32; 32], [0f32; 32]);
    for r in 0..19 {
        both.dequantize_row(r, &mut got).unwrap();
        if r < 16 {
            a.dequantize_row(r, &mut want)
        } else {
            b.dequantize_row(r - 16, &mut want)
        }
        .unwrap();
        assert_eq!(got, want, "row {r}");
    }
    // A padded part cannot be followed by another; formats must agree.
    assert!(matches!(
        PackedMatrix::stack(&[b.clone(), a.clone()]),
        Err(KernelError::BadShape { .. })
    ));
    let q8 = PackedMatrix::from_gguf(
        QuantFormat::Q8_0,
        3,
        32,
        &random_blocks(QuantFormat::Q8_0, 3, 3),
    )
    .unwrap();
    assert!(matches!(
        PackedMatrix::stack(&[a, q8]),
        Err(KernelError::BadShape { .. })
    ));
    assert!(matches!(
        PackedMatrix::stack(&[]),
        Err(KernelError::BadShape { .. })
    ));
}
