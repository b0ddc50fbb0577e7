//! GGUF block formats: their sizes, and decoding one block into integer
//! values with a scale and an offset per sub-block.
//!
//! Every supported format can be written, per sub-block of 16 or 32 weights,
//! as `w = d * q + m` with small integers `q`. That common form is what the
//! repacked matrices keep, and [`dequantize`] is built on the same decoding.

use half::f16;

use crate::{KernelError, Result};

/// A GGUF quantized block format (the `ggml_type` of a tensor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuantFormat {
    /// 32 weights: f16 scale, 4-bit values centred on 8.
    Q4_0,
    /// 32 weights: f16 scale and minimum, 4-bit values.
    Q4_1,
    /// 32 weights: f16 scale, 5-bit values centred on 16.
    Q5_0,
    /// 32 weights: f16 scale and minimum, 5-bit values.
    Q5_1,
    /// 32 weights: f16 scale, signed 8-bit values.
    Q8_0,
    /// 256 weights: 8 sub-blocks of 32 with 6-bit scales and minimums, 4-bit values.
    Q4K,
    /// 256 weights: 8 sub-blocks of 32 with 6-bit scales and minimums, 5-bit values.
    Q5K,
    /// 256 weights: 16 sub-blocks of 16 with 8-bit scales, 6-bit values centred on 32.
    Q6K,
}

/// How a format's integer values are stored once repacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueKind {
    /// Unsigned values 0..=15, two per byte.
    Nibble,
    /// Signed 8-bit values, one per byte.
    Byte,
}

impl QuantFormat {
    /// Every format, in GGUF type-id order.
    pub const ALL: [QuantFormat; 8] = [
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q5_0,
        QuantFormat::Q5_1,
        QuantFormat::Q8_0,
        QuantFormat::Q4K,
        QuantFormat::Q5K,
        QuantFormat::Q6K,
    ];

    /// The format with GGUF type id `id` (`ggml_type`), if supported.
    pub fn from_gguf_type(id: u32) -> Option<Self> {
        Some(match id {
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            _ => return None,
        })
    }

    /// The GGUF type id (`ggml_type`) of this format.
    pub fn gguf_type(self) -> u32 {
        match self {
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
        }
    }

    /// Weights per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Bytes of one row of `cols` weights, or an error when `cols` is not a
    /// whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        if cols == 0 || !cols.is_multiple_of(self.block_len()) {
            return Err(KernelError::BadShape {
                format: self,
                cols,
                reason: format!(
                    "columns must be a positive multiple of {}",
                    self.block_len()
                ),
            });
        }
        Ok(cols / self.block_len() * self.block_bytes())
    }

    /// Weights per sub-block (one scale and offset each).
    pub(crate) fn sub_len(self) -> usize {
        match self {
            Self::Q6K => 16,
            _ => 32,
        }
    }

    /// How values are stored after repacking.
    pub(crate) fn value_kind(self) -> ValueKind {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q4K => ValueKind::Nibble,
            _ => ValueKind::Byte,
        }
    }

    /// Whether the offset `m` can be non-zero.
    pub(crate) fn has_offset(self) -> bool {
        !matches!(self, Self::Q8_0 | Self::Q5_0 | Self::Q6K)
    }

    /// Whether the repacked scales are kept as f16 (exact for formats whose
    /// scales are f16 in the file) rather than f32 (K-quants, whose scales
    /// are products of an f16 and a small integer).
    pub(crate) fn f16_scales(self) -> bool {
        !matches!(self, Self::Q4K | Self::Q5K | Self::Q6K)
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        };
        f.write_str(name)
    }
}

/// One sub-block decoded: `w[i] = d * q[i] + m`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubBlock {
    /// Scale.
    pub(crate) d: f32,
    /// Offset.
    pub(crate) m: f32,
    /// Integer values (the first `sub_len` are used).
    pub(crate) q: [i8; 32],
}

fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K block.
fn k_scale_min(scales: &[u8], j: usize) -> (f32, f32) {
    if j < 4 {
        ((scales[j] & 63) as f32, (scales[j + 4] & 63) as f32)
    } else {
        let sc = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
        let m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (sc as f32, m as f32)
    }
}

/// Decodes one block (`block.len() == format.block_bytes()`) into its
/// sub-blocks, calling `emit` once per sub-block in order.
pub(crate) fn decode_block(format: QuantFormat, block: &[u8], mut emit: impl FnMut(SubBlock)) {
    let mut q = [0i8; 32];
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
            let d = half_at(block, 0);
            let (m, qs) = if format == QuantFormat::Q4_0 {
                (-8.0 * d, &block[2..18])
            } else {
                (half_at(block, 2), &block[4..20])
            };
            for (j, &b) in qs.iter().enumerate() {
                q[j] = (b & 0x0F) as i8;
                q[j + 16] = (b >> 4) as i8;
            }
            emit(SubBlock { d, m, q });
        }
        QuantFormat::Q5_0 | QuantFormat::Q5_1 => {
            let d = half_at(block, 0);
            let (m, rest) = if format == QuantFormat::Q5_0 {
                (0.0, &block[2..22])
            } else {
                (half_at(block, 2), &block[4..24])
            };
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let centre = if format == QuantFormat::Q5_0 { 16 } else { 0 };
            for (j, &b) in rest[4..20].iter().enumerate() {
                let h0 = ((qh >> j) & 1) as u8;
                let h1 = ((qh >> (j + 16)) & 1) as u8;
                q[j] = ((b & 0x0F) | (h0 << 4)) as i8 - centre;
                q[j + 16] = ((b >> 4) | (h1 << 4)) as i8 - centre;
            }
            emit(SubBlock { d, m, q });
        }
        QuantFormat::Q8_0 => {
            let d = half_at(block, 0);
            for (j, &b) in block[2..34].iter().enumerate() {
                q[j] = b as i8;
            }
            emit(SubBlock { d, m: 0.0, q });
        }
        QuantFormat::Q4K | QuantFormat::Q5K => {
            let d = half_at(block, 0);
            let dmin = half_at(block, 2);
            let scales = &block[4..16];
            let (qh, qs) = if format == QuantFormat::Q4K {
                (None, &block[16..144])
            } else {
                (Some(&block[16..48]), &block[48..176])
            };
            for j in 0..8 {
                let (sc, mn) = k_scale_min(scales, j);
                let bytes = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
                for l in 0..32 {
                    let low = if j % 2 == 0 {
                        bytes[l] & 0x0F
                    } else {
                        bytes[l] >> 4
                    };
                    let high = qh.map_or(0, |h| (h[l] >> j) & 1);
                    q[l] = (low | (high << 4)) as i8;
                }
                emit(SubBlock {
                    d: d * sc,
                    m: -(dmin * mn),
                    q,
                });
            }
        }
        QuantFormat::Q6K => {
            let ql = &block[0..128];
            let qh = &block[128..192];
            let scales = &block[192..208];
            let d = half_at(block, 208);
            // Values in file order: two halves of 128, each four runs of 32.
            let mut values = [0i8; 256];
            for half in 0..2 {
                let (ql, qh) = (&ql[half * 64..], &qh[half * 32..]);
                let out = &mut values[half * 128..];
                for l in 0..32 {
                    let hi = |shift: u32| ((qh[l] >> shift) & 3) << 4;
                    out[l] = ((ql[l] & 0x0F) | hi(0)) as i8 - 32;
                    out[l + 32] = ((ql[l + 32] & 0x0F) | hi(2)) as i8 - 32;
                    out[l + 64] = ((ql[l] >> 4) | hi(4)) as i8 - 32;
                    out[l + 96] = ((ql[l + 32] >> 4) | hi(6)) as i8 - 32;
                }
            }
            for (j, &sc) in scales.iter().enumerate() {
                q[..16].copy_from_slice(&values[j * 16..j * 16 + 16]);
                emit(SubBlock {
                    d: d * (sc as i8) as f32,
                    m: 0.0,
                    q,
                });
            }
        }
    }
}

/// Dequantizes `data` (whole blocks of `format`) to f32, appending to `out`.
///
/// # Errors
/// [`KernelError::BadData`] when `data` is not a whole number of blocks.
pub fn dequantize(format: QuantFormat, data: &[u8], out: &mut Vec<f32>) -> Result<()> {
    let bytes = format.block_bytes();
    if !data.len().is_multiple_of(bytes) {
        return Err(KernelError::BadData {
            format,
            reason: format!(
                "{} bytes is not a whole number of {bytes}-byte blocks",
                data.len()
            ),
        });
    }
    let sub = format.sub_len();
    out.reserve(data.len() / bytes * format.block_len());
    for block in data.chunks_exact(bytes) {
        decode_block(format, block, |s| {
            out.extend(s.q[..sub].iter().map(|&q| s.d * q as f32 + s.m));
        });
    }
    Ok(())
}
