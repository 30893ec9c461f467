//! Autograd semantics: leaves, accumulation, zero_grad, detach, no_grad, explicit upstream
//! gradients, graph freeing and retain_graph.

use hemi::{no_grad, DType, Device, Error, Tensor};

fn leaf(v: &[f32]) -> Tensor {
    Tensor::from_slice(v, [v.len()], Device::Cpu)
        .and_then(|t| t.requires_grad_(true))
        .expect("leaf")
}

fn grad_of(t: &Tensor) -> Vec<f32> {
    t.grad()
        .expect("gradient present")
        .to_vec::<f32>()
        .expect("f32 grad")
}

#[test]
fn leaves_and_requires_grad_propagation() {
    let w = leaf(&[1.0, 2.0]);
    let c = Tensor::ones([2], DType::F32, Device::Cpu).expect("c");
    assert!(w.is_leaf() && w.requires_grad());
    assert!(!c.requires_grad());
    let y = w.mul(&c).expect("mul");
    assert!(y.requires_grad() && !y.is_leaf());
    assert!(!c.mul_scalar(2.0).expect("c2").requires_grad());
    assert!(
        y.requires_grad_(false).is_err(),
        "non-leaf requires_grad_ is an error"
    );
    let ints = Tensor::from_vec(vec![1i64], [1], Device::Cpu).expect("ints");
    assert!(
        ints.requires_grad_(true).is_err(),
        "int tensors cannot require grad"
    );
}

#[test]
fn gradients_accumulate_until_zero_grad() {
    let w = leaf(&[1.0, -2.0, 3.0]);
    for _ in 0..3 {
        w.square()
            .and_then(|s| s.sum_all())
            .and_then(|l| l.backward())
            .expect("backward");
    }
    assert_eq!(grad_of(&w), vec![6.0, -12.0, 18.0]);
    w.zero_grad();
    assert!(w.grad().is_none());
    w.mul_scalar(5.0)
        .and_then(|s| s.sum_all())
        .and_then(|l| l.backward())
        .expect("backward");
    assert_eq!(grad_of(&w), vec![5.0; 3]);
}

#[test]
fn shared_subexpressions_sum_their_gradients() {
    let x = leaf(&[2.0]);
    let y = x.mul(&x).expect("x*x"); // dy/dx = 2x
    let z = y.add(&x).expect("y+x"); // dz/dx = 2x + 1
    z.backward().expect("backward");
    assert_eq!(grad_of(&x), vec![5.0]);
}

#[test]
fn backward_with_explicit_gradient_and_retain_graph() {
    let x = leaf(&[1.0, 2.0]);
    let y = x.mul_scalar(3.0).expect("y");
    let seed = Tensor::from_slice(&[1.0f32, 10.0], [2], Device::Cpu).expect("seed");
    assert!(
        matches!(y.backward(), Err(Error::Autograd(_))),
        "non-scalar backward needs a gradient"
    );
    y.backward_with(&seed, true).expect("first");
    y.backward_with(&seed, false)
        .expect("second, graph retained");
    assert_eq!(grad_of(&x), vec![6.0, 60.0]);
    let err = y.backward_with(&seed, false).expect_err("graph was freed");
    assert!(err.to_string().contains("second time"), "{err}");
    let bad = Tensor::ones([3], DType::F32, Device::Cpu).expect("bad");
    let fresh = x.mul_scalar(1.0).expect("fresh");
    assert!(
        fresh.backward_with(&bad, false).is_err(),
        "gradient shape must match"
    );
}

#[test]
fn detach_and_no_grad_cut_the_graph() {
    let x = leaf(&[1.0, 2.0]);
    let d = x.detach();
    assert!(!d.requires_grad() && d.is_leaf());
    {
        let _g = no_grad();
        assert!(!hemi::is_grad_enabled());
        let y = x.mul_scalar(2.0).expect("y");
        assert!(!y.requires_grad());
        assert!(
            y.sum_all().and_then(|s| s.backward()).is_err(),
            "nothing to differentiate"
        );
    }
    assert!(hemi::is_grad_enabled(), "guard restores grad mode");
    let y = x.mul(&d).expect("x*d").sum_all().expect("sum");
    y.backward().expect("backward");
    assert_eq!(grad_of(&x), vec![1.0, 2.0], "detached factor is a constant");
}

#[test]
fn gradient_dtype_follows_the_leaf() {
    let w = Tensor::from_slice(&[0.5f32, 1.5], [2], Device::Cpu)
        .and_then(|t| t.requires_grad_(true))
        .expect("w");
    let half = w.to_dtype(DType::F16).expect("cast");
    half.mul_scalar(2.0)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.sum_all())
        .and_then(|l| l.backward())
        .expect("bw");
    let g = w.grad().expect("grad");
    assert_eq!(g.dtype(), DType::F32, "fp32 parameters get fp32 gradients");
    assert_eq!(g.to_vec::<f32>().expect("g"), vec![2.0, 2.0]);
}

#[test]
fn graph_is_released_after_backward() {
    let x = leaf(&[1.0; 4]);
    let big = x.exp().expect("exp");
    let weak = std::sync::Arc::downgrade(&big.storage());
    let loss = big.sum_all().expect("sum");
    drop(big);
    assert!(
        weak.upgrade().is_some(),
        "the graph keeps saved tensors alive before backward"
    );
    loss.backward().expect("backward");
    assert!(
        weak.upgrade().is_none(),
        "saved tensors are freed by backward"
    );
}

/// A convolution whose input needs no gradient (a network's input image) computes only the
/// weight's: the same weight gradient as when the input's is computed too, and none for x.
#[test]
fn conv_weight_gradient_without_input_gradient() {
    use hemi::{Conv2dParams, Generator};
    let mut g = Generator::new(7);
    let x = Tensor::randn_with(&mut g, [2, 3, 9, 7], DType::F32, Device::Cpu).expect("x");
    let w = Tensor::randn_with(&mut g, [4, 3, 3, 3], DType::F32, Device::Cpu).expect("w");
    let p = Conv2dParams::new(2, 1);
    let weight_grad = |x: &Tensor| {
        let w = w.detach().requires_grad_(true).expect("w leaf");
        let y = x.conv2d(&w, None, p).expect("conv2d");
        y.mul(&y)
            .expect("square")
            .sum_all()
            .expect("sum")
            .backward()
            .expect("backward");
        grad_of(&w)
    };
    let with_dx = x.detach().requires_grad_(true).expect("x leaf");
    let want = weight_grad(&with_dx);
    assert!(with_dx.grad().is_some());
    let got = weight_grad(&x);
    assert!(x.grad().is_none());
    assert_eq!(got, want);
    assert!(got.iter().any(|v| *v != 0.0));
}
