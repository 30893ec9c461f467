//! The CUDA backend on the host emulator (and on a GPU when one is present): primitive
//! self-tests, elementwise ops and casts against the CPU backend at odd sizes, transfers,
//! memory accounting and error reporting.
#![cfg(feature = "cuda")]

use hemi::backend::{BinaryOp, UnaryOp};
use hemi::cuda::driver::sim::SimDriver;
use hemi::cuda::driver::{Driver, LaunchConfig};
use hemi::{bf16, f16, kernel_args, DType, Device, Error, Generator, Result, Tensor};

/// The CUDA devices to test: the emulator always; GPUs when present (else says why not).
fn cuda_devices() -> Vec<Device> {
    let status = hemi::cuda::init();
    if let Some(why) = &status.gpu_unavailable {
        eprintln!("cuda tests: running on cuda-sim; skipping cuda (GPU): {why}");
    }
    status.devices.clone()
}

/// A device buffer on the emulator, for the primitive tests.
struct Buf<'a> {
    d: &'a SimDriver,
    ptr: u64,
    bytes: usize,
}

impl<'a> Buf<'a> {
    fn from<T: bytemuck::Pod>(d: &'a SimDriver, v: &[T]) -> Self {
        let bytes = std::mem::size_of_val(v).max(1);
        let ptr = d.alloc(bytes).expect("alloc");
        // SAFETY: `ptr` is a fresh allocation of exactly these bytes.
        unsafe { d.upload(ptr, bytemuck::cast_slice(v)) }.expect("upload");
        Buf { d, ptr, bytes }
    }
    fn read<T: bytemuck::Pod + Default + Clone>(&self, n: usize) -> Vec<T> {
        let mut out = vec![T::default(); n];
        assert!(
            n * std::mem::size_of::<T>() <= self.bytes,
            "read past the buffer"
        );
        // SAFETY: within this buffer's allocation (checked above).
        unsafe {
            self.d
                .download(self.ptr, bytemuck::cast_slice_mut(&mut out))
        }
        .expect("download");
        out
    }
}

impl Drop for Buf<'_> {
    fn drop(&mut self) {
        // SAFETY: allocated in `from` with these bytes; freed once, here.
        unsafe { self.d.free(self.ptr, self.bytes) };
    }
}

fn grid(blocks: u32, threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid: [blocks, 1, 1],
        block: [threads, 1, 1],
        smem,
    }
}

#[test]
fn primitives_follow_cuda_semantics() {
    let d = SimDriver::new();
    let n = 96; // three warps in one block of 96 threads
    let input: Vec<i32> = (0..n).map(|i| i * 10 + 1).collect();
    let (x, y) = (
        Buf::from(&d, &input),
        Buf::from(&d, &vec![0i32; n as usize]),
    );
    let (mut px, mut py) = (x.ptr, y.ptr);
    // SAFETY: selftest_shfl(const int*, int*) with n ints each.
    unsafe {
        d.launch(
            "selftest_shfl",
            grid(1, n as u32, 0),
            &mut kernel_args![px, py],
        )
    }
    .expect("shfl");
    let got: Vec<i32> = y.read(n as usize);
    for (t, &v) in got.iter().enumerate() {
        let src = (t / 32) * 32 + ((t % 32) * 7 + 3) % 32;
        assert_eq!(v, input[src], "shfl lane {t}");
    }

    let f: Vec<f32> = (0..64).map(|i| (i as f32 - 20.5) * 0.5).collect();
    let (x, a, b) = (
        Buf::from(&d, &f),
        Buf::from(&d, &[0f32; 64]),
        Buf::from(&d, &[0f32; 64]),
    );
    let (mut px, mut pa, mut pb) = (x.ptr, a.ptr, b.ptr);
    // SAFETY: selftest_shfl_xor_down(const float*, float*, float*), 64 floats each.
    unsafe {
        d.launch(
            "selftest_shfl_xor_down",
            grid(2, 32, 0),
            &mut kernel_args![px, pa, pb],
        )
    }
    .expect("xor");
    let (gx, gd): (Vec<f32>, Vec<f32>) = (a.read(64), b.read(64));
    for t in 0..64 {
        let lane = t % 32;
        assert_eq!(gx[t], f[(t / 32) * 32 + (lane ^ 5)], "shfl_xor {t}");
        let down = if lane + 3 < 32 { t + 3 } else { t };
        assert_eq!(gd[t], f[down], "shfl_down {t}");
    }

    let ballots = Buf::from(&d, &[0u32; 2]);
    let (mut px, mut pb) = (x.ptr, ballots.ptr);
    // SAFETY: selftest_ballot(const float*, unsigned*): 64 inputs, 2 outputs.
    unsafe { d.launch("selftest_ballot", grid(1, 64, 0), &mut kernel_args![px, pb]) }
        .expect("ballot");
    let got: Vec<u32> = ballots.read(2);
    for w in 0..2 {
        let want = (0..32)
            .filter(|&i| f[w * 32 + i] > 0.0)
            .fold(0u32, |m, i| m | 1 << i);
        assert_eq!(got[w], want, "ballot warp {w}");
    }

    let m = 100usize;
    let v: Vec<f32> = (0..m * 3).map(|i| i as f32).collect();
    let (x, y) = (Buf::from(&d, &v), Buf::from(&d, &vec![0f32; m * 3]));
    let (mut px, mut py) = (x.ptr, y.ptr);
    // SAFETY: selftest_smem_reverse(const float*, float*), 3 blocks of m threads, m floats of smem.
    unsafe {
        d.launch(
            "selftest_smem_reverse",
            grid(3, m as u32, (m * 4) as u32),
            &mut kernel_args![px, py],
        )
    }
    .expect("smem");
    let got: Vec<f32> = y.read(m * 3);
    for blk in 0..3 {
        for t in 0..m {
            assert_eq!(
                got[blk * m + t],
                v[blk * m + m - 1 - t],
                "dynamic smem + barrier"
            );
        }
    }

    let k = 1000usize;
    let v: Vec<f32> = (0..k).map(|i| ((i * 37) % 101) as f32 * 0.25).collect();
    let (x, out) = (Buf::from(&d, &v), Buf::from(&d, &[0f32; 2]));
    let (mut px, mut pn, mut po) = (x.ptr, k as i32, out.ptr);
    // SAFETY: selftest_reduce(const float*, int, float*).
    unsafe {
        d.launch(
            "selftest_reduce",
            grid(4, 256, 0),
            &mut kernel_args![px, pn, po],
        )
    }
    .expect("reduce");
    let got: Vec<f32> = out.read(2);
    assert_eq!(
        got[0],
        v.iter().sum::<f32>(),
        "warp sums + static smem + atomics"
    );
    assert_eq!(got[1], v.iter().cloned().fold(0.0, f32::max));
}

#[test]
fn a_barrier_that_can_never_complete_is_an_error() {
    let d = SimDriver::new();
    let out = Buf::from(&d, &[0f32; 64]);
    let mut po = out.ptr;
    // SAFETY: selftest_bad_barrier(float*), 64 floats.
    let r = unsafe {
        d.launch(
            "selftest_bad_barrier",
            grid(1, 64, 0),
            &mut kernel_args![po],
        )
    };
    let msg = r.expect_err("divergent barrier").to_string();
    assert!(msg.contains("can never complete"), "{msg}");
    let bad = LaunchConfig {
        grid: [1, 1, 1],
        block: [2048, 1, 1],
        smem: 0,
    };
    // SAFETY: the launch is rejected before any argument is read.
    assert!(unsafe { d.launch("selftest_bad_barrier", bad, &mut kernel_args![po]) }.is_err());
    // SAFETY: as above.
    assert!(unsafe { d.launch("no_such_kernel", grid(1, 1, 0), &mut kernel_args![po]) }.is_err());
}

fn close(got: &[f64], want: &[f64], dt: DType, what: &str) {
    let rel = match dt {
        DType::F16 => 2f64.powi(-10),
        DType::BF16 => 2f64.powi(-7),
        _ => 2e-6,
    };
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= rel * w.abs().max(1e-30);
        assert!(ok, "{what}[{i}]: cuda {g} vs cpu {w}");
    }
}

#[test]
fn elementwise_ops_match_the_cpu_at_odd_sizes() -> Result<()> {
    for dev in cuda_devices() {
        let mut g = Generator::new(5);
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let x = Tensor::uniform_with(&mut g, [37, 29], 0.1, 3.0, dt, Device::Cpu)?;
            let xd = x.to_device(dev)?;
            let unary = [
                UnaryOp::Neg,
                UnaryOp::Exp,
                UnaryOp::Log,
                UnaryOp::Sqrt,
                UnaryOp::Rsqrt,
                UnaryOp::Abs,
                UnaryOp::Square,
                UnaryOp::Recip,
                UnaryOp::Relu,
                UnaryOp::Step,
                UnaryOp::Sign,
                UnaryOp::Affine {
                    mul: -1.5,
                    add: 0.25,
                },
                UnaryOp::Powf(1.7),
            ];
            for op in unary {
                let (c, s) = (x.t()?.unary_op(op)?, xd.t()?.unary_op(op)?);
                assert_eq!(s.device(), dev);
                close(
                    &s.to_f64_vec()?,
                    &c.to_f64_vec()?,
                    dt,
                    &format!("{op:?} {dt} on {dev}"),
                );
            }
            let row = Tensor::uniform_with(&mut g, [29], -2.0, 2.0, dt, Device::Cpu)?;
            let col = Tensor::uniform_with(&mut g, [37, 1], 0.5, 2.0, dt, Device::Cpu)?;
            let (rd, cd) = (row.to_device(dev)?, col.to_device(dev)?);
            for (name, c, s) in [
                ("add row", x.add(&row)?, xd.add(&rd)?),
                ("sub col", x.sub(&col)?, xd.sub(&cd)?),
                ("mul outer", col.mul(&row)?, cd.mul(&rd)?),
                ("div", x.div(&col)?, xd.div(&cd)?),
                ("maximum", x.maximum(&row)?, xd.maximum(&rd)?),
                ("minimum", x.minimum(&row)?, xd.minimum(&rd)?),
                ("eq", x.eq_mask(&x)?, xd.eq_mask(&xd)?),
            ] {
                close(
                    &s.to_f64_vec()?,
                    &c.to_f64_vec()?,
                    dt,
                    &format!("{name} {dt} on {dev}"),
                );
            }
            let _ = BinaryOp::Add;
        }
    }
    Ok(())
}

#[test]
fn casts_are_bit_exact_with_the_cpu_over_every_special_value() -> Result<()> {
    for dev in cuda_devices() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let halves = Tensor::from_vec(
            all.iter().map(|&b| f16::from_bits(b)).collect::<Vec<_>>(),
            [all.len()],
            Device::Cpu,
        )?;
        let bfloats = Tensor::from_vec(
            all.iter().map(|&b| bf16::from_bits(b)).collect::<Vec<_>>(),
            [all.len()],
            Device::Cpu,
        )?;
        let mut g = Generator::new(9);
        let mut bits: Vec<u32> = (0..20_000)
            .map(|_| g.int(0, u32::MAX as i64 + 1) as u32)
            .collect();
        bits.extend([
            0,
            0x8000_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0xffff_ffff,
            0x477f_f000,
            0x477f_efff,
            0x3380_0000,
            0x3300_0000,
            0x3300_0001,
            1,
        ]);
        let floats = Tensor::from_vec(
            bits.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>(),
            [bits.len()],
            Device::Cpu,
        )?;
        for (src, to) in [
            (&halves, DType::F32),
            (&halves, DType::BF16),
            (&bfloats, DType::F32),
            (&bfloats, DType::F16),
            (&floats, DType::F16),
            (&floats, DType::BF16),
        ] {
            let cpu = src.to_dtype(to)?.to_host()?;
            let cuda = src.to_device(dev)?.to_dtype(to)?.to_host()?;
            let (a, b): (Vec<u8>, Vec<u8>) = (raw(&cpu), raw(&cuda));
            let w = to.size_in_bytes();
            if let Some(i) =
                (0..a.len() / w).find(|&i| a[i * w..(i + 1) * w] != b[i * w..(i + 1) * w])
            {
                let src_bits = raw(&src.to_host()?);
                let sw = src.dtype().size_in_bytes();
                panic!(
                    "{} -> {to} on {dev}: element {i} (source bytes {:02x?}) cpu {:02x?} vs cuda {:02x?}",
                    src.dtype(),
                    &src_bits[i * sw..(i + 1) * sw],
                    &a[i * w..(i + 1) * w],
                    &b[i * w..(i + 1) * w]
                );
            }
        }
    }
    Ok(())
}

fn raw(s: &hemi::CpuStorage) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[test]
fn transfers_views_fill_and_autograd() -> Result<()> {
    for dev in cuda_devices() {
        let ints = Tensor::from_vec((0..1001i64).collect::<Vec<_>>(), [7, 11, 13], Device::Cpu)?;
        let d = ints.to_device(dev)?;
        assert_eq!(d.to_vec::<i64>()?, ints.to_vec::<i64>()?, "round trip");
        let p = d.permute(&[2, 0, 1])?.contiguous()?;
        assert_eq!(
            p.to_vec::<i64>()?,
            ints.permute(&[2, 0, 1])?.contiguous()?.to_vec::<i64>()?,
            "strided copy"
        );
        assert_eq!(
            Tensor::full([5], 2.5, DType::BF16, dev)?.to_vec::<bf16>()?,
            vec![bf16::from_f32(2.5); 5]
        );
        assert_eq!(
            Tensor::full([3], -1.0, DType::F64, dev)?.to_vec::<f64>()?,
            vec![-1.0; 3]
        );
        // Autograd works through device ops.
        let w = Tensor::from_vec(vec![1.0f32, -2.0, 3.0], [3], dev)?.requires_grad_(true)?;
        let y = w.mul(&w)?.relu()?;
        y.backward_with(&Tensor::ones([3], DType::F32, dev)?, false)?;
        assert_eq!(
            w.grad().expect("grad").to_vec::<f32>()?,
            vec![2.0, -4.0, 6.0]
        );
    }
    Ok(())
}

#[test]
fn unsupported_ops_and_out_of_memory_are_errors() -> Result<()> {
    let dev = Device::CudaSim;
    hemi::cuda::init();
    // Grouped convolution has no CUDA kernel (groups = 1 only).
    let x = Tensor::ones([1, 2, 4, 4], DType::F32, dev)?;
    let w = Tensor::ones([2, 1, 3, 3], DType::F32, dev)?;
    let grouped = hemi::Conv2dParams {
        groups: 2,
        ..Default::default()
    };
    match x.conv2d(&w, None, grouped) {
        Err(Error::Unsupported { op, msg, .. }) => {
            assert_eq!(op, "conv2d");
            assert!(msg.contains("groups = 2"), "{msg}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let huge = Tensor::zeros([1usize << 62], DType::F32, dev);
    assert!(matches!(huge, Err(Error::OutOfMemory { .. })), "{huge:?}");
    assert_eq!(
        Tensor::ones([3], DType::F32, dev)?.to_vec::<f32>()?,
        vec![1.0; 3],
        "still usable"
    );
    Ok(())
}

#[test]
fn reductions_and_softmax_match_the_cpu() -> Result<()> {
    for dev in cuda_devices() {
        let mut g = Generator::new(6);
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let x = Tensor::uniform_with(&mut g, [5, 33, 7], -3.0, 3.0, dt, Device::Cpu)?;
            let xd = x.to_device(dev)?;
            for (name, c, s) in [
                ("sum 1", x.sum(1, false)?, xd.sum(1, false)?),
                (
                    "mean 0,2",
                    x.mean_dims(&[0, 2], true)?,
                    xd.mean_dims(&[0, 2], true)?,
                ),
                ("max 2", x.max(2, false)?, xd.max(2, false)?),
                (
                    "min all",
                    x.min_dims(&[0, 1, 2], false)?,
                    xd.min_dims(&[0, 1, 2], false)?,
                ),
                ("softmax 1", x.softmax(1)?, xd.softmax(1)?),
                ("log_softmax 2", x.log_softmax(-1)?, xd.log_softmax(-1)?),
                (
                    "softmax of transposed",
                    x.transpose(0, 2)?.softmax(0)?,
                    xd.transpose(0, 2)?.softmax(0)?,
                ),
            ] {
                let (cs, ss) = (c.to_f64_vec()?, s.to_f64_vec()?);
                let scale = x.to_f64_vec()?.iter().map(|v| v.abs()).sum::<f64>();
                for (i, (a, b)) in ss.iter().zip(&cs).enumerate() {
                    let tol = match dt {
                        DType::F32 => 1e-6 * scale.max(1.0),
                        DType::F16 => 2f64.powi(-10) * b.abs().max(1.0) + 1e-5 * scale,
                        _ => 2f64.powi(-7) * b.abs().max(1.0) + 1e-5 * scale,
                    };
                    assert!(
                        (a - b).abs() <= tol,
                        "{name} {dt} on {dev} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn cross_entropy_forward_backward_and_bad_targets() -> Result<()> {
    for dev in cuda_devices() {
        let mut g = Generator::new(7);
        let (n, c) = (13, 9);
        let x = Tensor::uniform_with(&mut g, [n, c], -2.0, 2.0, DType::F32, Device::Cpu)?;
        let mut tv: Vec<i64> = (0..n).map(|_| g.int(0, c as i64)).collect();
        tv[3] = -100;
        let t = Tensor::from_vec(tv.clone(), [n], Device::Cpu)?;
        for (reduction, eps) in [
            (hemi::Reduction::Mean, 0.0),
            (hemi::Reduction::Sum, 0.2),
            (hemi::Reduction::None, 0.1),
        ] {
            let spec = hemi::CrossEntropySpec {
                reduction,
                label_smoothing: eps,
                ..Default::default()
            };
            let run = |d: Device| -> Result<(Vec<f64>, Vec<f64>)> {
                let xl = x.to_device(d)?.detach().requires_grad_(true)?;
                let loss = xl.cross_entropy(&t.to_device(d)?, spec)?;
                let seed = Tensor::ones(loss.shape().clone(), DType::F32, d)?;
                loss.backward_with(&seed, false)?;
                Ok((loss.to_f64_vec()?, xl.grad().expect("grad").to_f64_vec()?))
            };
            let ((lc, gc), (ls, gs)) = (run(Device::Cpu)?, run(dev)?);
            for (a, b) in ls.iter().zip(&lc).chain(gs.iter().zip(&gc)) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{spec:?} on {dev}: {a} vs {b}"
                );
            }
        }
        let mut bad = tv.clone();
        bad[7] = 9;
        let err = x
            .to_device(dev)?
            .cross_entropy(&Tensor::from_vec(bad, [n], dev)?, Default::default());
        assert_eq!(
            err.expect_err("bad target"),
            Error::TargetOutOfRange {
                op: "cross_entropy",
                target: 9,
                index: 7,
                classes: c
            }
        );
    }
    Ok(())
}

#[test]
fn grad_scaler_with_fused_adam_runs_on_the_device() -> Result<()> {
    use hemi::amp::{GradScaler, GradScalerConfig};
    use hemi::optim::{Adam, AdamConfig, Optimizer};
    for dev in cuda_devices() {
        let run = |d: Device| -> Result<(Vec<f32>, f64, u64)> {
            let w =
                Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.25], [4], d)?.requires_grad_(true)?;
            let x = Tensor::from_vec(vec![1.0f32, 2.0, -1.0, 0.5], [4], d)?;
            let mut opt = Adam::new(vec![w.clone()], AdamConfig::adam().lr(0.1).fused(true))?;
            let mut s = GradScaler::new(GradScalerConfig {
                growth_interval: 2,
                ..Default::default()
            })?;
            for step in 0..6 {
                opt.zero_grad();
                s.scale(&w.mul(&x)?.sum_all()?)?.backward()?;
                if step == 2 {
                    let mut gv = w.grad().expect("grad").to_vec::<f32>()?;
                    gv[1] = f32::NAN;
                    w.set_grad(Some(Tensor::from_vec(gv, [4], d)?))?;
                }
                s.step(&mut opt)?;
                s.update(None)?;
            }
            Ok((w.to_vec::<f32>()?, s.get_scale()?, s.skipped_steps()?))
        };
        let ((wc, sc, kc), (wd, sd, kd)) = (run(Device::Cpu)?, run(dev)?);
        assert_eq!((sd, kd), (sc, kc), "scale trajectory and skips on {dev}");
        for (a, b) in wd.iter().zip(&wc) {
            assert!((a - b).abs() <= 1e-5, "params on {dev}: {wd:?} vs {wc:?}");
        }
        // unscale_ through the multi-tensor kernel.
        let p = Tensor::from_vec(vec![2.0f32, 4.0], [2], dev)?.requires_grad_(true)?;
        let mut opt = Adam::new(vec![p.clone()], AdamConfig::adam())?;
        let mut s = GradScaler::new(GradScalerConfig {
            init_scale: 8.0,
            ..Default::default()
        })?;
        s.scale(&p.square()?.sum_all()?)?.backward()?;
        s.unscale_(&mut opt)?;
        assert_eq!(p.grad().expect("grad").to_vec::<f32>()?, vec![4.0, 8.0]);
    }
    Ok(())
}

#[test]
fn cat_and_narrow_on_the_device() -> Result<()> {
    for dev in cuda_devices() {
        let a = Tensor::from_vec((0..6).map(|i| i as f32).collect::<Vec<_>>(), [2, 3], dev)?;
        let b = Tensor::from_vec((10..14).map(|i| i as f32).collect::<Vec<_>>(), [2, 2], dev)?;
        let c = Tensor::cat(&[&a, &b], 1)?;
        assert_eq!(
            c.to_vec::<f32>()?,
            vec![0.0, 1.0, 2.0, 10.0, 11.0, 3.0, 4.0, 5.0, 12.0, 13.0]
        );
        assert_eq!(
            c.narrow(1, 2, 2)?.contiguous()?.to_vec::<f32>()?,
            vec![2.0, 10.0, 5.0, 12.0]
        );
    }
    Ok(())
}

fn f16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| f16::from_f32(x).to_bits()).collect()
}

#[test]
fn tensor_core_primitives_follow_the_ptx_layouts() {
    let d = SimDriver::new();
    let mut g = Generator::new(13);
    let mut rnd = |n: usize| -> Vec<f32> { (0..n).map(|_| g.uniform(-2.0, 2.0) as f32).collect() };
    for bf in [0i32, 1] {
        let (a, bt, c) = (rnd(256), rnd(128), rnd(128));
        let to_bits = |v: &[f32]| -> Vec<u16> {
            if bf == 1 {
                v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
            } else {
                f16_bits(v)
            }
        };
        let back = |b: u16| -> f64 {
            if bf == 1 {
                bf16::from_bits(b).to_f64()
            } else {
                f16::from_bits(b).to_f64()
            }
        };
        let (ab, bb) = (to_bits(&a), to_bits(&bt));
        let (da, db, dc, dd) = (
            Buf::from(&d, &ab),
            Buf::from(&d, &bb),
            Buf::from(&d, &c),
            Buf::from(&d, &[0f32; 128]),
        );
        let (mut pa, mut pb, mut pc, mut pd, mut flag) = (da.ptr, db.ptr, dc.ptr, dd.ptr, bf);
        // SAFETY: selftest_mma(const u16*, const u16*, const float*, float*, int) with 256,
        // 128, 128 and 128 elements; one warp.
        unsafe {
            d.launch(
                "selftest_mma",
                grid(1, 32, 0),
                &mut kernel_args![pa, pb, pc, pd, flag],
            )
        }
        .expect("mma");
        let got: Vec<f32> = dd.read(128);
        for r in 0..16 {
            for n in 0..8 {
                let exact: f64 = c[r * 8 + n] as f64
                    + (0..16)
                        .map(|k| back(ab[r * 16 + k]) * back(bb[n * 16 + k]))
                        .sum::<f64>();
                let bound: f64 = 16.0
                    * 2f64.powi(-23)
                    * (0..16)
                        .map(|k| (back(ab[r * 16 + k]) * back(bb[n * 16 + k])).abs())
                        .sum::<f64>()
                    + 1e-6;
                let v = got[r * 8 + n] as f64;
                assert!(
                    (v - exact).abs() <= bound,
                    "mma bf16={bf} D[{r}][{n}] = {v}, want {exact}"
                );
            }
        }
    }

    let m: Vec<u16> = (0..64).map(|i| i as u16 * 3 + 1).collect();
    let (dm, out) = (Buf::from(&d, &m), Buf::from(&d, &[0u32; 64]));
    let (mut pm, mut po) = (dm.ptr, out.ptr);
    // SAFETY: selftest_ldmatrix(const u16*, unsigned*) with 64 and 64 elements; one warp.
    unsafe {
        d.launch(
            "selftest_ldmatrix",
            grid(1, 32, 0),
            &mut kernel_args![pm, po],
        )
    }
    .expect("ldmatrix");
    let got: Vec<u32> = out.read(64);
    for t in 0..32 {
        let (row, col) = (t / 4, (t % 4) * 2);
        assert_eq!(
            got[t],
            m[row * 8 + col] as u32 | (m[row * 8 + col + 1] as u32) << 16,
            "ldmatrix lane {t}"
        );
        assert_eq!(
            got[32 + t],
            m[col * 8 + row] as u32 | (m[(col + 1) * 8 + row] as u32) << 16,
            "ldmatrix.trans lane {t}"
        );
    }

    let v: Vec<f32> = (0..128).map(|i| i as f32 + 0.5).collect();
    let (dv, out) = (Buf::from(&d, &v), Buf::from(&d, &[7f32; 128]));
    let (mut pv, mut po) = (dv.ptr, out.ptr);
    // SAFETY: selftest_cp_async(const float*, float*) with 128 floats each; one warp.
    unsafe {
        d.launch(
            "selftest_cp_async",
            grid(1, 32, 0),
            &mut kernel_args![pv, po],
        )
    }
    .expect("cp.async");
    let got: Vec<f32> = out.read(128);
    for i in 0..128 {
        let want = if (i / 4) % 2 == 0 { v[i] } else { 0.0 };
        assert_eq!(
            got[i], want,
            "cp.async element {i} (odd chunks zero-filled)"
        );
    }

    let (a, b) = (rnd(256), rnd(256));
    let (ab, bb) = (f16_bits(&a), f16_bits(&b));
    let (da, db, dd) = (
        Buf::from(&d, &ab),
        Buf::from(&d, &bb),
        Buf::from(&d, &[0f32; 256]),
    );
    let (mut pa, mut pb, mut pd) = (da.ptr, db.ptr, dd.ptr);
    // SAFETY: selftest_wmma(const half*, const half*, float*) with 256 elements each.
    unsafe {
        d.launch(
            "selftest_wmma",
            grid(1, 32, 0),
            &mut kernel_args![pa, pb, pd],
        )
    }
    .expect("wmma");
    let got: Vec<f32> = dd.read(256);
    let h = |x: u16| f16::from_bits(x).to_f64();
    for r in 0..16 {
        for n in 0..16 {
            // B is column-major: B[k][n] at n*16 + k.
            let exact = 0.5
                + (0..16)
                    .map(|k| h(ab[r * 16 + k]) * h(bb[n * 16 + k]))
                    .sum::<f64>();
            let bound = 16.0
                * 2f64.powi(-23)
                * (0..16)
                    .map(|k| (h(ab[r * 16 + k]) * h(bb[n * 16 + k])).abs())
                    .sum::<f64>()
                + 1e-6;
            assert!(
                (got[r * 16 + n] as f64 - exact).abs() <= bound,
                "wmma D[{r}][{n}]"
            );
        }
    }
}

#[test]
fn fused_adam_with_half_precision_gradients_matches_the_cpu() -> Result<()> {
    use hemi::backend::{AdamTensors, FusedAdamSpec};
    for dev in cuda_devices() {
        let mut g = Generator::new(17);
        for gdt in [DType::F32, DType::F16, DType::BF16] {
            let n = 1003;
            let p = Tensor::uniform_with(&mut g, [n], -1.0, 1.0, DType::F32, Device::Cpu)?;
            let grad = Tensor::uniform_with(&mut g, [n], -512.0, 512.0, gdt, Device::Cpu)?;
            let m = Tensor::uniform_with(&mut g, [n], -0.1, 0.1, DType::F32, Device::Cpu)?;
            let v = Tensor::uniform_with(&mut g, [n], 0.0, 0.1, DType::F32, Device::Cpu)?;
            let step = Tensor::full([1], 3.0, DType::F32, Device::Cpu)?;
            let scale = Tensor::full((), 256.0, DType::F32, Device::Cpu)?;
            let found = Tensor::zeros((), DType::F32, Device::Cpu)?;
            let spec = FusedAdamSpec {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                amsgrad: true,
                decoupled: true,
            };
            let run = |d: Device| -> Result<Vec<Vec<f64>>> {
                // Fresh copies on `d`: the step writes into them.
                let on = |t: &Tensor| t.to_device(d).and_then(|t| t.deep_copy());
                let (tp, tg, tm, tv, tvmax, ts) =
                    (on(&p)?, on(&grad)?, on(&m)?, on(&v)?, on(&v)?, on(&step)?);
                let t = AdamTensors {
                    param: tp.storage(),
                    grad: tg.storage(),
                    exp_avg: tm.storage(),
                    exp_avg_sq: tv.storage(),
                    max_exp_avg_sq: Some(tvmax.storage()),
                    step: ts.storage(),
                };
                let be = hemi::backend_for(d)?;
                be.adam_step(
                    &[t],
                    &spec,
                    Some(&on(&scale)?.storage()),
                    Some(&on(&found)?.storage()),
                )?;
                Ok(vec![
                    tp.to_f64_vec()?,
                    tg.to_f64_vec()?,
                    tm.to_f64_vec()?,
                    tv.to_f64_vec()?,
                    ts.to_f64_vec()?,
                ])
            };
            let (cpu, cuda) = (run(Device::Cpu)?, run(dev)?);
            for (k, (a, b)) in cuda.iter().zip(&cpu).enumerate() {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-5 * y.abs().max(1e-2),
                        "{gdt} grads on {dev}: output {k}[{i}] {x} vs {y}"
                    );
                }
            }
        }
    }
    Ok(())
}

mod bad_inputs {
    //! The public API driven with random bad inputs on the emulator (CI runs this file under
    //! AddressSanitizer): every call returns `Ok` or `Err`, none reads or writes outside a
    //! buffer, none panics.
    use hemi::backend::{BinaryOp, ReduceOp, UnaryOp};
    use hemi::{backend_for, CrossEntropySpec, DType, Device, Layout, Shape, Tensor};
    use proptest::prelude::*;

    fn tensor(len: usize, dt: DType) -> Tensor {
        hemi::cuda::init();
        Tensor::uniform([len], -2.0, 2.0, dt, Device::CudaSim).expect("tensor")
    }

    fn layout() -> impl Strategy<Value = Layout> {
        (
            prop::collection::vec(0usize..9, 0..4),
            prop::collection::vec(0usize..12, 0..4),
            0usize..40,
        )
            .prop_map(|(dims, strides, offset)| Layout::new(Shape::new(dims), strides, offset))
    }

    fn dtype() -> impl Strategy<Value = DType> {
        prop::sample::select(vec![
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::I64,
            DType::F64,
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Backend calls with layouts that may address past the buffer, odd dtypes and
        /// lengths: errors, never out-of-bounds accesses.
        #[test]
        fn backend_calls_with_bad_layouts(
            len in 0usize..30,
            dt in dtype(),
            la in layout(),
            lb in layout(),
            dims in prop::collection::vec(0usize..5, 0..3),
            offset in 0usize..40,
        ) {
            hemi::cuda::init();
            let be = backend_for(Device::CudaSim).expect("cuda-sim");
            let (a, b) = (tensor(len, DType::F32), tensor(len / 2 + 1, DType::F32));
            let (sa, sb) = (a.storage(), b.storage());
            let _ = be.to_host(&sa, &la);
            let _ = be.copy_strided(&sa, &la);
            let _ = be.cast(&sa, &la, dt);
            let _ = be.unary(UnaryOp::Exp, &sa, &la);
            let _ = be.binary(BinaryOp::Add, &sa, &la, &sb, &lb);
            let _ = be.reduce(ReduceOp::Sum, &sa, &la, &dims);
            let _ = be.cat(&[(sa.clone(), la.clone()), (sb.clone(), lb.clone())], 0);
            let _ = be.copy_into(&sb, offset, &sa, &la);
            let _ = be.accumulate(&sa, &sb);
            let _ = be.softmax(&sa, (len, 2, 3), false);
            let _ = be.full(dt, len, 1.5);
            let _ = be.non_finite_check_and_unscale(std::slice::from_ref(&sa), &sb, &sb);
            // The buffers are unchanged in size and still readable.
            prop_assert_eq!(a.to_vec::<f32>().expect("a").len(), len);
        }

        /// Geometry arguments that disagree with the buffers they describe.
        #[test]
        fn backend_calls_with_bad_geometry(
            len in 0usize..40,
            (batch, m, n, k) in (0usize..4, 0usize..6, 0usize..6, 0usize..6),
            la in layout(),
            lb in layout(),
            (o, sz, inner) in (0usize..7, 0usize..7, 0usize..4),
            (rows, classes) in (0usize..6, 0usize..9),
            tlen in 0usize..8,
        ) {
            use hemi::backend::{AdamTensors, FusedAdamSpec, MatmulSpec, ScaleState, ScaleUpdateSpec, SgdSpec, SgdTensors};
            hemi::cuda::init();
            let be = backend_for(Device::CudaSim).expect("cuda-sim");
            let (a, b) = (tensor(len, DType::F16), tensor(len / 3 + 1, DType::F16));
            let (sa, sb) = (a.storage(), b.storage());
            let _ = be.matmul(&sa, &la, &sb, &lb, &MatmulSpec { batch, m, n, k });
            let _ = be.softmax(&sa, (o, sz, inner), true);
            let _ = be.softmax_backward(&sa, &sb, (o, sz, inner), false);
            let t = Tensor::full([tlen], 1.0, DType::I64, Device::CudaSim).expect("t").storage();
            let _ = be.cross_entropy(&sa, &t, (rows, classes), &CrossEntropySpec::default());
            let _ = be.cross_entropy_backward(&sa, &t, &sb, (rows, classes), &CrossEntropySpec::default());
            let f32s = |n: usize| tensor(n, DType::F32).storage();
            let adam = AdamTensors {
                param: f32s(len),
                grad: sa.clone(),
                exp_avg: f32s(len / 2),
                exp_avg_sq: f32s(len),
                max_exp_avg_sq: Some(f32s(tlen)),
                step: f32s(tlen),
            };
            let spec = FusedAdamSpec { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0, amsgrad: true, decoupled: false };
            let _ = be.adam_step(&[adam], &spec, Some(&sb), Some(&t));
            let sgd = SgdTensors { param: f32s(len), grad: sb.clone(), momentum_buffer: Some(f32s(tlen)) };
            let sspec = SgdSpec { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: false, first_step: true };
            let _ = be.sgd_step(&[sgd], &sspec, None);
            let state = ScaleState { scale: sa.clone(), growth_tracker: t.clone(), hysteresis_tracker: f32s(1) };
            let uspec = ScaleUpdateSpec { growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 3, min_scale: 0.0, max_scale: f64::INFINITY, hysteresis: 1 };
            let _ = be.update_scale(&state, &sb, &uspec);
            prop_assert_eq!(a.to_vec::<half::f16>().expect("a").len(), len);
        }

        /// Tensor-level ops with mismatched shapes, dims and targets.
        #[test]
        fn tensor_ops_with_bad_arguments(
            m in 0usize..6, k in 0usize..6, n in 0usize..6, k2 in 0usize..6,
            dim in -4isize..4,
            start in 0usize..8, width in 0usize..8,
            target in -3i64..9,
            dt in prop::sample::select(vec![DType::F32, DType::F16, DType::BF16]),
        ) {
            let a = tensor(m * k, dt).reshape([m, k]).expect("reshape");
            let b = tensor(k2 * n, dt).reshape([k2, n]).expect("reshape");
            let _ = a.matmul(&b);
            let _ = a.linear(&b, None);
            let _ = a.softmax(dim);
            let _ = a.log_softmax(dim);
            let _ = a.narrow(dim, start, width).and_then(|v| v.contiguous());
            let _ = a.sum(dim, true);
            let _ = a.max(dim, false);
            let _ = Tensor::cat(&[&a, &b], dim);
            let _ = a.transpose(dim, 1).and_then(|t| t.contiguous());
            let _ = a.assign(&b);
            let _ = a.add_(&b);
            let t = Tensor::full([m], target as f64, DType::I64, Device::CudaSim).expect("targets");
            let _ = a.cross_entropy(&t, CrossEntropySpec::default());
            let _ = a.cross_entropy(&t, CrossEntropySpec { label_smoothing: 1.5, ..Default::default() });
            let _ = Tensor::from_storage_ref(a.storage(), [m + 1, k]);
            prop_assert_eq!(a.dims(), &[m, k]);
        }
    }
}

/// The emulator's checkers on small kernels written to break one rule each (the mutation
/// tests of real kernels are in tests/sim_checks.rs).
mod checkers {
    use super::{grid, Buf};
    use hemi::cuda::driver::sim::SimDriver;
    use hemi::cuda::driver::Driver;
    use hemi::kernel_args;

    fn checks_on(test: &str) -> bool {
        match SimDriver::checkers_inactive() {
            Some(why) => {
                eprintln!("SKIPPED {test}: {why}");
                false
            }
            None => true,
        }
    }

    #[test]
    fn racecheck_needs_a_warp_barrier_between_lanes() {
        if !checks_on("racecheck_needs_a_warp_barrier_between_lanes") {
            return;
        }
        let d = SimDriver::new();
        let v: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let (x, y) = (Buf::from(&d, &v), Buf::from(&d, &[0f32; 64]));
        let (mut px, mut py) = (x.ptr, y.ptr);
        for sync in [1i32, 0] {
            let mut s = sync;
            // Program order: each lane reads after the lane below wrote (in a shaken order the
            // read may come first, which initcheck reports instead).
            SimDriver::shake_this_thread(Some(0));
            // SAFETY: selftest_warp_shift(const float*, float*, int): 64 floats each, 64 threads.
            let r = unsafe {
                d.launch(
                    "selftest_warp_shift",
                    grid(1, 64, 0),
                    &mut kernel_args![px, py, s],
                )
            };
            SimDriver::shake_this_thread(None);
            if sync == 1 {
                r.expect("with __syncwarp the exchange is ordered");
                let got: Vec<f32> = y.read(64);
                for (t, g) in got.iter().enumerate() {
                    let from = if t % 32 == 0 { t } else { t - 1 };
                    assert_eq!(*g, v[from], "lane {t}");
                }
            } else {
                let msg = r.expect_err("a missing __syncwarp").to_string();
                assert!(
                    msg.contains("selftest_warp_shift") && msg.contains("racecheck"),
                    "{msg}"
                );
                assert!(msg.contains("static shared memory"), "{msg}");
            }
        }
    }

    #[test]
    fn initcheck_reports_reads_of_device_memory_never_written() {
        if !checks_on("initcheck_reports_reads_of_device_memory_never_written") {
            return;
        }
        let d = SimDriver::new();
        let half = Buf::from(&d, &[1.5f32; 32]);
        let out = Buf::from(&d, &[0f32; 64]);
        // A 64-float block of which only the first 32 floats are uploaded.
        let ptr = d.alloc(256).expect("alloc");
        // SAFETY: 128 bytes into a 256-byte allocation.
        unsafe { d.upload(ptr, &[0u8; 128]) }.expect("upload");
        let (mut pi, mut po) = (ptr, out.ptr);
        // Program order, so the first thread to read unwritten bytes is thread 32.
        SimDriver::shake_this_thread(Some(0));
        // SAFETY: selftest_smem_reverse(const float*, float*): one block of 64 threads reads
        // in[0..64] (all inside the 256-byte allocation) and writes out[0..64].
        let r = unsafe {
            d.launch(
                "selftest_smem_reverse",
                grid(1, 64, 64 * 4),
                &mut kernel_args![pi, po],
            )
        };
        SimDriver::shake_this_thread(None);
        let msg = r.expect_err("half the input was never written").to_string();
        assert!(
            msg.contains("initcheck") && msg.contains("never written"),
            "{msg}"
        );
        assert!(
            msg.contains("offset 0x80"),
            "the first unwritten byte: {msg}"
        );
        // Uploaded in full, the same launch passes.
        let mut pf = half.ptr;
        // SAFETY: as above, with a 32-float input and 32 threads.
        unsafe {
            d.launch(
                "selftest_smem_reverse",
                grid(1, 32, 32 * 4),
                &mut kernel_args![pf, po],
            )
        }
        .expect("fully written input");
        // SAFETY: allocated above with 256 bytes; freed once.
        unsafe { d.free(ptr, 256) };
    }

    #[test]
    fn a_thread_must_wait_for_its_cp_async_copies() {
        if !checks_on("a_thread_must_wait_for_its_cp_async_copies") {
            return;
        }
        let d = SimDriver::new();
        let (x, y) = (Buf::from(&d, &[2f32; 128]), Buf::from(&d, &[0f32; 32]));
        let (mut px, mut py) = (x.ptr, y.ptr);
        // SAFETY: selftest_cp_async_no_wait(const float*, float*): 128 and 32 floats; one warp.
        let r = unsafe {
            d.launch(
                "selftest_cp_async_no_wait",
                grid(1, 32, 0),
                &mut kernel_args![px, py],
            )
        };
        let msg = r.expect_err("copies never waited for").to_string();
        assert!(
            msg.contains("selftest_cp_async_no_wait") && msg.contains("never waited for"),
            "{msg}"
        );
    }

    #[test]
    fn synccheck_rejects_a_warp_mask_without_the_calling_lane() {
        let d = SimDriver::new();
        let y = Buf::from(&d, &[0f32; 32]);
        let mut py = y.ptr;
        // SAFETY: selftest_syncwarp_foreign_mask(float*): 32 floats; one warp.
        let r = unsafe {
            d.launch(
                "selftest_syncwarp_foreign_mask",
                grid(1, 32, 0),
                &mut kernel_args![py],
            )
        };
        let msg = r.expect_err("foreign mask").to_string();
        assert!(
            msg.contains("synccheck") && msg.contains("excludes the calling lane"),
            "{msg}"
        );
    }

    #[test]
    fn synccheck_rejects_threads_waiting_at_different_barriers() {
        let d = SimDriver::new();
        let y = Buf::from(&d, &[0f32; 64]);
        let mut py = y.ptr;
        // SAFETY: selftest_divergent_barrier(float*): 64 floats; 64 threads.
        let r = unsafe {
            d.launch(
                "selftest_divergent_barrier",
                grid(1, 64, 0),
                &mut kernel_args![py],
            )
        };
        let msg = r.expect_err("divergent barrier").to_string();
        assert!(
            msg.contains("synccheck") && msg.contains("different __syncthreads"),
            "{msg}"
        );
        // Both call sites are named (when the binary has debug information: release bundles
        // are stripped).
        assert!(
            msg.contains("selftest.cu:") || msg.contains("no source location"),
            "both call sites are named: {msg}"
        );
    }

    /// The last writer of one global word, under a shaker seed.
    fn last_writer(d: &SimDriver, seed: u64) -> i32 {
        let y = Buf::from(d, &[-1i32]);
        let mut py = y.ptr;
        SimDriver::shake_this_thread(Some(seed));
        // SAFETY: selftest_last_writer(int*): one int; 4 blocks of 64 threads.
        let r = unsafe {
            d.launch(
                "selftest_last_writer",
                grid(4, 64, 0),
                &mut kernel_args![py],
            )
        };
        SimDriver::shake_this_thread(None);
        r.expect("launch");
        y.read::<i32>(1)[0]
    }

    #[test]
    fn the_shaker_reorders_blocks_and_threads_reproducibly() {
        let d = SimDriver::new();
        assert_eq!(
            last_writer(&d, 0),
            255,
            "program order: the last thread of the last block"
        );
        let shaken: Vec<i32> = (1..=8).map(|s| last_writer(&d, s)).collect();
        assert!(
            shaken.iter().any(|&w| w != 255),
            "8 seeds all kept program order: {shaken:?}"
        );
        assert!(
            shaken.iter().any(|&w| w % 64 != 63),
            "the threads of a block are never reordered: {shaken:?}"
        );
        for s in 1..=8u64 {
            assert_eq!(
                last_writer(&d, s),
                shaken[s as usize - 1],
                "seed {s} reproduces"
            );
        }
    }
}
