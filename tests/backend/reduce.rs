//! Reductions: sums and means within README's bound `2·⌈log2 n⌉·2^-24·Σ|x|` (long, adversarial,
//! strided, half precision), and `clip_grad_norm_`'s norm.

use super::support::*;
use hemi::nn::clip_grad_norm_;
use hemi::*;

fn check_sum_and_mean(dev: Device, dt: DType, data: Vec<f32>, what: &str) -> Result<()> {
    let n = data.len();
    let (x, xs) = rounded(data, &[n], dt)?;
    let x = x.to_device(dev)?;
    let s64 = sum64(xs.iter().copied());
    let abs = sum64(xs.iter().map(|v| v.abs()));
    let s = x.sum_all()?.to_f64_vec()?[0];
    let bound = sum_bound(n, abs, s64, dt);
    assert!(
        (s - s64).abs() <= bound,
        "{what}: sum of {n} {dt} on {dev}: {s} vs {s64} (error {:e} > bound {bound:e})",
        (s - s64).abs()
    );
    let m64 = s64 / n as f64;
    let m = x.mean_all()?.to_f64_vec()?[0];
    let bound = (2.0 * clog2(n) + 1.0) * U * abs / n as f64 + u_out(dt) * m64.abs();
    assert!(
        (m - m64).abs() <= bound,
        "{what}: mean of {n} {dt} on {dev}: {m} vs {m64} (error {:e} > bound {bound:e})",
        (m - m64).abs()
    );
    Ok(())
}

/// The sizes each device runs: the CPU up to a few ×10^7, the emulator to 2^22.
fn sum_sizes(dev: Device) -> Vec<usize> {
    let mut sizes = vec![1, 2, 3, 17, 33, 1000, 65_537, (1 << 20) + 3];
    sizes.push(if dev == Device::Cpu {
        30_000_019
    } else {
        (1 << 22) + 5
    });
    sizes
}

backend_test!(twenty_million_ones_sum_to_twenty_million, |dev| {
    let x = Tensor::ones([20_000_000], DType::F32, dev)?;
    assert_eq!(x.sum_all()?.to_vec::<f32>()?, vec![2e7], "sum on {dev}");
    assert_eq!(x.mean_all()?.to_vec::<f32>()?, vec![1.0], "mean on {dev}");
    Ok(())
});

backend_test!(long_f32_sums_stay_within_the_log_n_bound, |dev| {
    let mut gen = Generator::new(0x5eed_0009);

    for n in sum_sizes(dev) {
        check_sum_and_mean(dev, DType::F32, adversarial(&mut gen, n), "adversarial")?;
        check_sum_and_mean(dev, DType::F32, uniform(&mut gen, n, 0.0, 1.0), "positive")?;
        check_sum_and_mean(dev, DType::F32, uniform(&mut gen, n, -1.0, 1.0), "signed")?;
    }
    Ok(())
});

backend_test!(half_precision_sums_accumulate_in_f32, |dev| {
    let mut gen = Generator::new(0x5eed_0010);

    for dt in [DType::F16, DType::BF16] {
        for n in [1, 5, 31, 33, 4099, 1 << 16] {
            check_sum_and_mean(dev, dt, uniform(&mut gen, n, -1.0, 1.0), "signed")?;
        }
    }
    Ok(())
});

backend_test!(reductions_over_some_dims_and_strided_views, |dev| {
    let mut gen = Generator::new(0x5eed_0011);
    let (rows, n) = (3, 200_003);

    let (x, xs) = rounded(adversarial(&mut gen, rows * n), &[rows, n], DType::F32)?;
    let x = x.to_device(dev)?;
    // Contiguous rows, and the same rows read through a transposed (strided) view.
    let direct = x.sum(1, false)?.to_f64_vec()?;
    let strided = x.t()?.contiguous()?.t()?.sum(1, false)?.to_f64_vec()?;
    for r in 0..rows {
        let row = &xs[r * n..][..n];
        let s64 = sum64(row.iter().copied());
        let bound = sum_bound(n, sum64(row.iter().map(|v| v.abs())), s64, DType::F32);
        for (what, got) in [("contiguous", direct[r]), ("strided", strided[r])] {
            assert!(
                (got - s64).abs() <= bound,
                "{what} row {r} on {dev}: {got} vs {s64} (bound {bound:e})"
            );
        }
    }
    Ok(())
});

backend_test!(clip_grad_norm_measures_long_gradients, |dev| {
    let mut gen = Generator::new(0x5eed_0014);
    let n = (1 << 20) + 7;
    let g: Vec<f32> = adversarial(&mut gen, n).iter().map(|v| v.sqrt()).collect();
    let (gt, gs) = rounded(g, &[n], DType::F32)?;
    let norm64 = sum64(gs.iter().map(|v| v * v)).sqrt();

    let p = Tensor::zeros([n], DType::F32, dev)?.requires_grad_(true)?;
    p.set_grad(Some(gt.to_device(dev)?))?;
    let norm = clip_grad_norm_(std::slice::from_ref(&p), 1e9, 2.0)?.to_f64_vec()?[0];
    let bound = (clog2(n) + 4.0) * U * norm64;
    assert!(
        (norm - norm64).abs() <= bound,
        "clip_grad_norm_ on {dev}: {norm} vs {norm64} (bound {bound:e})"
    );
    Ok(())
});
