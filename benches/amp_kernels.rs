//! Bandwidth of the in-place AMP and optimizer kernels: the multi-tensor non-finite check +
//! unscale, the read-only check a fused optimizer's step needs, and fused Adam, over
//! ResNet-18-sized parameter lists (11.7M f32 elements in 62 tensors), next to a parallel
//! memcpy of the same bytes on the CPU (the ceiling). Throughput is set in bytes moved
//! (unscale: read + write 4 B per element; check: read 4 B; fused Adam with a grad scale:
//! read p, g, m, v and write p, g, m, v = 32 B per element; memcpy: read + write), so
//! criterion's `B/s` is memory bandwidth. Runs on the CPU always and on every GPU
//! `hemi::cuda::init()` finds (built with `--features cuda`); it says when it skips the GPU.
//! Targets: CPU fused Adam ≥ 80% of the memcpy line; on an H200 ≥ 80% of device copy bandwidth.

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

/// The ceiling for the CPU lines: copying the bytes fused Adam streams (4 × 4 B per element
/// read, as many written) with every core, as `copy_from_slice` chunks.
fn memcpy_ceiling(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use rayon::prelude::*;
    let elems = 11_689_512usize * 4;
    let src = vec![1.0f32; elems];
    let mut dst = vec![0.0f32; elems];
    group.throughput(Throughput::Bytes((elems * 8) as u64));
    group.bench_function(BenchmarkId::new("memcpy_f32", Device::Cpu), |b| {
        b.iter(|| {
            dst.par_chunks_mut(1 << 16)
                .zip(src.par_chunks(1 << 16))
                .for_each(|(d, s)| d.copy_from_slice(s))
        })
    });
}

fn amp_kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("amp_kernels");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    memcpy_ceiling(&mut group);
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
        // The read-only check a fused optimizer's step needs (inverse scale 1: 4 B per element).
        let one = Tensor::full((), 1.0, DType::F32, dev)
            .expect("one")
            .storage();
        group.throughput(Throughput::Bytes((elems * 4) as u64));
        group.bench_with_input(BenchmarkId::new("check_f32", dev), &dev, |b, _| {
            b.iter(|| {
                be.non_finite_check_and_unscale(&storages, &found, &one)
                    .expect("check")
            })
        });
        let zeros = |t: &Tensor| t.zeros_like().expect("zeros").storage();
        let tensors: Vec<AdamTensors> = gs
            .iter()
            .map(|g| AdamTensors {
                param: zeros(g),
                grad: g.storage(),
                exp_avg: zeros(g),
                exp_avg_sq: zeros(g),
                max_exp_avg_sq: None,
                step: Tensor::zeros([1], DType::F32, dev).expect("step").storage(),
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
                be.adam_step(&tensors, &spec, Some(&inv), Some(&found))
                    .expect("adam")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, amp_kernels);
criterion_main!(benches);
