//! GEMM throughput in TFLOP/s (criterion's throughput is the FLOP count 2·M·N·K, so its
//! `elem/s` column reads as FLOP/s).
//! - On every CUDA GPU `hemi::cuda::init()` finds: (i) wmma f16, (ii) mma.sync f16 and bf16,
//!   (iii) SIMT f32, at 1024³–8192³ and at ResNet-18's fc layer and convolutions viewed as
//!   GEMMs (batch 32, 224×224). Without a GPU it says that it skipped.
//! - On the CPU, always: f32 vs f16 at matching sizes.
//!
//! Run: `cargo bench --features cuda --bench gemm` (the CPU part also without the feature).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hemi::{DType, Device, Generator, Tensor};
use std::time::Duration;

/// (name, M, N, K): squares and ResNet-18's GEMMs (convs as implicit GEMMs, batch 32).
#[cfg(feature = "cuda")]
const SHAPES: [(&str, usize, usize, usize); 10] = [
    ("square_1024", 1024, 1024, 1024),
    ("square_2048", 2048, 2048, 2048),
    ("square_4096", 4096, 4096, 4096),
    ("square_8192", 8192, 8192, 8192),
    ("fc_32x512x1000", 32, 1000, 512),
    ("conv1_7x7", 32 * 112 * 112, 64, 3 * 49),
    ("layer1_3x3", 32 * 56 * 56, 64, 64 * 9),
    ("layer2_3x3", 32 * 28 * 28, 128, 128 * 9),
    ("layer3_3x3", 32 * 14 * 14, 256, 256 * 9),
    ("layer4_3x3", 32 * 7 * 7, 512, 512 * 9),
];

#[cfg(feature = "cuda")]
fn cuda(c: &mut Criterion) {
    use hemi::{GemmAlgo as GemmKernel, GemmOptions};
    let status = hemi::cuda::init();
    let gpus: Vec<Device> = status
        .devices
        .iter()
        .copied()
        .filter(|d| matches!(d, Device::Cuda(_)))
        .collect();
    if gpus.is_empty() {
        eprintln!(
            "gemm bench: skipping the CUDA kernels: {}",
            status.gpu_unavailable.as_deref().unwrap_or("no GPU")
        );
        return;
    }
    let mut group = c.benchmark_group("gemm_cuda");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut g = Generator::new(1);
    for dev in gpus {
        for (name, m, n, k) in SHAPES {
            group.throughput(Throughput::Elements((2 * m * n * k) as u64));
            for (label, kernel, dt) in [
                ("wmma_f16", GemmKernel::Wmma, DType::F16),
                ("mma_f16", GemmKernel::MmaPipeline, DType::F16),
                ("mma_bf16", GemmKernel::MmaPipeline, DType::BF16),
                ("simt_f32", GemmKernel::SimtF32, DType::F32),
            ] {
                let a = Tensor::uniform_with(&mut g, [m, k], -1.0, 1.0, dt, dev).expect("a");
                // B stored as [n, k] (k-contiguous) and viewed as [k, n]: the NT layout.
                let b = Tensor::uniform_with(&mut g, [n, k], -1.0, 1.0, dt, dev)
                    .expect("b")
                    .t()
                    .expect("view");
                let o = GemmOptions {
                    alpha: 1.0,
                    beta: 0.0,
                    c: None,
                    bias: None,
                    out_dtype: dt,
                    algo: kernel,
                };
                if Tensor::gemm(&a, &b, &o).is_err() {
                    eprintln!(
                        "gemm bench: {label} does not take {name} (layout precondition); skipped"
                    );
                    continue;
                }
                group.bench_with_input(BenchmarkId::new(label, name), &name, |bench, _| {
                    bench.iter(|| {
                        Tensor::gemm(&a, &b, &o).expect("gemm");
                        hemi::cuda::synchronize(dev).expect("sync");
                    })
                });
            }
        }
    }
    group.finish();
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &mut Criterion) {
    eprintln!("gemm bench: skipping the CUDA kernels: built without feature `cuda`");
}

fn cpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm_cpu");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    let mut g = Generator::new(2);
    for (name, m, n, k) in [
        ("square_512", 512, 512, 512),
        ("square_1024", 1024, 1024, 1024),
        ("fc_32x512x1000", 32, 1000, 512),
    ] {
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        for dt in [DType::F32, DType::F16] {
            let a = Tensor::uniform_with(&mut g, [m, k], -1.0, 1.0, dt, Device::Cpu).expect("a");
            let b = Tensor::uniform_with(&mut g, [k, n], -1.0, 1.0, dt, Device::Cpu).expect("b");
            group.bench_with_input(BenchmarkId::new(dt.name(), name), &name, |bench, _| {
                bench.iter(|| a.matmul(&b).expect("matmul"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, cuda, cpu);
criterion_main!(benches);
