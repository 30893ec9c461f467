//! GEMM kernels on the CUDA backend (emulated in CI, on a GPU when present): every kernel
//! against an f64 reference within DESIGN.md's bound, over shapes (odd and tile multiples),
//! layouts (NN, NT, TN via strides), dtypes, alpha/beta/bias and output dtypes; NaN/inf
//! propagation; and `Tensor::matmul` / `linear` with autograd on the device.
#![cfg(feature = "cuda")]

mod common;

use hemi::{DType, Device, Generator, Result, Tensor};
use hemi::{GemmAlgo as GemmKernel, GemmOptions};
use proptest::prelude::*;

fn dev() -> Device {
    let status = hemi::cuda::init();
    if let Some(why) = &status.gpu_unavailable {
        eprintln!("gemm tests: running on cuda-sim; skipping cuda (GPU): {why}");
    }
    status
        .devices
        .iter()
        .copied()
        .find(|d| matches!(d, Device::Cuda(_)))
        .unwrap_or(Device::CudaSim)
}

/// A `[batch, rows, cols]` operand, stored transposed when `trans` (then viewed back).
fn operand(
    g: &mut Generator,
    batch: usize,
    rows: usize,
    cols: usize,
    trans: bool,
    dt: DType,
    d: Device,
) -> Result<Tensor> {
    if trans {
        Tensor::uniform_with(g, [batch, cols, rows], -1.0, 1.0, dt, d)?.transpose(1, 2)
    } else {
        Tensor::uniform_with(g, [batch, rows, cols], -1.0, 1.0, dt, d)
    }
}

/// A, B, the output, C (empty without it) and the bias, as f64.
type Values = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Option<Vec<f64>>);

#[allow(clippy::too_many_arguments)]
fn check(
    kernel: GemmKernel,
    in_dt: DType,
    out_dt: DType,
    (batch, m, n, k): (usize, usize, usize, usize),
    ta: bool,
    tb: bool,
    alpha: f32,
    beta: Option<f32>,
    bias: bool,
    seed: u64,
) -> std::result::Result<(), String> {
    let d = dev();
    let mut g = Generator::new(seed);
    let mut run = || -> Result<Values> {
        let a = operand(&mut g, batch, m, k, ta, in_dt, d)?;
        let b = operand(&mut g, batch, k, n, tb, in_dt, d)?;
        let c = match beta {
            Some(_) => Some(Tensor::uniform_with(
                &mut g,
                [batch, m, n],
                -1.0,
                1.0,
                out_dt,
                d,
            )?),
            None => None,
        };
        let bias_t = if bias {
            Some(Tensor::uniform_with(&mut g, [n], -1.0, 1.0, DType::F32, d)?)
        } else {
            None
        };
        let o = GemmOptions {
            alpha,
            beta: beta.unwrap_or(0.0),
            c: c.clone(),
            bias: bias_t.clone(),
            out_dtype: out_dt,
            algo: kernel,
        };
        let out = Tensor::gemm(&a, &b, &o)?;
        Ok((
            a.contiguous()?.to_f64_vec()?,
            b.contiguous()?.to_f64_vec()?,
            out.to_f64_vec()?,
            c.map(|c| c.to_f64_vec()).transpose()?.unwrap_or_default(),
            bias_t.map(|t| t.to_f64_vec()).transpose()?,
        ))
    };
    let (av, bv, got, cv, biasv) = run().map_err(|e| e.to_string())?;
    for z in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let (mut acc, mut abs) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let t = av[(z * m + i) * k + p] * bv[(z * k + p) * n + j];
                    acc += t;
                    abs += t.abs();
                }
                let idx = (z * m + i) * n + j;
                let cterm = beta.map_or(0.0, |bt| bt as f64 * cv[idx]);
                let bterm = biasv.as_ref().map_or(0.0, |b| b[j]);
                let want = alpha as f64 * acc + cterm + bterm;
                let epi = 2f64.powi(-22) * ((alpha as f64 * acc).abs() + cterm.abs() + bterm.abs());
                let bound = alpha.abs() as f64 * k as f64 * 2f64.powi(-23) * abs
                    + common::u_out(out_dt) * want.abs() * 1.01
                    + epi
                    + 2f64.powi(-24);
                let v = got[idx];
                if (v - want).abs() > bound {
                    return Err(format!("{kernel:?} {in_dt}->{out_dt} [{batch},{m},{n},{k}] ta={ta} tb={tb} at ({z},{i},{j}): {v} vs {want} (bound {bound})"));
                }
            }
        }
    }
    Ok(())
}

/// Every kernel with the input dtypes it takes.
const KERNELS: [(GemmKernel, DType); 5] = [
    (GemmKernel::SimtF32, DType::F32),
    (GemmKernel::Wmma, DType::F16),
    (GemmKernel::Wmma, DType::BF16),
    (GemmKernel::MmaPipeline, DType::F16),
    (GemmKernel::MmaPipeline, DType::BF16),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn every_kernel_is_within_the_gemm_bound(
        m in 1usize..80, n in 1usize..80, k in 1usize..70, batch in 1usize..3,
        ta in any::<bool>(), tb in any::<bool>(), which in 0usize..5, out_i in 0usize..3,
        alpha_i in 0usize..3, with_c in any::<bool>(), bias in any::<bool>(), seed in any::<u64>(),
    ) {
        let (kernel, in_dt) = KERNELS[which];
        // The mma.sync kernel's layout preconditions: K, M when A is transposed and N when B
        // is n-contiguous are multiples of 8.
        let (k, m, n) = if kernel == GemmKernel::MmaPipeline {
            let m = if ta { m.next_multiple_of(8) } else { m };
            (k.next_multiple_of(8), m, if tb { n } else { n.next_multiple_of(8) })
        } else {
            (k, m, n)
        };
        let out_dt = [DType::F32, DType::F16, DType::BF16][out_i];
        let alpha = [1.0f32, -0.5, 2.0][alpha_i];
        let beta = with_c.then_some(0.75f32);
        let r = check(kernel, in_dt, out_dt, (batch, m, n, k), ta, tb, alpha, beta, bias, seed);
        prop_assert!(r.is_ok(), "{}", r.err().unwrap_or_default());
    }
}

#[test]
fn tile_multiples_and_k_tails() {
    for (which, (kernel, dt)) in [
        (GemmKernel::SimtF32, DType::F32),
        (GemmKernel::Wmma, DType::F16),
        (GemmKernel::Wmma, DType::BF16),
    ]
    .into_iter()
    .enumerate()
    {
        for shape in [
            (1, 64, 64, 64),
            (1, 128, 64, 32),
            (2, 64, 128, 17),
            (1, 65, 63, 129),
            (1, 1, 1, 1),
        ] {
            let r = check(
                kernel,
                dt,
                dt,
                shape,
                which == 1,
                false,
                1.0,
                None,
                false,
                3,
            );
            assert!(r.is_ok(), "{}", r.err().unwrap_or_default());
        }
    }
}

#[test]
fn mma_pipeline_over_several_tiles_and_its_layout_check() -> Result<()> {
    for dt in [DType::F16, DType::BF16] {
        for (shape, tb) in [
            ((1, 200, 136, 72), false),
            ((2, 129, 130, 40), true),
            ((1, 256, 256, 64), false),
        ] {
            let r = check(
                GemmKernel::MmaPipeline,
                dt,
                DType::F32,
                shape,
                false,
                tb,
                1.0,
                Some(0.5),
                true,
                11,
            );
            assert!(r.is_ok(), "{}", r.err().unwrap_or_default());
        }
    }
    let d = dev();
    let a = Tensor::ones([4, 6], DType::F16, d)?; // K = 6: not a multiple of 8
    let o = GemmOptions {
        alpha: 1.0,
        beta: 0.0,
        c: None,
        bias: None,
        out_dtype: DType::F32,
        algo: GemmKernel::MmaPipeline,
    };
    assert!(
        Tensor::gemm(&a, &Tensor::ones([6, 8], DType::F16, d)?, &o).is_err(),
        "the layout check refuses"
    );
    let m = a.matmul(&Tensor::ones([6, 8], DType::F16, d)?)?; // Tensor::matmul falls back to wmma
    assert_eq!(m.to_vec::<hemi::f16>()?, vec![hemi::f16::from_f32(6.0); 32]);
    Ok(())
}

#[test]
fn nan_and_inf_propagate() -> Result<()> {
    let d = dev();
    for (kernel, dt) in [
        (GemmKernel::SimtF32, DType::F32),
        (GemmKernel::Wmma, DType::F16),
        (GemmKernel::Wmma, DType::BF16),
    ] {
        let mut av = vec![0.5f32; 5 * 7];
        av[2 * 7 + 3] = f32::NAN; // row 2 of A
        let mut bv = vec![0.25f32; 7 * 6];
        bv[4 * 6 + 1] = f32::INFINITY; // column 1 of B (times 0.5: +inf)
        let a = Tensor::from_vec(av, [5, 7], Device::Cpu)?
            .to_dtype(dt)?
            .to_device(d)?;
        let b = Tensor::from_vec(bv, [7, 6], Device::Cpu)?
            .to_dtype(dt)?
            .to_device(d)?;
        let o = GemmOptions {
            alpha: 1.0,
            beta: 0.0,
            c: None,
            bias: None,
            out_dtype: DType::F32,
            algo: kernel,
        };
        let out = Tensor::gemm(&a, &b, &o)?.to_vec::<f32>()?;
        for i in 0..5 {
            for j in 0..6 {
                let v = out[i * 6 + j];
                match (i, j) {
                    (2, _) => assert!(
                        v.is_nan(),
                        "{kernel:?} {dt}: row with NaN gives NaN at ({i},{j}), got {v}"
                    ),
                    (_, 1) => {
                        assert_eq!(v, f32::INFINITY, "{kernel:?} {dt}: inf column at ({i},{j})")
                    }
                    _ => assert!(v.is_finite(), "{kernel:?} {dt}: ({i},{j}) = {v}"),
                }
            }
        }
    }
    Ok(())
}

#[test]
fn matmul_and_linear_with_autograd_on_the_device() -> Result<()> {
    let d = dev();
    let mut g = Generator::new(21);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let x = Tensor::uniform_with(&mut g, [2, 9, 13], -1.0, 1.0, DType::F32, Device::Cpu)?;
        let w = Tensor::uniform_with(&mut g, [5, 13], -1.0, 1.0, DType::F32, Device::Cpu)?;
        let b = Tensor::uniform_with(&mut g, [5], -1.0, 1.0, DType::F32, Device::Cpu)?;
        let run = |dv: Device| -> Result<Vec<Vec<f64>>> {
            let (xl, wl, bl) = (
                x.to_device(dv)?
                    .to_dtype(dt)?
                    .detach()
                    .requires_grad_(true)?,
                w.to_device(dv)?
                    .to_dtype(dt)?
                    .detach()
                    .requires_grad_(true)?,
                b.to_device(dv)?
                    .to_dtype(dt)?
                    .detach()
                    .requires_grad_(true)?,
            );
            let y = xl.linear(&wl, Some(&bl))?;
            y.backward_with(&Tensor::ones(y.shape().clone(), dt, dv)?, false)?;
            Ok(vec![
                y.to_f64_vec()?,
                xl.grad().expect("gx").to_f64_vec()?,
                wl.grad().expect("gw").to_f64_vec()?,
                bl.grad().expect("gb").to_f64_vec()?,
            ])
        };
        let (cpu, cuda) = (run(Device::Cpu)?, run(d)?);
        let tol = match dt {
            DType::F32 => 1e-5,
            DType::F16 => 4e-3,
            _ => 3e-2,
        };
        for (k, (a, b)) in cuda.iter().zip(&cpu).enumerate() {
            for (i, (p, q)) in a.iter().zip(b).enumerate() {
                assert!(
                    (p - q).abs() <= tol * q.abs().max(1.0),
                    "{dt} output {k}[{i}]: cuda {p} vs cpu {q}"
                );
            }
        }
    }
    Ok(())
}
