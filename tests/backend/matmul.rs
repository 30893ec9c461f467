//! The matmul family's general product, `Tensor::gemm`: the alpha/beta/bias epilogue and the
//! output dtype on every device, against f64 (matmul's own bounds are in `properties.rs` and
//! `cuda_gemm.rs`), and its argument checks.

use hemi::*;

backend_test!(gemm_epilogue_matches_f64_on_every_device, |dev| {
    let mut g = Generator::new(21);
    let (batch, m, k, n) = (2, 5, 7, 3);
    for (in_dt, out_dt) in [
        (DType::F32, DType::F32),
        (DType::F16, DType::F32),
        (DType::BF16, DType::BF16),
    ] {
        let a = Tensor::uniform_with(&mut g, [batch, m, k], -1.0, 1.0, in_dt, dev)?;
        let b = Tensor::uniform_with(&mut g, [k, n], -1.0, 1.0, in_dt, dev)?; // broadcast
        let c = Tensor::uniform_with(&mut g, [m, n], -1.0, 1.0, out_dt, dev)?; // broadcast
        let bias = Tensor::uniform_with(&mut g, [n], -1.0, 1.0, DType::F32, dev)?;
        let o = GemmOptions {
            alpha: 0.5,
            beta: -1.5,
            c: Some(c.clone()),
            bias: Some(bias.clone()),
            ..GemmOptions::new(out_dt)
        };
        let y = Tensor::gemm(&a, &b, &o)?;
        assert_eq!(y.dims(), &[batch, m, n]);
        assert_eq!(y.dtype(), out_dt);
        let (av, bv, cv, biv) = (
            a.to_f64_vec()?,
            b.to_f64_vec()?,
            c.to_f64_vec()?,
            bias.to_f64_vec()?,
        );
        let got = y.to_f64_vec()?;
        let u_out = match out_dt {
            DType::BF16 => 2f64.powi(-8),
            _ => 0.0,
        };
        for z in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    let (mut acc, mut abs) = (0.0, 0.0);
                    for p in 0..k {
                        acc += av[(z * m + i) * k + p] * bv[p * n + j];
                        abs += (av[(z * m + i) * k + p] * bv[p * n + j]).abs();
                    }
                    let want = 0.5 * acc - 1.5 * cv[i * n + j] + biv[j];
                    let bound = k as f64 * 2f64.powi(-23) * abs
                        + 4.0 * 2f64.powi(-24) * (abs + 2.0 * cv[i * n + j].abs() + biv[j].abs())
                        + u_out * want.abs();
                    let v = got[(z * m + i) * n + j];
                    assert!(
                        (v - want).abs() <= bound,
                        "{in_dt}->{out_dt} on {dev} at ({z},{i},{j}): {v} vs {want}"
                    );
                }
            }
        }
    }
    // Bad arguments are errors: mismatched k, a c that does not broadcast, a wrong bias.
    let a = Tensor::ones([2, 3, 4], DType::F32, dev)?;
    let b = Tensor::ones([4, 5], DType::F32, dev)?;
    assert!(Tensor::gemm(
        &a,
        &Tensor::ones([3, 5], DType::F32, dev)?,
        &GemmOptions::new(DType::F32)
    )
    .is_err());
    let bad_c = GemmOptions {
        c: Some(Tensor::ones([3, 3, 5], DType::F32, dev)?),
        beta: 1.0,
        ..GemmOptions::new(DType::F32)
    };
    assert!(
        Tensor::gemm(&a, &b, &bad_c).is_err(),
        "{dev}: c batch 3 for a batch of 2"
    );
    let bad_bias = GemmOptions {
        bias: Some(Tensor::ones([4], DType::F32, dev)?),
        ..GemmOptions::new(DType::F32)
    };
    assert!(
        Tensor::gemm(&a, &b, &bad_bias).is_err(),
        "{dev}: bias of 4 for 5 columns"
    );
    Ok(())
});
