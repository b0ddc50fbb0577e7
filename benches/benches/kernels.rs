//! Criterion benches of switchyard-kernels' quantized matmul against
//! candle's `QMatMul` on SmolLM2-135M's widest layer (576 -> 1536, Q4_1)
//! and its Q8_0 head (576 -> 49152), at 1 and 8 activation rows, both on
//! candle's thread pool. `report kernels` covers every shape and row count.

use std::hint::black_box;

use candle_core::{Device, Module, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use switchyard::text::CandleComputePool;
use switchyard_benches::kernels_suite::{case, noise};
use switchyard_kernels::{QuantFormat, QuantizedRows, matmul};

fn matmuls(c: &mut Criterion) {
    for (k, n, format) in [
        (576, 1536, QuantFormat::Q4_1),
        (576, 49152, QuantFormat::Q8_0),
    ] {
        let Ok(case) = case(k, n, format) else {
            return;
        };
        for m in [1, 8] {
            let xf = noise(m * k, m as u64);
            let Ok(xt) = Tensor::from_vec(xf.clone(), (m, k), &Device::Cpu) else {
                return;
            };
            let mut group = c.benchmark_group(format!("{format}_{k}x{n}_m{m}"));
            let mut xq = QuantizedRows::new();
            let mut out = vec![0f32; m * n];
            group.bench_function("switchyard_kernels", |b| {
                b.iter(|| {
                    let _ = xq.quantize(black_box(&xf), m, k);
                    let _ = matmul(&case.packed, &xq, &mut out, &CandleComputePool);
                    black_box(&out);
                })
            });
            group.bench_function("candle_qmatmul", |b| {
                b.iter(|| black_box(case.qmatmul.forward(&xt)))
            });
            group.finish();
        }
    }
}

criterion_group!(benches, matmuls);
criterion_main!(benches);
