//! Channels-last (`MemoryFormat::ChannelsLast`): every op of the ResNet path keeps a
//! channels-last input channels-last in its output and its input gradient, and computes the
//! same values as from the row-major input (pools and elementwise ops bit for bit; batch norm
//! and convolutions within their bounds, checked against the row-major run).

use hemi::*;

type Chain = fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>;

/// `f(x)` and `x.grad` for x in `format` (x, and the other inputs, from the same values).
fn run(
    f: Chain,
    x0: &Tensor,
    w: &Tensor,
    bn: &Tensor,
    format: MemoryFormat,
) -> Result<(Tensor, Tensor)> {
    let x = x0.to_memory_format(format)?.detach().requires_grad_(true)?;
    let y = f(&x, w, bn)?;
    // Not affine in y: batch norm's gradient would cancel to rounding noise for such a dy.
    let dy = y.detach().square()?.mul_scalar(-1.0)?.add_scalar(0.5)?;
    y.mul(&dy)?.sum_all()?.backward()?;
    Ok((y, x.grad().expect("x has a gradient")))
}

fn close(what: &str, a: &Tensor, b: &Tensor, tol: f64) -> Result<()> {
    let (a, b) = (a.to_f64_vec()?, b.to_f64_vec()?);
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}: element {i}: channels-last {x} vs row-major {y} (tolerance {tol}·{scale})"
        );
    }
    Ok(())
}

const CHAINS: [(&str, Chain, f64); 8] = [
    ("relu", |x, _, _| x.relu(), 0.0),
    ("add+mul", |x, _, _| x.add(&x.mul_scalar(3.0)?)?.mul(x), 0.0),
    (
        "max_pool",
        |x, _, _| x.max_pool2d(MaxPool2dParams::new(3, 2, 1)),
        0.0,
    ),
    (
        "avg_pool",
        |x, _, _| x.avg_pool2d(AvgPool2dParams::new(3, 2, 1)),
        0.0,
    ),
    (
        "adaptive_avg_pool",
        |x, _, _| x.adaptive_avg_pool2d((2, 3)),
        0.0,
    ),
    (
        "batch_norm",
        |x, _, bn| x.batch_norm(None, None, Some(bn), Some(bn), BatchNormParams::default()),
        1e-5,
    ),
    (
        "conv",
        |x, w, _| x.conv2d(w, None, Conv2dParams::new(1, 1)),
        2e-3,
    ),
    (
        "conv+bn+relu+add",
        |x, w, bn| {
            let h = x.conv2d(w, None, Conv2dParams::new(1, 1))?;
            let h = h.batch_norm(None, None, Some(bn), Some(bn), BatchNormParams::default())?;
            h.relu()?.add(x)
        },
        2e-2,
    ),
];

backend_test!(channels_last_flows_through_every_resnet_op, |dev| {
    let mut g = Generator::new(71);
    for dt in [DType::F32, DType::F16] {
        let x = Tensor::uniform_with(&mut g, [2, 8, 9, 7], -1.0, 1.0, dt, dev)?;
        let w = Tensor::uniform_with(&mut g, [8, 8, 3, 3], -0.3, 0.3, dt, dev)?;
        let bn = Tensor::uniform_with(&mut g, [8], 0.5, 1.5, DType::F32, dev)?;
        for (name, f, tol) in CHAINS {
            let what = format!("{name} {dt} on {dev}");
            let (y, gx) = run(f, &x, &w, &bn, MemoryFormat::ChannelsLast)?;
            let (y0, gx0) = run(f, &x, &w, &bn, MemoryFormat::Contiguous)?;
            if y.dims()[2] * y.dims()[3] > 1 {
                assert!(
                    y.is_contiguous_for(MemoryFormat::ChannelsLast)
                        && !y.is_contiguous_for(MemoryFormat::Contiguous),
                    "{what}: output strides {:?}",
                    y.layout().strides()
                );
            }
            assert!(
                gx.is_contiguous_for(MemoryFormat::ChannelsLast),
                "{what}: dx"
            );
            assert!(
                y0.is_contiguous_for(MemoryFormat::Contiguous),
                "{what}: row-major stays"
            );
            let tol = if dt == DType::F16 {
                tol.max(1e-3) * 4.0
            } else {
                tol
            };
            close(&format!("{what} y"), &y, &y0, tol)?;
            close(&format!("{what} dx"), &gx, &gx0, tol)?;
        }
    }
    Ok(())
});

backend_test!(memory_format_views_and_errors, |dev| {
    let x = Tensor::randn([2, 3, 4, 5], DType::F32, dev)?;
    let cl = x.to_memory_format(MemoryFormat::ChannelsLast)?;
    assert_eq!(cl.layout().strides(), &[60, 1, 15, 3]);
    assert_eq!(cl.suggest_memory_format(), MemoryFormat::ChannelsLast);
    assert_eq!(cl.to_vec::<f32>()?, x.to_vec::<f32>()?);
    let back = cl.to_memory_format(MemoryFormat::Contiguous)?;
    assert!(back.is_contiguous_for(MemoryFormat::Contiguous));
    assert_eq!(back.to_vec::<f32>()?, x.to_vec::<f32>()?);
    // Already in the format: the same tensor, no copy.
    assert_eq!(
        cl.to_memory_format(MemoryFormat::ChannelsLast)?.id(),
        cl.id()
    );
    // C = 1 and H = W = 1 are both formats at once; row-major is suggested.
    let one = Tensor::randn([2, 1, 3, 3], DType::F32, dev)?;
    assert!(one.is_contiguous_for(MemoryFormat::ChannelsLast));
    assert_eq!(one.suggest_memory_format(), MemoryFormat::Contiguous);
    let e = Tensor::randn([2, 3, 4], DType::F32, dev)?
        .to_memory_format(MemoryFormat::ChannelsLast)
        .expect_err("rank 3");
    assert!(e.to_string().contains("4-D"), "{e}");
    // A channels-last tensor flattens and reshapes by value.
    let flat = cl.flatten(1, -1)?;
    assert_eq!(flat.to_vec::<f32>()?, x.flatten(1, -1)?.to_vec::<f32>()?);
    Ok(())
});
