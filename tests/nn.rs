//! nn layers and ResNet: names, shapes, initialisation, modes, and learning.

use hemi::nn::{resnet18, resnet34, BatchNorm2d, Dropout, Linear, Module, ReLU, Sequential};
use hemi::{manual_seed, CrossEntropySpec, DType, Device, Result, Tensor};

fn fixture(text: &str) -> Vec<(String, Vec<usize>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, shape) = l.split_once(' ').expect("name shape");
            let dims = shape
                .trim_matches(|c| c == '[' || c == ']')
                .split(", ")
                .filter(|s| !s.is_empty())
                .map(|d| d.parse().expect("dim"))
                .collect();
            (name.to_string(), dims)
        })
        .collect()
}

fn names_and_shapes(v: Vec<(String, Tensor)>) -> Vec<(String, Vec<usize>)> {
    v.into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect()
}

#[test]
fn resnet18_matches_torchvision_names_shapes_and_count() -> Result<()> {
    let model = resnet18(1000, Device::Cpu)?;
    assert_eq!(model.num_parameters(), 11_689_512);
    let want = fixture(include_str!("fixtures/resnet18_parameters.txt"));
    assert_eq!(names_and_shapes(model.named_parameters()), want);
    let want_buffers = fixture(include_str!("fixtures/resnet18_buffers.txt"));
    assert_eq!(names_and_shapes(model.named_buffers()), want_buffers);
    assert!(model
        .parameters()
        .iter()
        .all(|p| p.requires_grad() && p.dtype() == DType::F32));
    Ok(())
}

#[test]
fn resnet34_parameter_count() -> Result<()> {
    assert_eq!(resnet34(1000, Device::Cpu)?.num_parameters(), 21_797_672);
    Ok(())
}

#[test]
fn resnet_forward_shapes() -> Result<()> {
    let model = resnet18(10, Device::Cpu)?;
    let y = model.forward(&Tensor::randn([2, 3, 64, 64], DType::F32, Device::Cpu)?)?;
    assert_eq!(y.dims(), &[2, 10]);
    let y = model.forward(&Tensor::randn([1, 3, 33, 47], DType::F32, Device::Cpu)?)?;
    assert_eq!(y.dims(), &[1, 10], "odd input sizes work");
    assert!(model
        .forward(&Tensor::randn([2, 1, 32, 32], DType::F32, Device::Cpu)?)
        .is_err());
    Ok(())
}

#[test]
fn initialisation_follows_pytorch() -> Result<()> {
    manual_seed(5);
    let lin = Linear::new(300, 200, true, Device::Cpu)?;
    let bound = 1.0 / 300f64.sqrt();
    let w = lin.weight.to_f64_vec()?;
    assert!(
        w.iter().all(|v| v.abs() <= bound),
        "kaiming_uniform(a=sqrt 5) bound 1/sqrt(fan_in)"
    );
    let var = w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64;
    assert!(
        (var / (bound * bound / 3.0) - 1.0).abs() < 0.05,
        "uniform variance bound^2/3, got {var}"
    );
    let model = resnet18(10, Device::Cpu)?;
    let named = model.named_parameters();
    let conv = &named
        .iter()
        .find(|(n, _)| n == "layer3.0.conv1.weight")
        .expect("conv")
        .1;
    let v = conv.to_f64_vec()?;
    let std = (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    let want = (2.0f64 / (256.0 * 9.0)).sqrt();
    assert!(
        (std / want - 1.0).abs() < 0.05,
        "kaiming_normal fan_out std {std} vs {want}"
    );
    let bn = BatchNorm2d::new(4, Device::Cpu)?;
    assert_eq!(bn.weight.to_vec::<f32>()?, vec![1.0; 4]);
    assert_eq!(bn.bias.to_vec::<f32>()?, vec![0.0; 4]);
    Ok(())
}

#[test]
fn train_and_eval_modes() -> Result<()> {
    let mut bn = BatchNorm2d::new(3, Device::Cpu)?;
    let x = Tensor::randn([4, 3, 5, 5], DType::F32, Device::Cpu)?.affine(2.0, 1.0)?;
    bn.forward(&x)?;
    assert_eq!(bn.num_batches_tracked.to_scalar::<i64>()?, 1);
    let rm = bn.running_mean.to_vec::<f32>()?;
    bn.eval();
    assert!(!bn.is_training());
    let y1 = bn.forward(&x)?.to_vec::<f32>()?;
    let y2 = bn.forward(&x)?.to_vec::<f32>()?;
    assert_eq!(y1, y2, "eval is deterministic");
    assert_eq!(
        bn.running_mean.to_vec::<f32>()?,
        rm,
        "eval leaves running stats alone"
    );
    assert_eq!(bn.num_batches_tracked.to_scalar::<i64>()?, 1);

    let mut drop = Dropout::new(0.25);
    let ones = Tensor::ones([4000], DType::F32, Device::Cpu)?;
    let d = drop.forward(&ones)?.to_vec::<f32>()?;
    let zeros = d.iter().filter(|&&v| v == 0.0).count() as f64 / d.len() as f64;
    assert!((zeros - 0.25).abs() < 0.03, "dropped fraction {zeros}");
    assert!(
        d.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6),
        "survivors scaled by 1/(1-p)"
    );
    drop.eval();
    assert_eq!(drop.forward(&ones)?.to_vec::<f32>()?, vec![1.0; 4000]);
    assert!(Dropout::new(1.5).forward(&ones).is_err());
    Ok(())
}

#[test]
fn sequential_names_and_mode_propagation() -> Result<()> {
    let mut seq = Sequential::new()
        .push(Linear::new(3, 4, true, Device::Cpu)?)
        .push(ReLU)
        .push_named("head", Linear::new(4, 2, false, Device::Cpu)?)
        .push(Dropout::new(0.5));
    let names: Vec<String> = seq.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.weight", "0.bias", "head.weight"]);
    seq.eval();
    assert!(!seq.is_training());
    let x = Tensor::randn([5, 3], DType::F32, Device::Cpu)?;
    assert_eq!(
        seq.forward(&x)?.to_vec::<f32>()?,
        seq.forward(&x)?.to_vec::<f32>()?
    );
    Ok(())
}

#[test]
fn resnet_loss_decreases_on_a_fixed_batch() -> Result<()> {
    manual_seed(3);
    let model = resnet18(4, Device::Cpu)?;
    let x = Tensor::randn([4, 3, 32, 32], DType::F32, Device::Cpu)?;
    let y = Tensor::from_vec(vec![0i64, 1, 2, 3], [4], Device::Cpu)?;
    let params = model.parameters();
    let mut losses = vec![];
    for _ in 0..6 {
        let loss = model
            .forward(&x)?
            .cross_entropy(&y, CrossEntropySpec::default())?;
        losses.push(loss.item()?);
        loss.backward()?;
        let _g = hemi::no_grad();
        for p in &params {
            if let Some(g) = p.grad() {
                p.assign(&p.sub(&g.mul_scalar(0.05)?)?)?;
            }
            p.zero_grad();
        }
    }
    assert!(losses[5] < losses[0] * 0.7, "losses {losses:?}");
    Ok(())
}
