//! The portable path: the reference every SIMD path must match exactly.
//!
//! It reads the same repacked records as the SIMD paths and performs the same
//! floating-point operations in the same order (one fused multiply-add per
//! sub-block and column, then one for the offset), so results agree bit for
//! bit; the integer dot products are exact in every path.

use std::ops::Range;

use crate::activations::{QBLOCK, QuantizedRows};
use crate::out::OutView;
use crate::packed::{GROUP, PackedMatrix};

/// Computes output groups `groups` for every row of `x`.
pub(crate) fn gemm_groups(
    w: &PackedMatrix,
    x: &QuantizedRows,
    groups: Range<usize>,
    out: &OutView<'_>,
) {
    let l = w.layout();
    let k = x.cols();
    let xblocks = k / QBLOCK;
    for g in groups {
        let group = w.group(g);
        for r in 0..x.rows() {
            let xq = &x.q[r * k..(r + 1) * k];
            let mut acc = [0f32; GROUP];
            for (s, rec) in group.chunks_exact(l.bytes).enumerate() {
                let xs = &xq[s * l.sub..(s + 1) * l.sub];
                let xb = r * xblocks + s * l.sub / QBLOCK;
                let (dx, sx) = (x.d[xb], x.s[xb]);
                for (c, a) in acc.iter_mut().enumerate() {
                    let dot: i32 = xs
                        .iter()
                        .enumerate()
                        .map(|(i, &q)| l.value(rec, c, i) * i32::from(q))
                        .sum();
                    *a = (dot as f32).mul_add(l.scale(rec, 0, c) * dx, *a);
                    if l.has_offset {
                        *a = l.scale(rec, 1, c).mul_add(sx, *a);
                    }
                }
            }
            out.write_group(r, g, &acc);
        }
    }
}
