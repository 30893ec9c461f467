//! Issue "Reliability": calls that used to panic, wrap around or be rejected wrongly — each an
//! `Err` naming the op (or the right answer) now, on every device present.

mod common;

use hemi::amp::{GradScaler, GradScalerConfig};
use hemi::nn::{Linear, Module};
use hemi::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use hemi::{
    AvgPool2dParams, BatchNormParams, Conv2dParams, CrossEntropySpec, DType, Device, Generator,
    MaxPool2dParams, Result, Tensor,
};

fn err_mentions<T: std::fmt::Debug>(r: Result<T>, words: &[&str]) {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "error `{msg}` should mention `{w}`");
    }
}

#[test]
fn zero_dim_narrow_cat_and_flatten_are_errors_not_panics() -> Result<()> {
    for dev in common::devices() {
        let s = Tensor::scalar(1.0, DType::F32, dev)?;
        err_mentions(s.narrow(0, 0, 1), &["narrow", "0-dim"]);
        err_mentions(Tensor::cat(&[&s, &s], 0), &["cat", "zero-dimensional"]);
        err_mentions(s.flatten(2, 5), &["flatten"]);
        assert_eq!(s.flatten(0, -1)?.dims(), &[1]);
        let v = Tensor::ones([4], DType::F32, dev)?;
        // start + len wraps around usize: an error, not a view before the buffer.
        err_mentions(v.narrow(0, 2, usize::MAX), &["narrow", "exceeds"]);
    }
    Ok(())
}

#[test]
fn shapes_whose_element_count_overflows_are_errors() -> Result<()> {
    let huge = [1usize << 32, 1usize << 32];
    for dev in common::devices() {
        err_mentions(Tensor::zeros(huge, DType::F32, dev), &["full", "elements"]);
        err_mentions(
            Tensor::randn([usize::MAX, 2], DType::F32, dev),
            &["randn", "elements"],
        );
        err_mentions(
            Tensor::ones([2], DType::F32, dev)?.reshape(huge),
            &["reshape"],
        );
    }
    err_mentions(
        Tensor::from_vec(
            Vec::<f32>::new(),
            [1usize << 40, 1 << 40, 0, 1 << 40],
            Device::Cpu,
        ),
        &["from_vec"],
    );
    Ok(())
}

#[test]
fn conv2d_backward_of_an_empty_input_is_empty() -> Result<()> {
    for dev in common::devices() {
        // H = 0 with padding 1 and a 1x1 kernel: a valid 2-row output of zeros.
        let x = Tensor::zeros([1, 2, 0, 3], DType::F32, dev)?.requires_grad_(true)?;
        let w = Tensor::ones([3, 2, 1, 1], DType::F32, dev)?.requires_grad_(true)?;
        let y = x.conv2d(&w, None, Conv2dParams::new(1, 1))?;
        assert_eq!(y.dims(), &[1, 3, 2, 5]);
        y.sum_all()?.backward()?;
        assert_eq!(x.grad().expect("dx").dims(), &[1, 2, 0, 3]);
        assert_eq!(w.grad().expect("dw").to_vec::<f32>()?, vec![0.0; 6]);
    }
    Ok(())
}

#[test]
fn cross_entropy_with_no_classes_is_an_error() -> Result<()> {
    for dev in common::devices() {
        let logits = Tensor::zeros([3, 0], DType::F32, dev)?;
        let t = Tensor::from_vec(vec![0i64; 3], [3], Device::Cpu)?.to_device(dev)?;
        err_mentions(
            logits.cross_entropy(&t, CrossEntropySpec::default()),
            &["cross_entropy", "no classes"],
        );
    }
    Ok(())
}

/// Ops that hand a bare storage to a backend take a window of a larger buffer (narrowed along
/// dim 0: contiguous, but at an offset) and give what they give on a copy.
#[test]
fn ops_accept_tensors_narrowed_along_dim_0() -> Result<()> {
    let mut g = Generator::new(5);
    for dev in common::devices() {
        let big = Tensor::uniform_with(&mut g, [5, 4, 6, 6], -1.0, 1.0, DType::F32, dev)?;
        let x = big.narrow(0, 2, 2)?;
        let copy = x.deep_copy()?;
        let w = Tensor::uniform_with(&mut g, [3, 4, 3, 3], -1.0, 1.0, DType::F32, dev)?;
        type Op = fn(&Tensor, &Tensor) -> Result<Tensor>;
        let ops: [(&str, Op); 6] = [
            ("conv2d", |x, w| x.conv2d(w, None, Conv2dParams::new(1, 1))),
            ("max_pool2d", |x, _| {
                x.max_pool2d(MaxPool2dParams::new(2, 2, 0))
            }),
            ("avg_pool2d", |x, _| {
                x.avg_pool2d(AvgPool2dParams::new(2, 2, 0))
            }),
            ("batch_norm", |x, _| {
                x.batch_norm(None, None, None, None, BatchNormParams::default())
            }),
            ("softmax", |x, _| x.flatten(1, -1)?.softmax(-1)),
            ("cross_entropy", |x, _| {
                let t = Tensor::from_vec(vec![1i64, 3], [2], Device::Cpu)?.to_device(x.device())?;
                x.flatten(1, -1)?
                    .cross_entropy(&t, CrossEntropySpec::default())
            }),
        ];
        for (name, op) in ops {
            let got = op(&x, &w).unwrap_or_else(|e| panic!("{name} on {dev}: {e}"));
            let want = op(&copy, &w)?;
            assert_eq!(
                got.to_vec::<f32>()?,
                want.to_vec::<f32>()?,
                "{name} on {dev}"
            );
        }
    }
    Ok(())
}

#[test]
fn non_finite_or_negative_hyperparameters_are_rejected() -> Result<()> {
    let p = || -> Result<Vec<Tensor>> { Ok(Linear::new(2, 2, true, Device::Cpu)?.parameters()) };
    for lr in [f64::INFINITY, f64::NAN, -1.0] {
        err_mentions(
            Adam::new(p()?, AdamConfig::adam().lr(lr)),
            &["learning rate"],
        );
        err_mentions(Sgd::new(p()?, SgdConfig::new(lr)), &["learning rate"]);
    }
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let c = GradScalerConfig {
            min_scale: Some(bad),
            ..Default::default()
        };
        err_mentions(GradScaler::new(c), &["min_scale"]);
    }
    Ok(())
}

/// A scale that underflowed to 0 (a long overflow storm) must skip the step rather than unscale
/// by 1/0 into every gradient and parameter — with the fused Adam and with plain SGD.
#[test]
fn a_zero_loss_scale_skips_the_step() -> Result<()> {
    for dev in common::devices() {
        for fused in [true, false] {
            let model = Linear::new(3, 2, true, dev)?;
            let before: Vec<Vec<f32>> = model
                .parameters()
                .iter()
                .map(|p| p.to_vec::<f32>())
                .collect::<Result<_>>()?;
            let mut opt: Box<dyn Optimizer> = if fused {
                Box::new(Adam::new(model.parameters(), AdamConfig::adam().lr(0.1))?)
            } else {
                Box::new(Sgd::new(
                    model.parameters(),
                    SgdConfig::new(0.1).fused(false),
                )?)
            };
            // 1e-50 rounds to 0 in the scaler's f32 scale.
            let mut scaler = GradScaler::new(GradScalerConfig {
                init_scale: 1e-50,
                ..Default::default()
            })?;
            let x = Tensor::ones([4, 3], DType::F32, dev)?;
            let loss = model.forward(&x)?.sum_all()?;
            scaler.scale(&loss)?.backward()?;
            scaler.step(opt.as_mut())?;
            scaler.update(None)?;
            for (p, b) in model.parameters().iter().zip(&before) {
                assert_eq!(
                    &p.to_vec::<f32>()?,
                    b,
                    "fused {fused} on {dev}: parameters unchanged"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn matmul_broadcasts_a_batch_of_one_against_an_empty_batch() -> Result<()> {
    for dev in common::devices() {
        let a = Tensor::ones([1, 2, 3], DType::F32, dev)?;
        let b = Tensor::ones([0, 3, 4], DType::F32, dev)?;
        assert_eq!(a.matmul(&b)?.dims(), &[0, 2, 4]);
        assert_eq!(
            b.transpose(1, 2)?.matmul(&a.transpose(1, 2)?)?.dims(),
            &[0, 4, 2]
        );
        let m = Tensor::ones([2, 3], DType::F32, dev)?;
        assert_eq!(m.matmul(&b)?.dims(), &[0, 2, 4]);
    }
    Ok(())
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hemi-reliability-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn a_checkpoint_naming_a_tensor_twice_is_rejected() {
    let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut h = header.to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(1.0f32.to_le_bytes());
    let path = scratch_dir("dup").join("dup.safetensors");
    std::fs::write(&path, bytes).expect("write");
    err_mentions(
        hemi::checkpoint::load_tensors(&path, Device::Cpu),
        &["dup.safetensors", "twice"],
    );
}

#[test]
fn a_save_removes_the_temporaries_of_killed_saves() -> Result<()> {
    let dir = scratch_dir("tmp");
    let path = dir.join("model.safetensors");
    // A PID above the kernel's maximum belongs to no process.
    let dead = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(99_999_999, |m| m + 1);
    let stale = dir.join(format!(".model.safetensors.tmp-{dead}"));
    let other = dir.join(".other.safetensors.tmp-1");
    std::fs::write(&stale, b"half-written").expect("write");
    std::fs::write(&other, b"not ours").expect("write");
    let t = Tensor::ones([3], DType::F32, Device::Cpu)?;
    hemi::checkpoint::save_tensors(&[("w".to_string(), t)], &path)?;
    if std::path::Path::new("/proc/self").exists() {
        assert!(!stale.exists(), "the killed save's temporary is gone");
    }
    assert!(other.exists(), "another target's temporary is left alone");
    assert_eq!(hemi::checkpoint::load_tensors(&path, Device::Cpu)?.len(), 1);
    Ok(())
}

#[test]
fn conv_geometry_that_overflows_is_an_error() -> Result<()> {
    for dev in common::devices() {
        let x = Tensor::ones([1, 1, 2, 2], DType::F32, dev)?;
        let w = Tensor::ones([1, 1, 1, 1], DType::F32, dev)?;
        let p = Conv2dParams {
            padding: (usize::MAX / 2, 1),
            ..Default::default()
        };
        err_mentions(x.conv2d(&w, None, p), &["conv2d", "overflows"]);
        let p = Conv2dParams {
            padding: (1 << 31, 1 << 31),
            ..Default::default()
        };
        err_mentions(x.conv2d(&w, None, p), &["conv2d"]);
    }
    Ok(())
}

/// Pooling of an empty batch is empty both ways; no channels or an empty plane (even one that
/// padding would give an output) is an error forward, as in PyTorch — it used to pass forward
/// and fail in backward on an argmax outside the empty plane. On every device.
#[test]
fn pooling_of_empty_batches_is_empty_and_of_empty_planes_an_error() -> Result<()> {
    for device in common::devices() {
        for dims in [[0, 3, 4, 4], [0, 2, 3, 5]] {
            let x = Tensor::randn(dims, DType::F32, device)?.requires_grad_(true)?;
            let max = x.max_pool2d(MaxPool2dParams::new(2, 2, 0))?;
            let avg = x.avg_pool2d(AvgPool2dParams::new(2, 2, 0))?;
            assert_eq!(max.elem_count(), 0);
            max.add(&avg)?.sum_all()?.backward()?;
            let g = x.grad().expect("x has a gradient");
            assert_eq!(g.dims(), &dims, "{device}");
        }
        let plane = Tensor::randn([1, 1, 0, 4], DType::F32, device)?;
        err_mentions(
            plane.max_pool2d(MaxPool2dParams::new(2, 2, 0)),
            &["max_pool2d"],
        );
    }
    Ok(())
}

/// Host allocations larger than memory are `Err(OutOfMemory)` naming the bytes — from
/// constructors, from ops whose output dwarfs their input (a broadcast made dense, a reduction
/// over an empty dim, a cast, a matmul of broadcast views), on every device
/// — not a process abort (which would kill this test binary).
#[test]
fn host_allocations_larger_than_memory_are_errors() -> Result<()> {
    let huge = 1usize << 40;
    let oom = |r: Result<Tensor>| {
        let e = r.expect_err("expected out of memory");
        assert!(
            matches!(e, hemi::Error::OutOfMemory { requested, .. } if requested >= huge),
            "{e}"
        );
    };
    oom(Tensor::zeros([huge, 4], DType::F32, Device::Cpu));
    oom(Tensor::randn([huge, 4], DType::F32, Device::Cpu));
    oom(Tensor::randint(0, 9, [huge, 4], Device::Cpu));
    for device in common::devices() {
        let one = Tensor::ones([1, 1], DType::F16, device)?;
        let wide = one.broadcast_as([huge, 8])?;
        oom(wide.contiguous());
        oom(wide.to_dtype(DType::F32));
        oom(wide.relu());
        oom(wide.add(&wide));
        let empty = Tensor::zeros([huge, 0], DType::F32, device)?;
        oom(empty.sum(1, false));
        let m = Tensor::ones([1, 1, 1], DType::F32, device)?.broadcast_as([huge, 1, 1])?;
        oom(m.matmul(&m));
    }
    Ok(())
}

/// Batched products whose operands are empty views with non-zero batch strides (found by the
/// fuzz harness: the CPU indexed past an empty buffer): an empty M gives an empty result, an
/// empty K gives zeros — through matmul and gemm, on every device.
#[test]
fn batched_products_of_empty_strided_operands() -> Result<()> {
    for device in common::devices() {
        let empty_m = Tensor::zeros([0, 2, 1], DType::F32, device)?.permute(&[1, 0, 2])?;
        let b = Tensor::ones([2, 1, 3], DType::F32, device)?;
        assert_eq!(empty_m.matmul(&b)?.dims(), &[2, 0, 3]);
        let empty_k = Tensor::zeros([0, 2, 3], DType::F32, device)?.permute(&[1, 2, 0])?;
        let rhs = Tensor::zeros([0, 2, 4], DType::F32, device)?.permute(&[1, 0, 2])?;
        let y = empty_k.matmul(&rhs)?;
        assert_eq!(y.dims(), &[2, 3, 4]);
        assert_eq!(y.to_vec::<f32>()?, vec![0.0; 24], "{device}");
        let g = Tensor::gemm(&empty_k, &rhs, &hemi::GemmOptions::new(DType::F32))?;
        assert_eq!(g.to_vec::<f32>()?, vec![0.0; 24], "{device}");
    }
    Ok(())
}

/// Convolutions with a stride of `usize::MAX` (one output per axis) compute that output and its
/// gradients on the CPU: its im2col used to overflow finding the valid input run (found by the
/// fuzz harness, seed 7). The CUDA backend refuses strides beyond its 32-bit kernel parameters
/// with an error naming conv2d.
#[test]
fn convolution_with_a_huge_stride_has_one_output_per_axis() -> Result<()> {
    for device in common::devices() {
        let x = Tensor::randn([1, 2, 5, 5], DType::F32, device)?.requires_grad_(true)?;
        let w = Tensor::randn([3, 2, 3, 3], DType::F32, device)?.requires_grad_(true)?;
        let p = Conv2dParams::new(usize::MAX, 2);
        if device != Device::Cpu {
            err_mentions(x.conv2d(&w, None, p), &["conv2d", "stride"]);
            continue;
        }
        let y = x.conv2d(&w, None, p)?;
        assert_eq!(y.dims(), &[1, 3, 1, 1]);
        // Output (0, 0) sees input pixel (0, 0) only, under tap (2, 2) (padding 2).
        let (xv, wv, yv) = (x.to_vec::<f32>()?, w.to_vec::<f32>()?, y.to_vec::<f32>()?);
        for co in 0..3 {
            let want = wv[co * 18 + 8] * xv[0] + wv[co * 18 + 9 + 8] * xv[25];
            assert!((yv[co] - want).abs() <= 1e-5 * (1.0 + want.abs()));
        }
        y.sum_all()?.backward()?;
        let dx = x.grad().expect("dx").to_vec::<f32>()?;
        assert_eq!(
            dx.iter().filter(|&&g| g != 0.0).count(),
            2,
            "only pixel (0, 0) of each channel"
        );
    }
    Ok(())
}

#[test]
fn max_pool_with_a_padded_kernel_far_longer_than_the_input_finishes() -> Result<()> {
    // Kernel 2·10^12 + 1 columns, padding 10^12, over a 3-column input: every window covers
    // the whole row. The CPU visits only the taps that land inside the input (it used to walk
    // every tap of every window, and would have listed them all).
    let k = 2_000_000_000_001usize;
    let x = Tensor::from_slice(
        &[1.0f32, 5.0, -2.0, 4.0, 0.5, 3.0],
        [1, 2, 1, 3],
        Device::Cpu,
    )?
    .requires_grad_(true)?;
    let p = MaxPool2dParams {
        kernel: (1, k),
        stride: (1, 1),
        padding: (0, k / 2),
        dilation: (1, 1),
    };
    let y = x.max_pool2d(p)?;
    assert_eq!(y.dims(), &[1, 2, 1, 3]);
    assert_eq!(y.to_vec::<f32>()?, [5.0, 5.0, 5.0, 4.0, 4.0, 4.0]);
    y.sum_all()?.backward()?;
    let dx = x.grad().expect("dx").to_vec::<f32>()?;
    assert_eq!(dx, [0.0, 3.0, 0.0, 3.0, 0.0, 0.0]);
    Ok(())
}
