//! CPU throughput baseline: matmul (f32, f16) and conv2d (f32, f16, bf16 — bf16 runs on AMX
//! or AVX512-BF16 where the CPU has them) at several sizes, and a conv2d training pass
//! (forward and both gradients) of the late stages at small images (`cpu_conv2d_train_small`).
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

/// A training pass (forward, then the input and weight gradients) of ResNet-18's late stages
/// at small images, batch 4: 32-px images leave layer3 at 2 × 2 and layer4 at 1 × 1 pixels,
/// products 16 and 4 columns wide (bf16 runs `bf16_skinny` there on AVX512-BF16 CPUs
/// without AMX; at 1 × 1 only the kernel's centre tap reads the image, the other 8 are
/// skipped) — and layer4 at 224 px, batch 2: 98 columns (run transposed). Throughput: the
/// pass's three products at the nominal (all-tap) count, 3 × the forward FLOPs.
fn conv2d_train_small(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_conv2d_train_small");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    let mut g = Generator::new(3);
    let shapes: [ConvShape; 3] = [
        ("layer3_3x3_2px", [4, 256, 2, 2], [256, 256, 3, 3], 1, 1),
        ("layer4_3x3_1px", [4, 512, 1, 1], [512, 512, 3, 3], 1, 1),
        ("layer4_3x3_7px_b2", [2, 512, 7, 7], [512, 512, 3, 3], 1, 1),
    ];
    for (name, xs, ws, stride, pad) in shapes {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let x = rand(&mut g, &xs, dt).requires_grad_(true).expect("leaf");
            let w = rand(&mut g, &ws, dt).requires_grad_(true).expect("leaf");
            let p = Conv2dParams::new(stride, pad);
            let out = x.conv2d(&w, None, p).expect("conv2d");
            let (oh, ow) = (out.dims()[2], out.dims()[3]);
            let flops = 3 * 2 * xs[0] * ws[0] * oh * ow * ws[1] * ws[2] * ws[3];
            group.throughput(Throughput::Elements(flops as u64));
            group.bench_with_input(BenchmarkId::new(dt.name(), name), &name, |bench, _| {
                bench.iter(|| {
                    // (Fresh gradients each pass: the leaves' accumulation is not measured.)
                    x.zero_grad();
                    w.zero_grad();
                    let y = x.conv2d(&w, None, p).expect("conv2d");
                    y.sum_all().expect("sum").backward().expect("backward");
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, matmul, conv2d, conv2d_train_small);
criterion_main!(benches);
