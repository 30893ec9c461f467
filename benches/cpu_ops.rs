//! CPU throughput baseline: matmul (f32, f16) and conv2d (f32, f16, bf16 — bf16 runs on AMX
//! where the CPU has it) at several sizes.
//!
//! Criterion's throughput is set to the op's FLOP count (2·M·N·K for matmul,
//! 2·N·C_out·OH·OW·C_in·KH·KW for conv), so its `elem/s` column reads as FLOP/s.
//! Run: `cargo bench --bench cpu_ops`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hemi::{Conv2dParams, DType, Device, Generator, Tensor};
use std::time::Duration;

fn rand(g: &mut Generator, dims: &[usize], dt: DType) -> Tensor {
    Tensor::uniform_with(g, dims.to_vec(), -1.0, 1.0, dt, Device::Cpu).expect("random tensor")
}

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_matmul");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    let mut g = Generator::new(1);
    for n in [128usize, 256, 512, 1024] {
        for dt in [DType::F32, DType::F16] {
            let (a, b) = (rand(&mut g, &[n, n], dt), rand(&mut g, &[n, n], dt));
            group.throughput(Throughput::Elements(2 * (n * n * n) as u64));
            group.bench_with_input(
                BenchmarkId::new(dt.name(), format!("{n}x{n}x{n}")),
                &n,
                |bench, _| bench.iter(|| a.matmul(&b).expect("matmul")),
            );
        }
    }
    group.finish();
}

/// Name, input dims, weight dims, stride, padding.
type ConvShape = (&'static str, [usize; 4], [usize; 4], usize, usize);

/// ResNet-18 conv shapes at batch 8 (224×224 input): stem and one 3×3 conv per stage.
fn conv2d(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_conv2d");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    let mut g = Generator::new(2);
    let shapes: [ConvShape; 4] = [
        ("stem_7x7s2", [8, 3, 224, 224], [64, 3, 7, 7], 2, 3),
        ("layer1_3x3", [8, 64, 56, 56], [64, 64, 3, 3], 1, 1),
        ("layer2_3x3", [8, 128, 28, 28], [128, 128, 3, 3], 1, 1),
        ("layer4_3x3", [8, 512, 7, 7], [512, 512, 3, 3], 1, 1),
    ];
    for (name, xs, ws, stride, pad) in shapes {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let (x, w) = (rand(&mut g, &xs, dt), rand(&mut g, &ws, dt));
            let p = Conv2dParams::new(stride, pad);
            let out = x.conv2d(&w, None, p).expect("conv2d");
            let (oh, ow) = (out.dims()[2], out.dims()[3]);
            let flops = 2 * xs[0] * ws[0] * oh * ow * ws[1] * ws[2] * ws[3];
            group.throughput(Throughput::Elements(flops as u64));
            group.bench_with_input(BenchmarkId::new(dt.name(), name), &name, |bench, _| {
                bench.iter(|| x.conv2d(&w, None, p).expect("conv2d"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, matmul, conv2d);
criterion_main!(benches);
