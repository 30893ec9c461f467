//! The conv family: `conv2d` forward, input gradient (dgrad) and weight gradient (wgrad) on
//! every device and dtype, element-wise against naive f64 loops at odd sizes (no dim a
//! multiple of any tile), within the GEMM bound with the implicit GEMM's K:
//! `|y − y64| ≤ K·2⁻²³·Σ|a||b| + u_out·|y64|` (+ the output format's smallest subnormal) —
//! in both memory formats, with every output dtype, on the SIMT and Tensor-Core tiers.

use crate::common::{check_gemm_bound, conv_ref};
use hemi::*;
use proptest::prelude::*;

/// `(c, h, w, k, kernel, stride, padding, dilation)` of each case.
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: [Case; 7] = [
    (3, 11, 9, 5, 7, 2, 3, 1),  // a 7x7 stride-2 stem on 3 channels
    (5, 9, 7, 6, 3, 1, 1, 1),   // 3x3 "same"
    (4, 10, 11, 7, 3, 2, 1, 1), // 3x3 stride 2
    (6, 7, 5, 3, 1, 1, 0, 1),   // 1x1
    (3, 9, 9, 4, 3, 1, 2, 2),   // dilated
    (2, 6, 7, 3, 1, 2, 0, 1),   // 1x1 stride 2 (a downsample)
    (3, 33, 35, 4, 3, 1, 1, 1), // wgrad's K = 2·33·35 = 2310: split over K on the CUDA side
];

/// dx and dw of `Σ y ⊙ dy` in f64, with `Σ|terms|` per element.
#[allow(clippy::too_many_arguments)]
fn conv_grads_ref(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    (n, c, h, wd): (usize, usize, usize, usize),
    (k, kh, kw): (usize, usize, usize),
    (oh, ow): (usize, usize),
    (st, pad, dil): (usize, usize, usize),
) -> [Vec<f64>; 4] {
    let (mut dx, mut dxa) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let (mut dw, mut dwa) = (vec![0.0; w.len()], vec![0.0; w.len()]);
    for b in 0..n {
        for o in 0..k {
            for y in 0..oh {
                for xx in 0..ow {
                    let g = dy[((b * k + o) * oh + y) * ow + xx];
                    for ic in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (y * st + i * dil) as isize - pad as isize;
                                let ix = (xx * st + j * dil) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((b * c + ic) * h + iy as usize) * wd + ix as usize;
                                let wi = ((o * c + ic) * kh + i) * kw + j;
                                dx[xi] += g * w[wi];
                                dxa[xi] += (g * w[wi]).abs();
                                dw[wi] += g * x[xi];
                                dwa[wi] += (g * x[xi]).abs();
                            }
                        }
                    }
                }
            }
        }
    }
    [dx, dxa, dw, dwa]
}

/// One convolution's geometry: `(n, c, h, w, k, kernel, stride, padding, dilation)`.
type Geometry = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

/// Runs one convolution on `dev` in `format` with inputs of `dt` and output `out_dt`, and
/// checks y, and with `backward` dx and dw (in `dt`, same format), element-wise against the
/// f64 loops within the GEMM bound.
#[allow(clippy::too_many_arguments)]
fn check_conv(
    dev: Device,
    g: &mut Generator,
    (n, c, h, wd, k, ks, st, pad, dil): Geometry,
    dt: DType,
    out_dt: DType,
    format: MemoryFormat,
    backward: bool,
) -> Result<()> {
    let x = Tensor::uniform_with(g, [n, c, h, wd], -1.0, 1.0, dt, dev)?
        .to_memory_format(format)?
        .requires_grad_(true)?;
    let w = Tensor::uniform_with(g, [k, c, ks, ks], -1.0, 1.0, dt, dev)?.requires_grad_(true)?;
    let p = Conv2dParams {
        stride: (st, st),
        padding: (pad, pad),
        dilation: (dil, dil),
        groups: 1,
        out_dtype: Some(out_dt),
    };
    let y = x.conv2d(&w, None, p)?;
    let what = format!(
        "{dt}->{out_dt} {format:?} {:?} on {dev}",
        (n, c, h, wd, k, ks, st, pad, dil)
    );
    assert_eq!(y.dtype(), out_dt, "{what}");
    // (A 1x1 output is in both formats at once.)
    assert!(
        y.is_contiguous_for(x.suggest_memory_format()),
        "{what}: y keeps x's format"
    );
    let (xv, wv) = (x.to_f64_vec()?, w.to_f64_vec()?);
    let (want, abs, oh, ow) = conv_ref(
        &xv,
        &wv,
        (n, c, h, wd),
        (k, ks, ks),
        (st, st),
        (pad, pad),
        (dil, dil),
        1,
    );
    assert_eq!(y.dims(), &[n, k, oh, ow]);
    check_gemm_bound(&y.to_f64_vec()?, &want, &abs, c * ks * ks, out_dt)
        .unwrap_or_else(|e| panic!("fprop {what}: {e}"));
    if !backward {
        return Ok(());
    }
    let dy = Tensor::uniform_with(g, y.shape().clone(), -1.0, 1.0, dt, dev)?;
    y.mul(&dy)?.sum_all()?.backward()?;
    let [dx, dxa, dw, dwa] = conv_grads_ref(
        &xv,
        &wv,
        &dy.to_f64_vec()?,
        (n, c, h, wd),
        (k, ks, ks),
        (oh, ow),
        (st, pad, dil),
    );
    let gx = x.grad().expect("dx");
    if format == MemoryFormat::ChannelsLast && c > 1 && h * wd > 1 {
        assert!(
            gx.is_contiguous_for(MemoryFormat::ChannelsLast),
            "{what}: dx channels-last"
        );
    }
    check_gemm_bound(&gx.to_f64_vec()?, &dx, &dxa, k * ks * ks, dt)
        .unwrap_or_else(|e| panic!("dgrad {what}: {e}"));
    let gw = w.grad().expect("dw").to_f64_vec()?;
    check_gemm_bound(&gw, &dw, &dwa, n * oh * ow, dt)
        .unwrap_or_else(|e| panic!("wgrad {what}: {e}"));
    Ok(())
}

backend_test!(conv2d_forward_and_gradients_within_the_gemm_bound, |dev| {
    let mut g = Generator::new(31);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        for &(c, h, wd, k, ks, st, pad, dil) in CASES.iter() {
            let geo = (2, c, h, wd, k, ks, st, pad, dil);
            check_conv(dev, &mut g, geo, dt, dt, MemoryFormat::Contiguous, true)?;
        }
    }
    Ok(())
});

/// Cases for the Tensor-Core tier (f16/bf16 with output channels a multiple of 8): direct
/// channels-last operands (C % 8 == 0), packed ones (C = 3, C = 12), NCHW callers, several
/// 128-row and 128-column tiles and K-tiles with ragged ends; and a skinny wgrad that splits K.
const MMA_CASES: [Geometry; 7] = [
    (2, 8, 11, 13, 24, 3, 1, 1, 1), // M = 286: 3 row tiles; GEMM K = 72
    (1, 3, 13, 11, 16, 7, 2, 3, 1), // the stem: C = 3 packed to 8, 7x7 stride 2 pad 3
    (2, 16, 9, 9, 136, 1, 1, 0, 1), // 1x1, N = 136: 2 column tiles
    (2, 16, 10, 9, 8, 3, 2, 1, 1),  // 3x3 stride 2: dgrad taps no output reaches
    (1, 12, 9, 10, 16, 3, 1, 2, 2), // dilation 2 with C = 12 packed to 16
    (1, 8, 6, 7, 8, 1, 2, 0, 1),    // 1x1 stride 2 downsample
    (2, 8, 24, 24, 8, 3, 1, 1, 1),  // wgrad K = 1152 over 8x72: split-K
];

backend_test!(
    conv2d_tensor_core_tier_in_both_formats_and_every_output_dtype,
    |dev| {
        let mut g = Generator::new(47);
        for dt in [DType::F16, DType::BF16] {
            let other = if dt == DType::F16 {
                DType::BF16
            } else {
                DType::F16
            };
            for (i, &geo) in MMA_CASES.iter().enumerate() {
                let format = if i % 3 == 2 {
                    MemoryFormat::Contiguous
                } else {
                    MemoryFormat::ChannelsLast
                };
                check_conv(dev, &mut g, geo, dt, dt, format, true)?;
                // Every output dtype through the same kernels' epilogue (fprop only: gradients
                // keep the inputs' dtypes by contract).
                for out in [DType::F32, other] {
                    check_conv(dev, &mut g, geo, dt, out, format, false)?;
                }
            }
        }
        Ok(())
    }
);

backend_test!(conv2d_channels_last_f32_matches_the_reference, |dev| {
    let mut g = Generator::new(53);
    for &(c, h, wd, k, ks, st, pad, dil) in CASES.iter().take(5) {
        let geo = (2, c, h, wd, k, ks, st, pad, dil);
        check_conv(
            dev,
            &mut g,
            geo,
            DType::F32,
            DType::F32,
            MemoryFormat::ChannelsLast,
            true,
        )?;
    }
    Ok(())
});

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    /// Random odd geometries over every dtype, output dtype and format (filters 1/3/7,
    /// stride 1–2, padding 0–3, dilation 1–2), on every device.
    #[test]
    fn conv2d_random_geometry_within_the_gemm_bound(
        n in 1usize..3,
        c in prop::sample::select(vec![1usize, 3, 8, 13, 16]),
        k in prop::sample::select(vec![5usize, 8, 16, 24]),
        ks in prop::sample::select(vec![1usize, 3, 7]),
        st in 1usize..3,
        pad in 0usize..4,
        dil in 1usize..3,
        extra in (0usize..6, 0usize..6),
        dt in prop::sample::select(vec![DType::F32, DType::F16, DType::BF16]),
        out in prop::sample::select(vec![DType::F32, DType::F16, DType::BF16]),
        cl in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let span = dil * (ks - 1) + 1;
        let (h, wd) = ((span + extra.0).saturating_sub(2 * pad).max(1), (span + extra.1 + 1).saturating_sub(2 * pad).max(1));
        prop_assume!(h + 2 * pad >= span && wd + 2 * pad >= span);
        let format = if cl { MemoryFormat::ChannelsLast } else { MemoryFormat::Contiguous };
        let mut g = Generator::new(seed);
        for dev in crate::common::devices() {
            let geo = (n, c, h, wd, k, ks, st, pad, dil);
            // Gradients keep the input dtype: run backward when the output has it.
            check_conv(dev, &mut g, geo, dt, out, format, out == dt)
                .unwrap_or_else(|e| panic!("{geo:?} {dt}->{out} {format:?} on {dev}: {e}"));
        }
    }
}

backend_test!(conv2d_rejects_bad_geometry_without_panicking, |dev| {
    let x = Tensor::ones([1, 2, 5, 5], DType::F32, dev)?;
    let w = Tensor::ones([3, 2, 7, 7], DType::F32, dev)?;
    let e = x
        .conv2d(&w, None, Conv2dParams::default())
        .expect_err("kernel larger than input");
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let w3 = Tensor::ones([3, 3, 3, 3], DType::F32, dev)?;
    let e = x
        .conv2d(&w3, None, Conv2dParams::default())
        .expect_err("channel mismatch");
    assert!(!matches!(e, Error::Unsupported { .. }), "{e}");
    Ok(())
});

/// Grouped convolution on the CPU (the CUDA backend refuses groups): output and both
/// gradients equal the per-group convolutions of the channel slices, concatenated — for one
/// image (the chunk's im2col/col2im run parallel over channels), several small images in one
/// GEMM, and images wide enough to be one GEMM each.
#[test]
fn grouped_convolution_equals_its_groups_on_the_cpu() -> Result<()> {
    let mut g = Generator::new(77);
    for (n, hw, groups, cg, og, st) in
        [(1, 19, 3, 2, 3, 1), (3, 7, 2, 3, 5, 2), (3, 21, 2, 4, 3, 1)]
    {
        let dev = Device::Cpu;
        let x = Tensor::uniform_with(
            &mut g,
            [n, groups * cg, hw, hw + 2],
            -1.0,
            1.0,
            DType::F32,
            dev,
        )?;
        let w = Tensor::uniform_with(&mut g, [groups * og, cg, 3, 3], -1.0, 1.0, DType::F32, dev)?;
        let p = Conv2dParams {
            stride: (st, st),
            padding: (1, 1),
            groups,
            ..Conv2dParams::default()
        };
        let (xa, wa) = (
            x.detach().requires_grad_(true)?,
            w.detach().requires_grad_(true)?,
        );
        let y = xa.conv2d(&wa, None, p)?;
        let dy = Tensor::uniform_with(&mut g, y.shape().clone(), -1.0, 1.0, DType::F32, dev)?;
        y.mul(&dy)?.sum_all()?.backward()?;
        let (xb, wb) = (
            x.detach().requires_grad_(true)?,
            w.detach().requires_grad_(true)?,
        );
        let parts = (0..groups)
            .map(|i| {
                xb.narrow(1, i * cg, cg)?.conv2d(
                    &wb.narrow(0, i * og, og)?,
                    None,
                    Conv2dParams { groups: 1, ..p },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let y_split = Tensor::cat(&parts.iter().collect::<Vec<_>>(), 1)?;
        y_split.mul(&dy)?.sum_all()?.backward()?;
        let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
            let (a, b) = (a.to_f64_vec()?, b.to_f64_vec()?);
            assert_eq!(a.len(), b.len(), "{what}");
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                    "{what} [{i}]: {u} vs {v} (n={n}, {hw}px, groups={groups})"
                );
            }
            Ok(())
        };
        close(&y, &y_split, "y")?;
        close(&xa.grad().expect("dx"), &xb.grad().expect("dx"), "dx")?;
        close(&wa.grad().expect("dw"), &wb.grad().expect("dw"), "dw")?;
    }
    Ok(())
}

/// An f16 convolution with an infinity in its input gives IEEE results: the same infinities and
/// NaNs, and the same finite values (within f16 rounding), as the f32 convolution of the
/// widened operands, rounded to f16 (a guard for any half-precision fast path on the CPU).
#[test]
fn f16_convolution_with_an_infinity_is_ieee_on_the_cpu() -> Result<()> {
    let mut g = Generator::new(5);
    let dev = Device::Cpu;
    let mut xv =
        Tensor::uniform_with(&mut g, [2, 3, 9, 8], -1.0, 1.0, DType::F32, dev)?.to_vec::<f32>()?;
    xv[40] = f32::INFINITY;
    xv[300] = f32::NEG_INFINITY;
    let x16 = Tensor::from_vec(xv, [2, 3, 9, 8], dev)?.to_dtype(DType::F16)?;
    let w16 = Tensor::uniform_with(&mut g, [4, 3, 3, 3], -1.0, 1.0, DType::F16, dev)?;
    let p = Conv2dParams {
        padding: (1, 1),
        ..Conv2dParams::default()
    };
    let y16 = x16.conv2d(&w16, None, p)?.to_f64_vec()?;
    let y32 = x16
        .to_dtype(DType::F32)?
        .conv2d(&w16.to_dtype(DType::F32)?, None, p)?
        .to_dtype(DType::F16)?
        .to_f64_vec()?;
    let mut infinite = 0;
    for (i, (a, b)) in y16.iter().zip(&y32).enumerate() {
        if b.is_finite() {
            assert!((a - b).abs() <= 1e-2 * (1.0 + b.abs()), "[{i}] {a} vs {b}");
        } else {
            infinite += 1;
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "[{i}] {a} vs {b}"
            );
        }
    }
    assert!(infinite > 0, "the infinities reach the output");
    Ok(())
}

/// Convolutions large enough that the CPU cuts each image's output rows into blocks (the
/// im2col matrix `[C·9, block]` stays near 1 MiB): stride 1 and 2, one image (GEMMs, im2col
/// and col2im parallel inside) and two (one image per thread), every input dtype — forward and
/// both gradients against the f64 loops.
#[test]
fn row_blocked_convolutions_match_the_reference_on_the_cpu() -> Result<()> {
    let mut g = Generator::new(91);
    // K = 64·9 = 576: blocks of ≥ 455 output pixels; 575 (stride 1) and 25·23 (stride 2).
    for &(c, h, wd, k, ks, st, pad, dil) in
        &[(64, 25, 23, 5, 3, 1, 1, 1), (64, 49, 45, 4, 3, 2, 1, 1)]
    {
        for n in [1, 2] {
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let geo = (n, c, h, wd, k, ks, st, pad, dil);
                check_conv(
                    Device::Cpu,
                    &mut g,
                    geo,
                    dt,
                    dt,
                    MemoryFormat::Contiguous,
                    true,
                )?;
            }
        }
    }
    Ok(())
}

/// Convolutions some of whose kernel taps read padding for every output (a 3 × 3 kernel on a
/// 1 × 1 map reads through its centre only; stride 2 on a 2 × 2 map through four taps;
/// dilation past a thin image): the CPU skips those taps' GEMM work. Forward and both
/// gradients (zero at the skipped taps) against the f64 loops, every input dtype, both
/// formats, one image and several (per-chunk and in-GEMM parallelism).
#[test]
fn convolutions_skipping_padding_only_taps_match_the_reference_on_the_cpu() -> Result<()> {
    let mut g = Generator::new(97);
    for &(c, h, wd, k, ks, st, pad, dil) in &[
        (40, 1, 1, 36, 3, 1, 1, 1), // centre tap only
        (24, 2, 2, 20, 3, 2, 1, 1), // stride 2 on 2 × 2: taps 1..3 × 1..3
        (5, 1, 3, 7, 5, 1, 2, 1),   // one kernel row, every column
        (3, 2, 1, 4, 3, 1, 2, 2),   // dilation 2: one tap
    ] {
        for n in [1, 5] {
            for dt in [DType::F32, DType::BF16, DType::F16] {
                for format in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
                    let geo = (n, c, h, wd, k, ks, st, pad, dil);
                    check_conv(Device::Cpu, &mut g, geo, dt, dt, format, true)?;
                }
            }
        }
    }
    Ok(())
}
