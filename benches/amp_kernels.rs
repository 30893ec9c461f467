//! Bandwidth of the AMP kernels: the multi-tensor non-finite check + unscale and fused Adam,
//! over ResNet-18-sized parameter lists (11.7M f32 elements in 62 tensors). Throughput is set
//! in bytes moved (unscale: read + write 4 B per element; fused Adam: read p, g, m, v and write
//! p, g, m, v = 32 B per element), so criterion's `B/s` is memory bandwidth. Runs on the CPU
//! always and on every GPU `hemi::cuda::init()` finds (built with `--features cuda`); it says
//! when it skips the GPU. Target on an H200: ≥ 80% of device copy bandwidth.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hemi::backend::{AdamTensors, FusedAdamSpec};
use hemi::nn::{resnet18, Module};
use hemi::{DType, Device, Tensor};
use std::time::Duration;

fn devices() -> Vec<Device> {
    #[cfg(feature = "cuda")]
    {
        let status = hemi::cuda::init();
        if let Some(why) = &status.gpu_unavailable {
            eprintln!("amp_kernels: skipping cuda (GPU): {why}");
        }
        let mut d = vec![Device::Cpu];
        d.extend(
            status
                .devices
                .iter()
                .copied()
                .filter(|d| matches!(d, Device::Cuda(_))),
        );
        d
    }
    #[cfg(not(feature = "cuda"))]
    {
        eprintln!("amp_kernels: skipping cuda: built without feature `cuda`");
        vec![Device::Cpu]
    }
}

fn grads(dev: Device) -> Vec<Tensor> {
    let model = resnet18(1000, Device::Cpu).expect("model");
    model
        .parameters()
        .iter()
        .map(|p| Tensor::randn(p.shape().clone(), DType::F32, dev).expect("grad"))
        .collect()
}

fn amp_kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("amp_kernels");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for dev in devices() {
        let gs = grads(dev);
        let elems: usize = gs.iter().map(Tensor::elem_count).sum();
        let storages: Vec<_> = gs.iter().map(Tensor::storage).collect();
        let be = gs[0].backend().expect("backend");
        let found = Tensor::zeros((), DType::F32, dev)
            .expect("found_inf")
            .storage();
        let inv = Tensor::full((), 1.0 / 65536.0, DType::F32, dev)
            .expect("inv_scale")
            .storage();
        group.throughput(Throughput::Bytes((elems * 8) as u64));
        group.bench_with_input(BenchmarkId::new("unscale_f32", dev), &dev, |b, _| {
            b.iter(|| {
                be.non_finite_check_and_unscale(&storages, &found, &inv)
                    .expect("unscale")
            })
        });
        let zeros = |t: &Tensor| t.zeros_like().expect("zeros").storage();
        let step = Tensor::zeros([1], DType::F32, dev).expect("step").storage();
        let tensors: Vec<AdamTensors> = gs
            .iter()
            .map(|g| AdamTensors {
                param: zeros(g),
                grad: g.storage(),
                exp_avg: zeros(g),
                exp_avg_sq: zeros(g),
                max_exp_avg_sq: None,
                step: step.clone(),
            })
            .collect();
        let spec = FusedAdamSpec {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            decoupled: false,
        };
        group.throughput(Throughput::Bytes((elems * 32) as u64));
        group.bench_with_input(BenchmarkId::new("fused_adam_f32", dev), &dev, |b, _| {
            b.iter(|| {
                be.fused_adam(&tensors, &spec, Some(&inv), Some(&found))
                    .expect("adam")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, amp_kernels);
criterion_main!(benches);
