//! Autocast: the output dtype of every op in the rule table, the weight-cast cache, nesting
//! and disabling, and fp32 gradients for fp32 parameters.

use hemi::amp::autocast::{cache_hits, cache_len};
use hemi::amp::{autocast, autocast_dtype, autocast_enabled, rule_for, AutocastOp, CastRule};
use hemi::{
    no_grad, BatchNormParams, Conv2dParams, CrossEntropySpec, DType, Device, MaxPool2dParams,
    Reduction, Result, Tensor,
};

fn t(dims: &[usize], dt: DType) -> Tensor {
    Tensor::uniform(dims.to_vec(), 0.5, 1.5, dt, Device::Cpu).expect("tensor")
}

/// PyTorch's CUDA autocast lists (autocast_mode.h), written out independently of the table.
#[test]
fn the_rule_table_is_pytorchs_cuda_lists() {
    let lower = ["conv2d", "linear", "matmul"];
    let fp32 = [
        "softmax",
        "log_softmax",
        "cross_entropy",
        "mse_loss",
        "sum",
        "exp",
        "log",
        "pow",
        "rsqrt",
        "reciprocal",
    ];
    for op in AutocastOp::ALL {
        let name = op.pytorch_name();
        let want = if lower.contains(&name) {
            CastRule::LowerPrecision
        } else {
            assert!(fp32.contains(&name), "{name} is on no PyTorch list");
            CastRule::Fp32
        };
        assert_eq!(rule_for(op), want, "{name}");
    }
    assert_eq!(AutocastOp::ALL.len(), lower.len() + fp32.len());
}

#[test]
fn every_rule_gives_its_dtype() -> Result<()> {
    for region in [DType::F16, DType::BF16] {
        let _ac = autocast(region)?;
        let (x32, x16) = (t(&[4, 6], DType::F32), t(&[4, 6], region));
        let w = t(&[6, 3], DType::F32);
        let img = t(&[2, 3, 6, 6], DType::F32);
        let k = t(&[4, 3, 3, 3], DType::F32);
        let targets = Tensor::from_vec(vec![0i64, 1, 2, 0], [4], Device::Cpu)?;
        let lower = [
            ("matmul", x32.matmul(&w)?),
            ("batched matmul", x32.reshape([2, 2, 6])?.matmul(&w)?),
            ("linear", x32.linear(&w.t()?, Some(&t(&[3], DType::F32)))?),
            (
                "conv2d",
                img.conv2d(&k, Some(&t(&[4], DType::F32)), Conv2dParams::new(1, 1))?,
            ),
        ];
        for (name, y) in lower {
            assert_eq!(y.dtype(), region, "{name} runs in {region}");
        }
        let fp32 = [
            ("softmax", x16.softmax(1)?),
            ("log_softmax", x16.log_softmax(-1)?),
            (
                "cross_entropy",
                x16.narrow(1, 0, 3)?
                    .cross_entropy(&targets, CrossEntropySpec::default())?,
            ),
            ("mse_loss", x16.mse_loss(&x16, Reduction::Mean)?),
            ("sum", x16.sum(0, false)?),
            ("exp", x16.exp()?),
            ("log", x16.log()?),
            ("powf", x16.powf(2.0)?),
            ("rsqrt", x16.rsqrt()?),
            ("recip", x16.recip()?),
        ];
        for (name, y) in fp32 {
            assert_eq!(y.dtype(), DType::F32, "{name} runs in float32");
        }
        // Not on PyTorch's promote list: ordinary type promotion, under autocast or not.
        let promote = [
            ("add mixed", x16.add(&x32)?, DType::F32),
            ("mul same", x16.mul(&x16)?, region),
            ("div mixed", x32.div(&x16)?, DType::F32),
            ("cat mixed", Tensor::cat(&[&x16, &x32], 0)?, DType::F32),
            ("cat same", Tensor::cat(&[&x16, &x16], 1)?, region),
        ];
        for (name, y, want) in promote {
            assert_eq!(y.dtype(), want, "{name}");
        }
        let img16 = img.to_dtype(region)?;
        let pass = [
            ("relu f16", x16.relu()?, region),
            ("relu f32", x32.relu()?, DType::F32),
            (
                "max_pool2d",
                img16.max_pool2d(MaxPool2dParams::new(2, 2, 0))?,
                region,
            ),
            (
                "adaptive_avg_pool2d",
                img16.adaptive_avg_pool2d((1, 1))?,
                region,
            ),
            ("reshape", x16.reshape([24])?, region),
            ("mean (on no PyTorch list)", x16.mean_all()?, region),
            ("mean f32", x32.mean(0, false)?, DType::F32),
        ];
        for (name, y, want) in pass {
            assert_eq!(y.dtype(), want, "{name} passes its dtype through");
        }
        let (rm, rv) = (
            Tensor::zeros([3], DType::F32, Device::Cpu)?,
            Tensor::ones([3], DType::F32, Device::Cpu)?,
        );
        let (bw, bb) = (t(&[3], DType::F32), t(&[3], DType::F32));
        let y = img16.batch_norm(
            Some(&rm),
            Some(&rv),
            Some(&bw),
            Some(&bb),
            BatchNormParams::default(),
        )?;
        assert_eq!(y.dtype(), region, "batch_norm runs in its input dtype");
        assert_eq!(rm.dtype(), DType::F32, "statistics stay fp32");
        assert!(
            rm.to_vec::<f32>()?.iter().all(|&m| m > 0.0),
            "running mean updated"
        );
        let f64_in = t(&[2, 3], DType::F64);
        assert_eq!(
            f64_in.matmul(&t(&[3, 2], DType::F64))?.dtype(),
            DType::F64,
            "float64 is never cast"
        );
    }
    Ok(())
}

#[test]
fn weight_cache_is_reused_within_a_region_and_dropped_after() -> Result<()> {
    let w = t(&[5, 4], DType::F32).requires_grad_(true)?;
    let x = t(&[3, 5], DType::F32);
    {
        let _ac = autocast(DType::F16)?;
        let a = x.matmul(&w)?;
        let b = x.matmul(&w)?;
        assert_eq!(cache_len(), 1, "one cached cast of w");
        assert_eq!(cache_hits(), 1, "the second use hit the cache");
        a.add(&b)?.to_dtype(DType::F32)?.sum_all()?.backward()?;
        {
            let _g = no_grad();
            let w2 = t(&[4, 2], DType::F32).requires_grad_(true)?;
            x.matmul(&w)?.matmul(&w2)?;
            assert_eq!(cache_len(), 1, "casts under no_grad are not cached");
        }
        let activation = x.mul_scalar(1.0)?; // not a leaf: never cached
        activation.matmul(&w)?;
        assert_eq!(cache_len(), 1);
    }
    assert_eq!(cache_len(), 0, "the outermost exit clears the cache");
    let g = w.grad().expect("w has a gradient");
    assert_eq!(g.dtype(), DType::F32, "fp32 parameters get fp32 gradients");
    // d/dw sum(2 x·w) = 2 xᵀ·1, computed in f16 from f16-rounded x.
    let xs = x.to_dtype(DType::F16)?.to_f64_vec()?;
    let want: Vec<f64> = (0..20)
        .map(|i| 2.0 * (0..3).map(|r| xs[r * 5 + i / 4]).sum::<f64>())
        .collect();
    for (got, want) in g.to_f64_vec()?.iter().zip(&want) {
        assert!((got - want).abs() <= 1e-2 * want.abs(), "{got} vs {want}");
    }
    Ok(())
}

#[test]
fn a_cached_cast_is_redone_after_backward_freed_its_graph() -> Result<()> {
    let w = t(&[2, 2], DType::F32).requires_grad_(true)?;
    let x = t(&[2, 2], DType::F32);
    let _ac = autocast(DType::F16)?;
    x.matmul(&w)?.to_dtype(DType::F32)?.sum_all()?.backward()?;
    x.matmul(&w)?.to_dtype(DType::F32)?.sum_all()?.backward()?;
    assert_eq!(
        w.grad().expect("grad").to_f64_vec()?.len(),
        4,
        "second backward works"
    );
    Ok(())
}

#[test]
fn regions_nest_and_disable() -> Result<()> {
    let (x, w) = (t(&[2, 3], DType::F32), t(&[3, 2], DType::F32));
    assert_eq!(autocast_dtype(), None);
    assert_eq!(
        x.matmul(&w)?.dtype(),
        DType::F32,
        "no region: identity policy"
    );
    let _outer = autocast(DType::F16)?;
    assert_eq!(x.matmul(&w)?.dtype(), DType::F16);
    {
        let _off = autocast_enabled(false, DType::F16)?;
        assert_eq!(autocast_dtype(), None);
        assert_eq!(
            x.matmul(&w)?.dtype(),
            DType::F32,
            "a disabled inner region turns autocast off"
        );
        {
            let _bf = autocast(DType::BF16)?;
            assert_eq!(
                x.matmul(&w)?.dtype(),
                DType::BF16,
                "re-enabled with another dtype"
            );
        }
        assert_eq!(x.matmul(&w)?.dtype(), DType::F32);
    }
    assert_eq!(
        x.matmul(&w)?.dtype(),
        DType::F16,
        "the outer region resumes"
    );
    assert!(
        autocast(DType::F32).is_err(),
        "only float16 and bfloat16 regions"
    );
    Ok(())
}

#[test]
fn backward_keeps_forward_dtypes() -> Result<()> {
    let w = t(&[4, 4], DType::F32).requires_grad_(true)?;
    let x = t(&[3, 4], DType::F32).requires_grad_(true)?;
    let loss = {
        let _ac = autocast(DType::BF16)?;
        x.matmul(&w)?.relu()?.softmax(1)?.sum_all()?
    };
    assert_eq!(loss.dtype(), DType::F32);
    loss.backward()?;
    assert_eq!(w.grad().expect("w").dtype(), DType::F32);
    assert_eq!(x.grad().expect("x").dtype(), DType::F32);
    Ok(())
}

/// Under autocast a convolution runs on the F32 parameter itself where the backend offers it
/// (the weight rounded as the GEMM packs it, forward and backward; its gradient rounded to the
/// half dtype and widened as its sums are finished), making no cast copy of it. Output,
/// input gradient and weight gradient must be bit-identical to convolving an explicit half
/// copy of the weight and widening its gradient: bf16 and f16, row-major and channels-last,
/// odd sizes with full AMX / register tiles and edges, several chunks of images, skipped
/// padding-only taps, fresh random data.
#[test]
fn autocast_conv_gradients_equal_the_explicit_cast_path() -> Result<()> {
    use hemi::MemoryFormat;
    let bits = |t: &Tensor| -> Result<Vec<u32>> {
        Ok(t.to_dtype(DType::F32)?
            .to_vec::<f32>()?
            .iter()
            .map(|v| v.to_bits())
            .collect())
    };
    let uniform = |dims: &[usize]| {
        Tensor::uniform(dims.to_vec(), -1.0, 1.0, DType::F32, Device::Cpu).expect("tensor")
    };
    // (input dims, c_out, kernel, stride, padding)
    let cases = [
        ([3usize, 5, 9, 11], 7usize, 3usize, 2usize, 1usize),
        ([2, 19, 13, 10], 37, 3, 1, 1),
        ([4, 40, 3, 3], 33, 1, 1, 0),
        // (Several chunks of images: per-thread weight-gradient runs added, then rounded.)
        ([3, 6, 17, 16], 9, 3, 1, 1),
        // (Taps that read only padding, skipped: centre only; 2 × 2 of 3 × 3.)
        ([3, 24, 1, 1], 20, 3, 1, 1),
        ([5, 16, 2, 2], 12, 3, 2, 1),
    ];
    for dt in [DType::BF16, DType::F16] {
        for format in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
            for &(xd, c_out, k, stride, pad) in &cases {
                let x = uniform(&xd).to_memory_format(format)?;
                let w = uniform(&[c_out, xd[1], k, k]).to_memory_format(format)?;
                let (x1, w1) = (
                    x.detach().requires_grad_(true)?,
                    w.detach().requires_grad_(true)?,
                );
                let (x2, w2) = (
                    x.detach().requires_grad_(true)?,
                    w.detach().requires_grad_(true)?,
                );
                let p = Conv2dParams::new(stride, pad);
                let y1 = {
                    let _ac = autocast(dt)?;
                    let y = x1.conv2d(&w1, None, p)?;
                    // The input was cast (and, a leaf requiring grad, cached); the weight was
                    // rounded by the convolution itself: no copy of it was made or cached.
                    assert_eq!(cache_len(), 1, "only the input's cast is cached");
                    y
                };
                let y2 = x2.to_dtype(dt)?.conv2d(&w2.to_dtype(dt)?, None, p)?;
                assert_eq!(y1.dtype(), dt);
                assert_eq!(bits(&y1)?, bits(&y2)?, "{dt} {format:?} {xd:?} output");
                let r = uniform(y1.dims());
                y1.to_dtype(DType::F32)?.mul(&r)?.sum_all()?.backward()?;
                y2.to_dtype(DType::F32)?.mul(&r)?.sum_all()?.backward()?;
                for (name, a, b) in [("weight", &w1, &w2), ("input", &x1, &x2)] {
                    let (ga, gb) = (a.grad().expect("grad"), b.grad().expect("grad"));
                    assert_eq!(ga.dtype(), DType::F32, "{name}");
                    assert_eq!(bits(&ga)?, bits(&gb)?, "{dt} {format:?} {xd:?} {name} grad");
                }
            }
        }
    }
    Ok(())
}
