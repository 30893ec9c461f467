//! Convolution throughput in TFLOP/s: fprop, dgrad and wgrad of every distinct ResNet-18
//! convolution (224×224 input), f16 / bf16 / f32, through the backend's `ConvOps` (criterion's
//! throughput is the FLOP count 2·N·K·P·Q·C·R·S, so its `elem/s` column reads as FLOP/s).
//! - On every CUDA GPU `hemi::cuda::init()` finds: batch 256; f16/bf16 channels-last (the
//!   Tensor-Core tier; the stem's C = 3 packed to 8 inside the timed call), f32 NCHW (SIMT).
//!   Without a GPU it says so.
//! - On the CPU, always: batch 8 (batch 256 would take minutes per sample), f32 and f16.
//!
//! Run: `cargo bench --features cuda --bench conv` (the CPU part also without the feature).
//! The GPU bundle runs the same shapes through cuDNN (`scripts/bundle/torch_conv.py`) for the
//! ratio.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hemi::backend::Conv2dSpec;
use hemi::{DType, Device, Generator, MemoryFormat, Tensor};
use std::time::Duration;

/// (name, C, K, H (=W), kernel, stride, padding) of ResNet-18's distinct convolutions.
const LAYERS: [(&str, usize, usize, usize, usize, usize, usize); 11] = [
    ("conv1_7x7s2", 3, 64, 224, 7, 2, 3),
    ("layer1_3x3", 64, 64, 56, 3, 1, 1),
    ("layer2_3x3s2", 64, 128, 56, 3, 2, 1),
    ("layer2_down_1x1s2", 64, 128, 56, 1, 2, 0),
    ("layer2_3x3", 128, 128, 28, 3, 1, 1),
    ("layer3_3x3s2", 128, 256, 28, 3, 2, 1),
    ("layer3_down_1x1s2", 128, 256, 28, 1, 2, 0),
    ("layer3_3x3", 256, 256, 14, 3, 1, 1),
    ("layer4_3x3s2", 256, 512, 14, 3, 2, 1),
    ("layer4_down_1x1s2", 256, 512, 14, 1, 2, 0),
    ("layer4_3x3", 512, 512, 7, 3, 1, 1),
];

fn spec(
    n: usize,
    (c, k, h, ks, st, pad): (usize, usize, usize, usize, usize, usize),
) -> Conv2dSpec {
    Conv2dSpec {
        format: MemoryFormat::Contiguous,
        out_dtype: None,
        n,
        c_in: c,
        h,
        w: h,
        c_out: k,
        kh: ks,
        kw: ks,
        stride: (st, st),
        padding: (pad, pad),
        dilation: (1, 1),
        groups: 1,
    }
}

fn bench_device(c: &mut Criterion, group_name: &str, dev: Device, batch: usize, dtypes: &[DType]) {
    let mut group = c.benchmark_group(group_name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let be = hemi::backend_for(dev).expect("backend");
    let mut g = Generator::new(1);
    for &(name, ci, k, h, ks, st, pad) in &LAYERS {
        let s0 = spec(batch, (ci, k, h, ks, st, pad));
        let (p, q) = (s0.out_h(), s0.out_w());
        let flops = 2 * batch * k * p * q * ci * ks * ks;
        group.throughput(Throughput::Elements(flops as u64));
        for &dt in dtypes {
            let format = if dev != Device::Cpu && dt != DType::F32 {
                MemoryFormat::ChannelsLast
            } else {
                MemoryFormat::Contiguous
            };
            let s = Conv2dSpec { format, ..s0 };
            let rand = |g: &mut Generator, dims: [usize; 4]| {
                Tensor::uniform_with(g, dims, -1.0, 1.0, dt, dev)
                    .and_then(|t| t.to_memory_format(format))
                    .expect("data")
                    .storage()
            };
            let x = rand(&mut g, [batch, ci, h, h]);
            let w = rand(&mut g, [k, ci, ks, ks]);
            let dy = rand(&mut g, [batch, k, p, q]);
            let id = |pass: &str| BenchmarkId::new(format!("{pass}_{dt}"), format!("{name}_{dev}"));
            group.bench_function(id("fprop"), |b| {
                b.iter(|| be.conv2d(&x, &w, &s).expect("fprop"));
                hemi_sync(dev);
            });
            group.bench_function(id("dgrad"), |b| {
                b.iter(|| be.conv2d_backward_input(&dy, &w, &s).expect("dgrad"));
                hemi_sync(dev);
            });
            group.bench_function(id("wgrad"), |b| {
                b.iter(|| be.conv2d_backward_weight(&x, &dy, &s).expect("wgrad"));
                hemi_sync(dev);
            });
        }
    }
    group.finish();
}

/// Waits for the device's queued work (launches are synchronous today; kept for clarity).
fn hemi_sync(dev: Device) {
    #[cfg(feature = "cuda")]
    if matches!(dev, Device::Cuda(_)) {
        hemi::cuda::synchronize(dev).expect("synchronize");
    }
    let _ = dev;
}

fn cpu(c: &mut Criterion) {
    bench_device(c, "conv_cpu", Device::Cpu, 8, &[DType::F32, DType::F16]);
}

fn gpus(c: &mut Criterion) {
    #[cfg(feature = "cuda")]
    {
        let status = hemi::cuda::init();
        let gpus: Vec<Device> = status
            .devices
            .iter()
            .copied()
            .filter(|d| matches!(d, Device::Cuda(_)))
            .collect();
        if gpus.is_empty() {
            eprintln!(
                "conv bench: skipping the CUDA kernels: {}",
                status.gpu_unavailable.as_deref().unwrap_or("no GPU")
            );
        }
        for dev in gpus {
            bench_device(
                c,
                "conv_cuda",
                dev,
                256,
                &[DType::F16, DType::BF16, DType::F32],
            );
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = c;
        eprintln!("conv bench: skipping CUDA: built without feature `cuda`");
    }
}

criterion_group!(benches, cpu, gpus);
criterion_main!(benches);
