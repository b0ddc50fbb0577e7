//! [`PackedMatrix`]: a GGUF weight matrix repacked once, at load time, into
//! the interleaved layout the kernels read.
//!
//! Output columns (the matrix's rows) are taken eight at a time, a *group*.
//! For each group and each sub-block of 16 or 32 weights there is one
//! *record*, and a group's records follow each other in memory so a thread
//! streams a group front to back:
//!
//! ```text
//! record = d[8] | m[8] (formats with an offset) | wsum[8] (8-bit values) | values
//! ```
//!
//! `d` and `m` are f16 for formats whose scales are f16 in the file (exact)
//! and f32 for K-quants; `wsum` is each column's sum of values (i16), which
//! lets the VNNI path multiply unsigned activations by signed weights.
//! Values come in 32-byte vectors: byte `4c + t` of a vector holds column
//! `c`'s value at position `4p + t` of the sub-block for the vector's quad
//! `p`, so one 4-byte broadcast of the activation feeds all eight columns.
//! 4-bit values pack two quads per vector (low nibbles quad `2p`, high
//! nibbles quad `2p + 1`).

use half::f16;

use crate::format::{SubBlock, ValueKind, decode_block};
use crate::{KernelError, QuantFormat, Result};

/// Output columns per group.
pub(crate) const GROUP: usize = 8;

/// Calls `$gemm::<$dot, NIB, SUB, OFF, H>($args)` with the compile-time
/// record shape of `$format` (4-bit values, weights per sub-block, an
/// offset, f16 scales): the one place the SIMD paths learn it, matching
/// [`RecordLayout::of`].
macro_rules! with_record_shape {
    ($format:expr, $gemm:ident::<$dot:ty>($($arg:expr),* $(,)?)) => {{
        use $crate::QuantFormat as F;
        match $format {
            F::Q4_0 | F::Q4_1 => $gemm::<$dot, true, 32, true, true>($($arg),*),
            F::Q4K => $gemm::<$dot, true, 32, true, false>($($arg),*),
            F::Q8_0 | F::Q5_0 => $gemm::<$dot, false, 32, false, true>($($arg),*),
            F::Q5_1 => $gemm::<$dot, false, 32, true, true>($($arg),*),
            F::Q5K => $gemm::<$dot, false, 32, true, false>($($arg),*),
            F::Q6K => $gemm::<$dot, false, 16, false, false>($($arg),*),
        }
    }};
}
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(unused_imports)
)]
pub(crate) use with_record_shape;

/// Byte offsets inside one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordLayout {
    /// Weights per sub-block (16 or 32).
    pub(crate) sub: usize,
    /// Value storage.
    pub(crate) kind: ValueKind,
    /// Scales stored as f16 (else f32).
    pub(crate) f16_scales: bool,
    /// Whether `m` is stored.
    pub(crate) has_offset: bool,
    /// Offset of `m`.
    pub(crate) m_at: usize,
    /// Offset of `wsum`.
    pub(crate) wsum_at: usize,
    /// Offset of the values.
    pub(crate) q_at: usize,
    /// Bytes per record.
    pub(crate) bytes: usize,
}

impl RecordLayout {
    pub(crate) fn of(format: QuantFormat) -> Self {
        let sub = format.sub_len();
        let kind = format.value_kind();
        let f16_scales = format.f16_scales();
        let has_offset = format.has_offset();
        let scale_bytes = if f16_scales { 2 * GROUP } else { 4 * GROUP };
        let m_at = scale_bytes;
        let wsum_at = m_at + if has_offset { scale_bytes } else { 0 };
        let q_at = wsum_at
            + if kind == ValueKind::Byte {
                2 * GROUP
            } else {
                0
            };
        let q_bytes = match kind {
            ValueKind::Nibble => sub * GROUP / 2,
            ValueKind::Byte => sub * GROUP,
        };
        Self {
            sub,
            kind,
            f16_scales,
            has_offset,
            m_at,
            wsum_at,
            q_at,
            bytes: q_at + q_bytes,
        }
    }

    fn put_scale(&self, rec: &mut [u8], at: usize, c: usize, v: f32) {
        if self.f16_scales {
            rec[at + 2 * c..at + 2 * c + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        } else {
            rec[at + 4 * c..at + 4 * c + 4].copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Scale `which` (0: d, 1: m) of column `c` in `rec`.
    pub(crate) fn scale(&self, rec: &[u8], which: usize, c: usize) -> f32 {
        if which == 1 && !self.has_offset {
            return 0.0;
        }
        let at = if which == 0 { 0 } else { self.m_at };
        if self.f16_scales {
            f16::from_le_bytes([rec[at + 2 * c], rec[at + 2 * c + 1]]).to_f32()
        } else {
            let b = &rec[at + 4 * c..at + 4 * c + 4];
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    }

    /// Value `i` (0..sub) of column `c` in `rec`.
    pub(crate) fn value(&self, rec: &[u8], c: usize, i: usize) -> i32 {
        let (quad, t) = (i / 4, i % 4);
        match self.kind {
            ValueKind::Nibble => {
                let b = rec[self.q_at + (quad / 2) * 32 + 4 * c + t];
                i32::from(if quad % 2 == 0 { b & 0x0F } else { b >> 4 })
            }
            ValueKind::Byte => i32::from(rec[self.q_at + quad * 32 + 4 * c + t] as i8),
        }
    }

    fn write(&self, rec: &mut [u8], c: usize, s: &SubBlock) {
        self.put_scale(rec, 0, c, s.d);
        if self.has_offset {
            self.put_scale(rec, self.m_at, c, s.m);
        }
        let values = &s.q[..self.sub];
        if self.kind == ValueKind::Byte {
            let wsum: i32 = values.iter().map(|&q| i32::from(q)).sum();
            let at = self.wsum_at + 2 * c;
            rec[at..at + 2].copy_from_slice(&(wsum as i16).to_le_bytes());
        }
        for (i, &q) in values.iter().enumerate() {
            let (quad, t) = (i / 4, i % 4);
            match self.kind {
                ValueKind::Nibble => {
                    let at = self.q_at + (quad / 2) * 32 + 4 * c + t;
                    rec[at] |= if quad % 2 == 0 {
                        q as u8 & 0x0F
                    } else {
                        (q as u8) << 4
                    };
                }
                ValueKind::Byte => rec[self.q_at + quad * 32 + 4 * c + t] = q as u8,
            }
        }
    }
}

/// A quantized weight matrix (`rows` output features x `cols` inputs, as
/// GGUF stores a linear layer) repacked for the kernels.
#[derive(Clone)]
pub struct PackedMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    layout: RecordLayout,
    data: Vec<u8>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl PackedMatrix {
    /// Panics unless `x` has this matrix's columns and `groups` lies
    /// within its groups: the SIMD kernels' precondition, which the
    /// dispatcher has checked already.
    pub(crate) fn assert_fits(&self, x: &crate::QuantizedRows, groups: &std::ops::Range<usize>) {
        assert!(
            x.cols() == self.cols() && groups.end <= self.groups(),
            "kernel called with bad shapes"
        );
    }

    /// Repacks `data`, the bytes of a GGUF tensor of `format` with `rows`
    /// rows of `cols` weights each (row-major, as stored in the file).
    ///
    /// # Errors
    /// [`KernelError::BadShape`] when `cols` is not a positive multiple of
    /// the block length or `rows` is zero; [`KernelError::BadData`] when
    /// `data` has the wrong length.
    pub fn from_gguf(format: QuantFormat, rows: usize, cols: usize, data: &[u8]) -> Result<Self> {
        let row_bytes = format.row_bytes(cols)?;
        if rows == 0 {
            return Err(KernelError::BadShape {
                format,
                cols,
                reason: "no rows".into(),
            });
        }
        let want = rows
            .checked_mul(row_bytes)
            .ok_or_else(|| KernelError::BadShape {
                format,
                cols,
                reason: format!("{rows} rows overflow the address space"),
            })?;
        if data.len() != want {
            return Err(KernelError::BadData {
                format,
                reason: format!("{rows}x{cols} needs {want} bytes, got {}", data.len()),
            });
        }
        let layout = RecordLayout::of(format);
        let subs = cols / layout.sub;
        let groups = rows.div_ceil(GROUP);
        let mut packed = vec![0u8; groups * subs * layout.bytes];
        for (r, row) in data.chunks_exact(row_bytes).enumerate() {
            let (g, c) = (r / GROUP, r % GROUP);
            let group = &mut packed[g * subs * layout.bytes..(g + 1) * subs * layout.bytes];
            let mut s = 0;
            for block in row.chunks_exact(format.block_bytes()) {
                decode_block(format, block, |sub| {
                    layout.write(
                        &mut group[s * layout.bytes..(s + 1) * layout.bytes],
                        c,
                        &sub,
                    );
                    s += 1;
                });
            }
        }
        Ok(Self {
            format,
            rows,
            cols,
            layout,
            data: packed,
        })
    }

    /// One matrix whose rows are `parts`' rows in order (for example a
    /// layer's gate and up projections, multiplied in one pass).
    ///
    /// # Errors
    /// [`KernelError::BadShape`] when `parts` is empty, when formats or
    /// column counts differ, or when a part other than the last has a row
    /// count that is not a multiple of eight (its last group would be
    /// padded).
    pub fn stack(parts: &[PackedMatrix]) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(KernelError::BadShape {
                format: QuantFormat::Q8_0,
                cols: 0,
                reason: "nothing to stack".into(),
            });
        };
        let bad = |reason: String| KernelError::BadShape {
            format: first.format,
            cols: first.cols,
            reason,
        };
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        let mut rows = 0;
        for (i, p) in parts.iter().enumerate() {
            if p.format != first.format || p.cols != first.cols {
                return Err(bad(format!(
                    "part {i} is {} with {} columns",
                    p.format, p.cols
                )));
            }
            if i + 1 < parts.len() && !p.rows.is_multiple_of(GROUP) {
                return Err(bad(format!(
                    "part {i} has {} rows, not a multiple of {GROUP}",
                    p.rows
                )));
            }
            rows += p.rows;
            data.extend_from_slice(&p.data);
        }
        Ok(Self {
            format: first.format,
            rows,
            cols: first.cols,
            layout: first.layout,
            data,
        })
    }

    /// The block format the weights came in.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Output features (rows of the GGUF tensor).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (weights per row).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held by the repacked weights.
    pub fn size_in_bytes(&self) -> usize {
        self.data.len()
    }

    /// Number of eight-column groups.
    pub(crate) fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    /// Sub-blocks per column.
    pub(crate) fn subs(&self) -> usize {
        self.cols / self.layout.sub
    }

    pub(crate) fn layout(&self) -> &RecordLayout {
        &self.layout
    }

    /// The records of group `g`, front to back.
    pub(crate) fn group(&self, g: usize) -> &[u8] {
        let len = self.subs() * self.layout.bytes;
        &self.data[g * len..(g + 1) * len]
    }

    /// Dequantizes row `row` (one output feature; for an embedding table,
    /// one token's vector) into `out` (`cols` long).
    ///
    /// # Errors
    /// [`KernelError::OutOfRange`] for a row past the end;
    /// [`KernelError::ShapeMismatch`] when `out` is not `cols` long.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()> {
        if row >= self.rows {
            return Err(KernelError::OutOfRange {
                index: row,
                len: self.rows,
            });
        }
        if out.len() != self.cols {
            return Err(KernelError::ShapeMismatch {
                expected: self.cols,
                got: out.len(),
            });
        }
        let l = &self.layout;
        let c = row % GROUP;
        for (s, rec) in self.group(row / GROUP).chunks_exact(l.bytes).enumerate() {
            let (d, m) = (l.scale(rec, 0, c), l.scale(rec, 1, c));
            for (i, o) in out[s * l.sub..(s + 1) * l.sub].iter_mut().enumerate() {
                *o = d * l.value(rec, c, i) as f32 + m;
            }
        }
        Ok(())
    }
}
