//! The forward pass on the CPU in f32 when every matrix runs through
//! switchyard-kernels: the whole layer stack works on plain slices (norms,
//! rotary embeddings, cache writes, attention, residuals), with no candle
//! ops between the kernel calls. At decode a candle op's fixed cost is of
//! the order of the work it does, and a layer had a dozen of them.

use candle_core::Device;
use switchyard_kernels::{PackedMatrix, rms_norm};

use super::attention_cpu::{self, Heads, SeqQueries};
use super::config::LlamaConfig;
use super::kv_cache::PagedKvCache;
use super::linear::{Mlp, MlpBuffers, Qkv, fused_mlp_into, run_packed_into};
use super::weights::{ModelWeights, RopeStyle};

/// One sequence's rows in a step.
#[derive(Debug)]
pub(crate) struct SeqRows {
    /// First row of the sequence in the step's batch.
    pub(crate) row: usize,
    /// Rows (new tokens).
    pub(crate) len: usize,
    /// Cache slots of positions `0..start + len`.
    pub(crate) slots: Vec<u32>,
}

/// One layer's norm weights as host vectors.
#[derive(Debug)]
struct HostLayer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
}

/// The norm weights as host vectors, present when the model qualifies for
/// the host path (CPU, f32, every projection fused in the kernels).
#[derive(Debug)]
pub(crate) struct HostWeights {
    layers: Vec<HostLayer>,
    norm: Vec<f32>,
}

/// The parts of a layer the host path runs.
struct LayerMats<'a> {
    qkv: &'a PackedMatrix,
    q_out: usize,
    k_out: usize,
    o: &'a PackedMatrix,
    gate_up: &'a PackedMatrix,
    down: &'a PackedMatrix,
}

fn layer_mats(w: &super::weights::LayerWeights) -> Option<LayerMats<'_>> {
    let Qkv::Fused { qkv, q_out, k_out } = &w.qkv else {
        return None;
    };
    let Mlp::Fused { gate_up, down } = &w.mlp else {
        return None;
    };
    Some(LayerMats {
        qkv,
        q_out: *q_out,
        k_out: *k_out,
        o: w.o.packed()?,
        gate_up,
        down,
    })
}

impl HostWeights {
    /// The host copy of the norms when `weights` on `device` qualify.
    pub(crate) fn new(
        weights: &ModelWeights,
        device: &Device,
    ) -> candle_core::Result<Option<Self>> {
        let qualifies = device.is_cpu()
            && weights.dtype == candle_core::DType::F32
            && weights.head.packed().is_some()
            && weights.layers.iter().all(|l| layer_mats(l).is_some());
        if !qualifies {
            return Ok(None);
        }
        let vec = |t: &candle_core::Tensor| t.flatten_all()?.to_vec1::<f32>();
        let layers = weights
            .layers
            .iter()
            .map(|l| {
                Ok(HostLayer {
                    attn_norm: vec(&l.attn_norm)?,
                    ffn_norm: vec(&l.ffn_norm)?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Some(Self {
            layers,
            norm: vec(&weights.norm)?,
        }))
    }
}

/// Rotates every head of one row (`heads * head_dim` values) in place by
/// the angles whose cosines and sines are `cos`, `sin` (`head_dim / 2`).
/// The style is matched once per call and every loop runs over zipped
/// slices, so the rotations vectorise.
fn rope(row: &mut [f32], head_dim: usize, style: RopeStyle, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    let rotate = |x0: f32, x1: f32, c: f32, s: f32| (x0 * c - x1 * s, x0 * s + x1 * c);
    for head in row.chunks_exact_mut(head_dim) {
        match style {
            RopeStyle::Interleaved => {
                let pairs = head.as_chunks_mut::<2>().0;
                for ((p, &c), &s) in pairs.iter_mut().zip(cos).zip(sin) {
                    let (a, b) = rotate(p[0], p[1], c, s);
                    *p = [a, b];
                }
            }
            RopeStyle::Halves => {
                let (lo, hi) = head[..2 * half].split_at_mut(half);
                for (((x0, x1), &c), &s) in lo.iter_mut().zip(hi).zip(cos).zip(sin) {
                    (*x0, *x1) = rotate(*x0, *x1, c, s);
                }
            }
        }
    }
}

/// What one step runs over.
pub(crate) struct HostStep<'a> {
    /// Position of every row.
    pub(crate) positions: &'a [u32],
    /// The cache slot every row writes.
    pub(crate) write_slots: &'a [u32],
    /// The sequences' rows.
    pub(crate) seqs: &'a [SeqRows],
    /// Rows whose logits are returned, in order.
    pub(crate) wanted: &'a [usize],
}

/// A model the host path can run.
pub(crate) struct HostModel<'a> {
    pub(crate) config: &'a LlamaConfig,
    pub(crate) weights: &'a ModelWeights,
    pub(crate) host: &'a HostWeights,
    pub(crate) inv_freq: &'a [f32],
}

fn wrap(e: switchyard_kernels::KernelError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

impl HostModel<'_> {
    /// Runs the layers over `x` (`[rows, hidden]` embeddings), writing keys
    /// and values into `cache` (host storage), and leaves the logits of the
    /// wanted rows in `logits` (resized to `[wanted, vocab]`); `false` when
    /// `stop` said so before a layer (see
    /// [`LlamaModel::forward_unless`](super::LlamaModel::forward_unless)).
    pub(crate) fn forward(
        &self,
        mut x: Vec<f32>,
        cache: &mut PagedKvCache,
        step: &HostStep<'_>,
        stop: &(dyn Fn() -> bool + Sync),
        logits: &mut Vec<f32>,
    ) -> candle_core::Result<bool> {
        let c = self.config;
        let n = step.positions.len();
        let (hid, hd) = (c.hidden, c.head_dim);
        let eps = c.rms_eps as f32;
        let half = hd / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
        for &p in step.positions {
            for &f in self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let mut h = vec![0f32; n * hid];
        // Every layer's buffers have the same shapes: made once a step, they
        // are neither reallocated nor cleared after the first layer.
        let (mut all, mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut attn, mut o, mut mlp) = (Vec::new(), Vec::new(), MlpBuffers::default());
        let seqs: Vec<SeqQueries<'_>> = step
            .seqs
            .iter()
            .map(|s| SeqQueries {
                row: s.row,
                len: s.len,
                slots: &s.slots,
            })
            .collect();
        let heads = Heads {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: hd,
        };
        for (l, (lw, norms)) in self
            .weights
            .layers
            .iter()
            .zip(&self.host.layers)
            .enumerate()
        {
            if stop() {
                return Ok(false);
            }
            let Some(m) = layer_mats(lw) else {
                candle_core::bail!("layer {l} is not fused for the host path");
            };
            rms_norm(&x, &norms.attn_norm, eps, &mut h).map_err(wrap)?;
            run_packed_into(m.qkv, &h, n, &mut all).map_err(wrap)?;
            let width = m.qkv.rows();
            let kv_w = m.k_out;
            q.clear();
            k.clear();
            v.clear();
            for (r, row) in all.chunks_exact(width).enumerate() {
                let (rq, rest) = row.split_at(m.q_out);
                let (rk, rv) = rest.split_at(kv_w);
                let at = q.len();
                q.extend_from_slice(rq);
                let (cs, sn) = (&cos[r * half..][..half], &sin[r * half..][..half]);
                rope(&mut q[at..], hd, self.weights.rope, cs, sn);
                let at = k.len();
                k.extend_from_slice(rk);
                rope(&mut k[at..], hd, self.weights.rope, cs, sn);
                v.extend_from_slice(rv);
            }
            cache.write_rows(l, step.write_slots, &k, &v)?;
            let Some(kv) = cache.host_layer(l) else {
                candle_core::bail!("the host path needs host kv storage");
            };
            attention_cpu::attend_host_into(&heads, &q, &seqs, kv, &mut attn).map_err(wrap)?;
            run_packed_into(m.o, &attn, n, &mut o).map_err(wrap)?;
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            rms_norm(&x, &norms.ffn_norm, eps, &mut h).map_err(wrap)?;
            fused_mlp_into(m.gate_up, m.down, &h, n, &mut mlp).map_err(wrap)?;
            x.iter_mut().zip(&mlp.out).for_each(|(x, f)| *x += f);
        }
        if step.wanted.is_empty() {
            logits.clear();
            return Ok(true);
        }
        let mut last = Vec::with_capacity(step.wanted.len() * hid);
        for &r in step.wanted {
            last.extend_from_slice(&x[r * hid..(r + 1) * hid]);
        }
        let mut normed = vec![0f32; last.len()];
        rms_norm(&last, &self.host.norm, eps, &mut normed).map_err(wrap)?;
        let Some(head) = self.weights.head.packed() else {
            candle_core::bail!("the head is not repacked for the host path");
        };
        run_packed_into(head, &normed, step.wanted.len(), logits).map_err(wrap)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    #[test]
    fn rope_rotates_the_pairs_of_each_style() {
        let (hd, heads) = (8, 3);
        let row: Vec<f32> = (0..hd * heads).map(|i| i as f32 * 0.25 - 2.0).collect();
        let angles = [0.3f32, -1.1, 2.0, 0.05];
        let (cos, sin): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
        for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
            let mut got = row.clone();
            rope(&mut got, hd, style, &cos, &sin);
            for (h, (head, out)) in row.chunks(hd).zip(got.chunks(hd)).enumerate() {
                for i in 0..hd / 2 {
                    let (a, b) = match style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::Halves => (i, i + hd / 2),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    let want = (x0 * cos[i] - x1 * sin[i], x0 * sin[i] + x1 * cos[i]);
                    assert_eq!((out[a], out[b]), want, "{style:?} head {h} pair {i}");
                }
            }
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn rms_norm_matches_candle() {
        // 37 columns: two whole chunks of lanes and a tail.
        let (rows, d) = (3, 37);
        let x: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 7919 % 113) as f32 - 56.0) / 9.0)
            .collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 / 40.0).collect();
        let mut ours = vec![0f32; rows * d];
        rms_norm(&x, &w, 1e-5, &mut ours).unwrap();
        let xt = Tensor::from_vec(x, (rows, d), &Device::Cpu).unwrap();
        let wt = Tensor::from_vec(w, d, &Device::Cpu).unwrap();
        let want = candle_nn::ops::rms_norm(&xt, &wt, 1e-5).unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in ours.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
