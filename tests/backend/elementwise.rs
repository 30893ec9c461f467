//! Elementwise ops (and the reductions over their results) against naive f64 references.

use super::support::{close, rand};
use hemi::*;

backend_test!(elementwise_and_reductions, |dev| {
    let mut g = Generator::new(11);
    let (x, xv) = rand(&mut g, &[3, 5, 7], dev)?;
    let (y, yv) = rand(&mut g, &[5, 1], dev)?;
    let ops: [(&str, Tensor, Vec<f64>); 4] = [
        ("exp", x.exp()?, xv.iter().map(|v| v.exp()).collect()),
        ("relu", x.relu()?, xv.iter().map(|v| v.max(0.0)).collect()),
        (
            "affine",
            x.affine(2.0, -1.0)?,
            xv.iter().map(|v| 2.0 * v - 1.0).collect(),
        ),
        (
            "mul broadcast",
            x.mul(&y)?,
            (0..xv.len()).map(|i| xv[i] * yv[(i / 7) % 5]).collect(),
        ),
    ];
    for (name, t, want) in ops {
        close(&t.to_f64_vec()?, &want, 1e-6, name);
    }
    let s = x.sum_dims(&[0, 2], false)?;
    let want: Vec<f64> = (0..5)
        .map(|j| {
            (0..3)
                .flat_map(|i| (0..7).map(move |k| (i, k)))
                .map(|(i, k)| xv[(i * 5 + j) * 7 + k])
                .sum()
        })
        .collect();
    close(&s.to_f64_vec()?, &want, 1e-5, "sum over 0,2");
    let m = x.max(1, false)?;
    let want: Vec<f64> = (0..21)
        .map(|r| {
            (0..5)
                .map(|j| xv[(r / 7 * 5 + j) * 7 + r % 7])
                .fold(f64::MIN, f64::max)
        })
        .collect();
    close(&m.to_f64_vec()?, &want, 0.0, "max over 1");
    let mean = x.mean_all()?;
    close(
        &[mean.item()?],
        &[xv.iter().sum::<f64>() / xv.len() as f64],
        1e-6,
        "mean_all",
    );
    Ok(())
});

backend_test!(half_precision_ops_round_once_from_f32, |dev| {
    let mut g = Generator::new(15);
    for dt in [DType::F16, DType::BF16] {
        let x = Tensor::uniform_with(&mut g, [4, 9], -3.0, 3.0, dt, dev)?;
        let wide = x.to_dtype(DType::F32)?;
        for (name, lo, hi) in [
            ("exp", x.exp()?, wide.exp()?),
            ("softmax", x.softmax(1)?, wide.softmax(1)?),
            ("sum", x.sum(1, false)?, wide.sum(1, false)?),
        ] {
            assert_eq!(lo.dtype(), dt, "{name} keeps {dt}");
            let rounded = hi.to_dtype(dt)?;
            assert_eq!(
                lo.to_f64_vec()?,
                rounded.to_f64_vec()?,
                "{name} in {dt} = f32 result rounded once"
            );
        }
    }
    Ok(())
});

backend_test!(
    gradients_accumulate_in_place_without_touching_shared_buffers,
    |dev| {
        let mut gen = Generator::new(3);

        let a = super::memory::rand(&mut gen, &[5], dev)?.requires_grad_(true)?;
        let b = super::memory::rand(&mut gen, &[5], dev)?.requires_grad_(true)?;
        // add's backward hands the same gradient tensor to both inputs.
        a.add(&b)?.sum_all()?.backward()?;
        let ga = a.grad().expect("a.grad");
        let v = ga.version();
        a.mul_scalar(3.0)?.sum_all()?.backward()?;
        let ga2 = a.grad().expect("a.grad");
        assert_eq!(ga2.to_vec::<f32>()?, vec![4.0; 5], "{dev}: 1 + 3");
        assert_eq!(ga.version(), v + 1, "{dev}: accumulated in place");
        assert_eq!(ga.to_vec::<f32>()?, vec![4.0; 5], "{dev}: same buffer");
        assert_eq!(
            b.grad().expect("b.grad").to_vec::<f32>()?,
            vec![1.0; 5],
            "{dev}: b's gradient was not the buffer a accumulated into"
        );
        Ok(())
    }
);
