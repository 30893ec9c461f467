//! Optimizers against plain-f64 loops of torch.optim's update rules (written here,
//! independently of the code under test), plus state dicts, skipped parameters and errors.

use hemi::optim::{Adam, AdamConfig, AdamW, Optimizer, OptimizerState, Sgd, SgdConfig};
use hemi::{DType, Device, Error, Generator, Result, Tensor};

mod common;

const SHAPES: [&[usize]; 3] = [&[3, 4], &[5], &[]];
const STEPS: u64 = 5;

type Make = dyn Fn(Vec<Tensor>) -> Result<Box<dyn Optimizer>>;

fn leaf(values: Vec<f64>, dims: &[usize]) -> Tensor {
    Tensor::from_vec(values, dims.to_vec(), Device::Cpu)
        .and_then(|t| t.requires_grad_(true))
        .expect("leaf parameter")
}

fn random_params(gen: &mut Generator) -> Vec<Tensor> {
    SHAPES
        .iter()
        .map(|dims| {
            let t = Tensor::randn_with(gen, dims.to_vec(), DType::F64, Device::Cpu);
            leaf(t.and_then(|t| t.to_vec()).expect("random values"), dims)
        })
        .collect()
}

fn random_grads(gen: &mut Generator, params: &[Tensor]) -> Vec<Tensor> {
    params
        .iter()
        .map(|p| Tensor::randn_with(gen, p.dims().to_vec(), p.dtype(), Device::Cpu))
        .collect::<Result<_>>()
        .expect("random gradients")
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().expect("f64 values")
}

/// A reference optimizer on flat f64 vectors, one per parameter.
trait Reference {
    fn update(&mut self, i: usize, p: &mut [f64], g: &[f64]);
    /// The expected buffers of parameter `i`, sorted by name.
    fn buffers(&self, i: usize) -> Vec<(&'static str, Vec<f64>)>;
}

struct SgdRef {
    c: SgdConfig,
    buf: Vec<Option<Vec<f64>>>,
}

impl Reference for SgdRef {
    fn update(&mut self, i: usize, p: &mut [f64], g: &[f64]) {
        let c = self.c;
        let mut d: Vec<f64> = (0..p.len()).map(|j| g[j] + c.weight_decay * p[j]).collect();
        if c.momentum != 0.0 {
            let buf: Vec<f64> = match &self.buf[i] {
                None => d.clone(),
                Some(b) => (0..p.len())
                    .map(|j| c.momentum * b[j] + (1.0 - c.dampening) * d[j])
                    .collect(),
            };
            for j in 0..p.len() {
                d[j] = if c.nesterov {
                    d[j] + c.momentum * buf[j]
                } else {
                    buf[j]
                };
            }
            self.buf[i] = Some(buf);
        }
        for j in 0..p.len() {
            p[j] -= c.lr * d[j];
        }
    }
    fn buffers(&self, i: usize) -> Vec<(&'static str, Vec<f64>)> {
        self.buf[i]
            .iter()
            .map(|b| ("momentum_buffer", b.clone()))
            .collect()
    }
}

struct AdamRef {
    c: AdamConfig,
    decoupled: bool,
    t: Vec<i32>,
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    v_max: Vec<Vec<f64>>,
}

impl Reference for AdamRef {
    fn update(&mut self, i: usize, p: &mut [f64], g: &[f64]) {
        let (c, n) = (self.c, p.len());
        let (b1, b2) = c.betas;
        if self.t[i] == 0 {
            self.m[i] = vec![0.0; n];
            self.v[i] = vec![0.0; n];
            self.v_max[i] = vec![0.0; n];
        }
        self.t[i] += 1;
        let bc1 = 1.0 - b1.powi(self.t[i]);
        let bc2 = 1.0 - b2.powi(self.t[i]);
        for j in 0..n {
            let mut d = g[j];
            if self.decoupled {
                p[j] *= 1.0 - c.lr * c.weight_decay;
            } else {
                d += c.weight_decay * p[j];
            }
            let m = b1 * self.m[i][j] + (1.0 - b1) * d;
            let v = b2 * self.v[i][j] + (1.0 - b2) * (d * d);
            self.v_max[i][j] = self.v_max[i][j].max(v);
            let v_hat = if c.amsgrad { self.v_max[i][j] } else { v };
            let denom = v_hat.sqrt() / bc2.sqrt() + c.eps;
            p[j] -= (c.lr / bc1) * m / denom;
            (self.m[i][j], self.v[i][j]) = (m, v);
        }
    }
    fn buffers(&self, i: usize) -> Vec<(&'static str, Vec<f64>)> {
        let mut out = vec![
            ("exp_avg", self.m[i].clone()),
            ("exp_avg_sq", self.v[i].clone()),
        ];
        if self.c.amsgrad {
            out.push(("max_exp_avg_sq", self.v_max[i].clone()));
        }
        out
    }
}

fn sgd_case(c: SgdConfig) -> (Box<Make>, Box<dyn Reference>) {
    let reference = SgdRef {
        c,
        buf: vec![None; SHAPES.len()],
    };
    let make =
        move |ps: Vec<Tensor>| -> Result<Box<dyn Optimizer>> { Ok(Box::new(Sgd::new(ps, c)?)) };
    (Box::new(make), Box::new(reference))
}

fn adam_case(c: AdamConfig, decoupled: bool) -> (Box<Make>, Box<dyn Reference>) {
    let n = SHAPES.len();
    let reference = AdamRef {
        c,
        decoupled,
        t: vec![0; n],
        m: vec![vec![]; n],
        v: vec![vec![]; n],
        v_max: vec![vec![]; n],
    };
    let make = move |ps: Vec<Tensor>| -> Result<Box<dyn Optimizer>> {
        Ok(if decoupled {
            Box::new(AdamW::new(ps, c)?)
        } else {
            Box::new(Adam::new(ps, c)?)
        })
    };
    (Box::new(make), Box::new(reference))
}

/// Five steps with fresh random gradients; parameters, step counts and every buffer are
/// compared with the reference after each step — on every device: F64 parameters on the CPU
/// (to 1e-12 relative), F32 ones on the CUDA backend (which has no F64 kernels; to
/// 1e-5·(1 + |want|), the f32 rounding of five steps' arithmetic).
fn check_against_reference(case: impl Fn() -> (Box<Make>, Box<dyn Reference>), seed: u64) {
    for dev in common::devices() {
        let (make, mut reference) = case();
        let (dtype, tol) = match dev {
            Device::Cpu => (DType::F64, 1e-12),
            _ => (DType::F32, 1e-5),
        };
        let mut gen = Generator::new(seed);
        let params: Vec<Tensor> = random_params(&mut gen)
            .iter()
            .map(|p| {
                p.to_dtype(dtype)
                    .and_then(|t| t.to_device(dev))
                    .and_then(|t| t.detach().requires_grad_(true))
                    .expect("parameter on the device")
            })
            .collect();
        let mut want: Vec<Vec<f64>> = params.iter().map(any_values).collect();
        let mut opt = make(params.clone()).expect("optimizer");
        let close = |what: &str, got: &[f64], want: &[f64]| {
            assert_eq!(got.len(), want.len(), "{what}: length");
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                let bound = if dtype == DType::F64 {
                    tol * w.abs()
                } else {
                    tol * (1.0 + w.abs())
                };
                assert!(
                    (g - w).abs() <= bound,
                    "{what}[{k}] on {dev}: got {g}, want {w}"
                );
            }
        };
        for step in 1..=STEPS {
            for (i, (p, g)) in params
                .iter()
                .zip(random_grads(&mut gen, &params))
                .enumerate()
            {
                let g = g.to_device(dev).expect("gradient on the device");
                reference.update(i, &mut want[i], &any_values(&g));
                p.set_grad(Some(g)).expect("set_grad");
            }
            opt.step().expect("step");
            opt.zero_grad();
            let state = opt.state_dict();
            for (i, p) in params.iter().enumerate() {
                assert!(p.grad().is_none(), "zero_grad drops the gradient");
                close(&format!("step {step} param {i}"), &any_values(p), &want[i]);
                let ps = &state.params[i];
                assert_eq!(ps.step, step);
                let expected = reference.buffers(i);
                let names: Vec<&str> = ps.buffers.keys().map(String::as_str).collect();
                let want_names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
                assert_eq!(names, want_names, "step {step} param {i}: buffer names");
                for (name, vals) in expected {
                    let b = &ps.buffers[name];
                    assert_eq!(b.dtype(), dtype);
                    close(
                        &format!("step {step} param {i} {name}"),
                        &any_values(b),
                        &vals,
                    );
                }
            }
        }
    }
}

/// The values of a tensor of any float dtype on any device, as f64.
fn any_values(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().expect("values")
}

#[test]
fn sgd_plain_matches_reference() {
    check_against_reference(|| sgd_case(SgdConfig::new(0.1)), 1);
}

#[test]
fn sgd_momentum_dampening_matches_reference() {
    check_against_reference(
        || sgd_case(SgdConfig::new(0.05).momentum(0.9).dampening(0.3)),
        2,
    );
}

#[test]
fn sgd_nesterov_matches_reference() {
    check_against_reference(
        || sgd_case(SgdConfig::new(0.05).momentum(0.8).nesterov(true)),
        3,
    );
}

#[test]
fn sgd_weight_decay_matches_reference() {
    check_against_reference(|| sgd_case(SgdConfig::new(0.1).weight_decay(0.01)), 4);
    let c = SgdConfig::new(0.1)
        .momentum(0.9)
        .weight_decay(0.05)
        .nesterov(true);
    check_against_reference(|| sgd_case(c), 5);
}

#[test]
fn adam_matches_reference() {
    check_against_reference(|| adam_case(AdamConfig::default(), false), 6);
    let c = AdamConfig::default().lr(0.05).betas(0.8, 0.99).eps(1e-3);
    check_against_reference(|| adam_case(c, false), 7);
}

#[test]
fn adam_weight_decay_matches_reference() {
    check_against_reference(
        || adam_case(AdamConfig::default().lr(0.01).weight_decay(0.1), false),
        8,
    );
}

#[test]
fn adam_amsgrad_matches_reference() {
    let c = AdamConfig::default()
        .lr(0.01)
        .weight_decay(0.01)
        .amsgrad(true);
    check_against_reference(|| adam_case(c, false), 9);
}

#[test]
fn adamw_matches_reference() {
    check_against_reference(|| adam_case(AdamConfig::adamw().lr(0.01), true), 10);
    let c = AdamConfig::adamw().lr(0.02).weight_decay(0.1).amsgrad(true);
    check_against_reference(|| adam_case(c, true), 11);
}

#[test]
fn defaults_are_pytorchs() {
    let a = AdamConfig::default();
    assert_eq!(
        (a.lr, a.betas, a.eps, a.weight_decay, a.amsgrad),
        (1e-3, (0.9, 0.999), 1e-8, 0.0, false)
    );
    assert_eq!(
        AdamConfig::adamw(),
        AdamConfig {
            weight_decay: 1e-2,
            ..a
        }
    );
    let s = SgdConfig::new(0.1);
    assert_eq!(
        (s.momentum, s.dampening, s.weight_decay, s.nesterov),
        (0.0, 0.0, 0.0, false)
    );
}

fn all_kinds() -> Vec<Box<Make>> {
    vec![
        sgd_case(SgdConfig::new(0.1).momentum(0.9).weight_decay(0.01)).0,
        adam_case(
            AdamConfig::default().weight_decay(0.01).amsgrad(true),
            false,
        )
        .0,
        adam_case(AdamConfig::adamw(), true).0,
    ]
}

#[test]
fn param_without_grad_is_untouched() {
    for make in all_kinds() {
        let mut gen = Generator::new(12);
        let params = random_params(&mut gen);
        let before = values(&params[1]);
        let mut opt = make(params.clone()).expect("optimizer");
        for _ in 0..3 {
            let grads = random_grads(&mut gen, &params);
            params[0]
                .set_grad(Some(grads[0].clone()))
                .expect("set_grad");
            opt.step().expect("step");
        }
        let state = opt.state_dict();
        assert_eq!(values(&params[1]), before, "{}", state.kind);
        assert_eq!(state.params[1].step, 0);
        assert!(state.params[1].buffers.is_empty());
        assert_eq!(state.params[0].step, 3);
    }
}

fn copy_params(params: &[Tensor]) -> Vec<Tensor> {
    params.iter().map(|p| leaf(values(p), p.dims())).collect()
}

/// Per parameter: the step count and each buffer's name and values.
type Snapshot = Vec<(u64, Vec<(String, Vec<f64>)>)>;

fn buffer_values(state: &OptimizerState) -> Snapshot {
    let buffers = |b: &std::collections::BTreeMap<String, Tensor>| {
        b.iter().map(|(n, t)| (n.clone(), values(t))).collect()
    };
    state
        .params
        .iter()
        .map(|ps| (ps.step, buffers(&ps.buffers)))
        .collect()
}

#[test]
fn resume_from_state_dict_is_bit_identical() {
    for make in all_kinds() {
        let mut gen = Generator::new(13);
        let init = random_params(&mut gen);
        let grads: Vec<Vec<Tensor>> = (0..6).map(|_| random_grads(&mut gen, &init)).collect();
        let run = |opt: &mut dyn Optimizer, steps: std::ops::Range<usize>| {
            for s in steps {
                for (p, g) in opt.params().iter().zip(&grads[s]) {
                    p.set_grad(Some(g.clone())).expect("set_grad");
                }
                opt.step().expect("step");
            }
        };
        let mut full = make(copy_params(&init)).expect("optimizer");
        run(full.as_mut(), 0..6);

        let mut first = make(copy_params(&init)).expect("optimizer");
        run(first.as_mut(), 0..3);
        let saved = first.state_dict();
        let snapshot = buffer_values(&saved);
        let resumed_params = copy_params(first.params());
        run(first.as_mut(), 3..5);
        assert_eq!(
            buffer_values(&saved),
            snapshot,
            "later steps leave a saved state as it was"
        );

        let mut resumed = make(resumed_params).expect("optimizer");
        resumed.load_state_dict(&saved).expect("load_state_dict");
        for b in saved.params.iter().flat_map(|ps| ps.buffers.values()) {
            b.assign(&b.zeros_like().expect("zeros")).expect("assign");
        }
        run(resumed.as_mut(), 3..6);
        for (a, b) in full.params().iter().zip(resumed.params()) {
            assert_eq!(values(a), values(b), "{}", saved.kind);
        }
        assert_eq!(
            buffer_values(&full.state_dict()),
            buffer_values(&resumed.state_dict())
        );
    }
}

#[test]
fn load_state_dict_restores_hyper_parameters() {
    let mut gen = Generator::new(14);
    let params = random_params(&mut gen);
    let mut opt = Adam::new(params.clone(), AdamConfig::default()).expect("adam");
    opt.set_lr(0.5).expect("a valid rate");
    assert_eq!(opt.lr(), 0.5);
    let saved = opt.state_dict();
    assert_eq!(saved.hyper_params["lr"], 0.5);
    let mut other = Adam::new(params, AdamConfig::default().amsgrad(true)).expect("adam");
    other.load_state_dict(&saved).expect("load");
    assert_eq!(other.config(), &AdamConfig::default().lr(0.5));
}

fn expect_err(r: Result<()>, shape: bool, needles: &[&str]) {
    let e = r.expect_err("an error");
    match (&e, shape) {
        (Error::ShapeMismatch { .. }, true) | (Error::InvalidArgument { .. }, false) => {}
        _ => panic!("wrong error variant: {e}"),
    }
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "`{msg}` should mention `{n}`");
    }
}

#[test]
fn load_state_dict_errors_name_the_mismatch() {
    let mut gen = Generator::new(15);
    let params = random_params(&mut gen);
    let mut adam = Adam::new(params.clone(), AdamConfig::default().amsgrad(true)).expect("adam");
    for (p, g) in params.iter().zip(random_grads(&mut gen, &params)) {
        p.set_grad(Some(g)).expect("set_grad");
    }
    adam.step().expect("step");
    let good = adam.state_dict();
    let before = buffer_values(&good);

    let mut fewer = good.clone();
    fewer.params.pop();
    expect_err(adam.load_state_dict(&fewer), false, &["2 parameters", "3"]);

    let mut sgd = Sgd::new(params.clone(), SgdConfig::new(0.1)).expect("sgd");
    expect_err(sgd.load_state_dict(&good), false, &["`Adam`", "`SGD`"]);
    let mut adamw = AdamW::new(params.clone(), AdamConfig::adamw()).expect("adamw");
    expect_err(adamw.load_state_dict(&good), false, &["`Adam`", "`AdamW`"]);

    let mut wrong_shape = good.clone();
    let bad = Tensor::zeros([4, 3], DType::F64, Device::Cpu).expect("zeros");
    wrong_shape.params[0].buffers.insert("exp_avg".into(), bad);
    expect_err(
        adam.load_state_dict(&wrong_shape),
        true,
        &["parameter 0", "exp_avg", "[4, 3]", "[3, 4]"],
    );

    let mut unknown = good.clone();
    let extra = params[1].zeros_like().expect("zeros");
    unknown.params[1]
        .buffers
        .insert("momentum_buffer".into(), extra);
    expect_err(
        adam.load_state_dict(&unknown),
        false,
        &["parameter 1", "momentum_buffer"],
    );

    let mut missing = good.clone();
    missing.params[2].buffers.remove("max_exp_avg_sq");
    expect_err(
        adam.load_state_dict(&missing),
        false,
        &["parameter 2", "max_exp_avg_sq"],
    );

    let mut no_lr = good.clone();
    no_lr.hyper_params.remove("lr");
    expect_err(adam.load_state_dict(&no_lr), false, &["`lr`"]);

    let mut bad_flag = good.clone();
    bad_flag.hyper_params.insert("amsgrad".into(), 0.5);
    expect_err(
        adam.load_state_dict(&bad_flag),
        false,
        &["`amsgrad`", "0.5"],
    );

    let mut bad_beta = good.clone();
    bad_beta.hyper_params.insert("beta2".into(), 1.0);
    expect_err(
        adam.load_state_dict(&bad_beta),
        false,
        &["Invalid beta parameter at index 1: 1"],
    );

    assert_eq!(
        buffer_values(&adam.state_dict()),
        before,
        "failed loads change nothing"
    );
    assert_eq!(adam.config(), &AdamConfig::default().amsgrad(true));
}

#[test]
fn invalid_hyper_parameters_are_errors() {
    let p = || vec![leaf(vec![1.0, 2.0], &[2])];
    let sgd = |c: SgdConfig| Sgd::new(p(), c).map(drop);
    expect_err(
        sgd(SgdConfig::new(-0.1)),
        false,
        &["Invalid learning rate: -0.1"],
    );
    expect_err(
        sgd(SgdConfig::new(f64::NAN)),
        false,
        &["Invalid learning rate: NaN"],
    );
    expect_err(
        sgd(SgdConfig::new(0.1).momentum(-1.0)),
        false,
        &["Invalid momentum value: -1"],
    );
    expect_err(
        sgd(SgdConfig::new(0.1).weight_decay(-1.0)),
        false,
        &["Invalid weight_decay value: -1"],
    );
    let nesterov = "Nesterov momentum requires a momentum and zero dampening";
    expect_err(sgd(SgdConfig::new(0.1).nesterov(true)), false, &[nesterov]);
    let damped = SgdConfig::new(0.1)
        .momentum(0.9)
        .dampening(0.1)
        .nesterov(true);
    expect_err(sgd(damped), false, &[nesterov]);

    let adam = |c: AdamConfig| Adam::new(p(), c).map(drop);
    let adamw = |c: AdamConfig| AdamW::new(p(), c).map(drop);
    let d = AdamConfig::default();
    expect_err(
        adam(d.lr(-1.0)),
        false,
        &["Adam", "Invalid learning rate: -1"],
    );
    expect_err(
        adam(d.eps(-1e-8)),
        false,
        &["Invalid epsilon value: -0.00000001"],
    );
    expect_err(
        adam(d.betas(1.0, 0.999)),
        false,
        &["Invalid beta parameter at index 0: 1"],
    );
    expect_err(
        adam(d.betas(0.9, -0.1)),
        false,
        &["Invalid beta parameter at index 1: -0.1"],
    );
    expect_err(
        adamw(d.weight_decay(-0.1)),
        false,
        &["AdamW", "Invalid weight_decay value: -0.1"],
    );

    let w = leaf(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]);
    expect_err(
        Sgd::new(vec![], SgdConfig::new(0.1)).map(drop),
        false,
        &["empty parameter list"],
    );
    let non_leaf = w.mul_scalar(2.0).expect("mul");
    expect_err(adam_new(vec![non_leaf]), false, &["non-leaf"]);
    let ints = Tensor::from_vec(vec![1i64, 2], [2], Device::Cpu).expect("ints");
    expect_err(adam_new(vec![ints]), false, &["float"]);
    expect_err(
        adam_new(vec![w.clone(), w.clone()]),
        false,
        &["parameter 1", "more than once"],
    );
    expect_err(
        adam_new(vec![w.detach().t().expect("t")]),
        false,
        &["contiguous"],
    );
}

fn adam_new(params: Vec<Tensor>) -> Result<()> {
    Adam::new(params, AdamConfig::default()).map(drop)
}

#[test]
fn f32_params_keep_f32_state() {
    let w = Tensor::from_vec(vec![0.5f32, -1.5, 2.0], [3], Device::Cpu)
        .and_then(|t| t.requires_grad_(true))
        .expect("w");
    let mut opt = AdamW::new(vec![w.clone()], AdamConfig::adamw().lr(0.1)).expect("adamw");
    let grad = Tensor::from_vec(vec![0.25f64, -1.0, 4.0], [3], Device::Cpu).expect("grad");
    w.set_grad(Some(grad)).expect("set_grad");
    opt.step().expect("step");
    assert_eq!(w.dtype(), DType::F32);
    let state = opt.state_dict();
    for b in state.params[0].buffers.values() {
        assert_eq!(b.dtype(), DType::F32);
    }
    // First Adam step: m/(sqrt(v)+eps) is sign(g) up to eps, so p ← p(1 − lr·wd) − lr·sign(g).
    let got = w.to_vec::<f32>().expect("values");
    for (g, want) in got
        .iter()
        .zip([0.5 * 0.999 - 0.1, -1.5 * 0.999 + 0.1, 2.0 * 0.999 - 0.1])
    {
        assert!((f64::from(*g) - want).abs() < 1e-5, "{g} vs {want}");
    }
}
