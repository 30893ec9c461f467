//! Exact resume: a run of N + M steps (fp16 autocast + GradScaler, Adam, a cosine schedule,
//! dropout, batch norm, a shuffled and augmented data loader) equals, bit for bit in every
//! loss and every final parameter and buffer, N steps that save a training state and M more
//! steps in a fresh process that loads it — on the CPU and, with feature `cuda`, on the
//! emulated CUDA backend.

use hemi::amp::{autocast, GradScaler, GradScalerConfig};
use hemi::data::transforms::{Compose, Normalize, RandomCrop, RandomHorizontalFlip, ToTensor};
use hemi::data::{DataLoader, DataLoaderConfig, Image, InMemory, Transformed};
use hemi::nn::{
    BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, Module, ReLU, Sequential,
};
use hemi::optim::{Adam, AdamConfig, LrScheduler, Optimizer, Schedule};
use hemi::train_state::{self, Parts, Progress};
use hemi::{manual_seed, CrossEntropySpec, DType, Device, Generator, Result};
use std::path::{Path, PathBuf};

type Data = Transformed<InMemory, Compose>;

fn data() -> Result<DataLoader<Data>> {
    let mut g = Generator::new(5);
    let images = (0..23)
        .map(|_| Image::from_u8(1, 8, 8, (0..64).map(|_| g.int(0, 256) as u8).collect()))
        .collect::<Result<Vec<_>>>()?;
    let labels = (0..23).map(|i| i % 3).collect();
    let augment = Compose::new(vec![
        Box::new(RandomCrop {
            size: (8, 8),
            padding: 1,
        }),
        Box::new(RandomHorizontalFlip::default()),
        Box::new(ToTensor),
        Box::new(Normalize::new(vec![0.5], vec![0.25])?),
    ]);
    let config = DataLoaderConfig {
        batch_size: 5,
        shuffle: true,
        seed: 11,
        num_workers: 2,
        ..Default::default()
    };
    DataLoader::new(
        Transformed::new(InMemory::new(images, labels)?, augment),
        config,
    )
}

fn model(device: Device) -> Result<Sequential> {
    Ok(Sequential::new()
        .push(Conv2d::new(1, 4, 3, 1, 1, true, device)?)
        .push(BatchNorm2d::new(4, device)?)
        .push(ReLU)
        .push(MaxPool2d::new(2, 2, 0))
        .push(Flatten)
        .push(Dropout::new(0.2))
        .push(Linear::new(64, 3, true, device)?))
}

/// What a run produced: every loss, then every parameter and buffer (as bits).
#[derive(Debug, Default, PartialEq)]
struct Trace {
    losses: Vec<u64>,
    skipped: u64,
    state: Vec<(String, Vec<u32>)>,
}

/// Trains on `device` until `steps` optimizer steps have been taken in all (counting those
/// before a resume; resuming from
/// `resume` first), saving a training state at step `save_at` (and stopping there).
fn run(
    device: Device,
    resume: Option<&Path>,
    steps: u64,
    save_at: Option<(u64, &Path)>,
) -> Result<Trace> {
    // A fresh process's seed differs from the saved run's: loading must restore the generator.
    manual_seed(if resume.is_some() { 999 } else { 1 });
    let loader = data()?;
    let net = model(device)?;
    let mut opt = Adam::new(net.parameters(), AdamConfig::adam().lr(1e-2))?;
    let mut sched = LrScheduler::new(
        Schedule::Cosine {
            t_max: 4,
            eta_min: 1e-4,
        },
        &mut opt,
    )?;
    // A scale large enough to overflow fp16 gradients now and then: skipped steps and
    // back-offs, so a resumed run that lost the scaler's state would diverge.
    let mut scaler = GradScaler::new(GradScalerConfig {
        init_scale: 2f64.powi(20),
        growth_interval: 2,
        ..Default::default()
    })?;
    let mut progress = Progress::default();
    if let Some(path) = resume {
        let parts = Parts {
            model: &net,
            optimizer: &mut opt,
            scaler: Some(&mut scaler),
            scheduler: Some(&mut sched),
        };
        progress = train_state::load(path, parts)?;
    }
    let mut trace = Trace::default();
    'epochs: loop {
        for batch in loader.epoch_from(progress.epoch, progress.batch, device)? {
            let batch = batch?;
            opt.zero_grad();
            let loss = {
                let _region = autocast(DType::F16)?;
                net.forward(&batch.images)?
                    .cross_entropy(&batch.labels, CrossEntropySpec::default())?
            };
            trace.losses.push(loss.item()?.to_bits());
            scaler.scale(&loss)?.backward()?;
            scaler.step(&mut opt)?;
            scaler.update(None)?;
            progress.step += 1;
            progress.batch = batch.number + 1;
            if let Some((at, path)) = save_at.filter(|(at, _)| *at == progress.step) {
                let parts = Parts {
                    model: &net,
                    optimizer: &mut opt,
                    scaler: Some(&mut scaler),
                    scheduler: Some(&mut sched),
                };
                train_state::save(path, parts, &progress)?;
                let _ = at;
                break 'epochs;
            }
            if progress.step == steps {
                break 'epochs;
            }
        }
        sched.step(&mut opt)?;
        progress.epoch += 1;
        progress.batch = 0;
    }
    trace.skipped = scaler.skipped_steps()?;
    for (name, t) in net.state_dict() {
        let v = t
            .to_device(Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_vec::<f32>()?;
        trace
            .state
            .push((name, v.iter().map(|x| x.to_bits()).collect()));
    }
    Ok(trace)
}

/// The device of a name, its backend registered (the emulated CUDA backend needs
/// `hemi::cuda::init`, in the child process too).
fn device_named(name: &str) -> Device {
    if name != "cuda-sim" {
        return Device::Cpu;
    }
    #[cfg(feature = "cuda")]
    {
        let status = hemi::cuda::init();
        assert!(
            status.devices.contains(&Device::CudaSim),
            "the emulated CUDA backend is missing"
        );
    }
    Device::CudaSim
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("hemi-resume-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Serializes a trace as lines: losses, then `name bits...` per tensor.
fn write_trace(t: &Trace, path: &Path) {
    let mut s = format!("{}\n", t.skipped);
    s.push_str(
        &t.losses
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(" "),
    );
    for (name, bits) in &t.state {
        s.push('\n');
        s.push_str(name);
        for b in bits {
            s.push(' ');
            s.push_str(&b.to_string());
        }
    }
    std::fs::write(path, s).expect("write trace");
}

fn read_trace(path: &Path) -> Trace {
    let s = std::fs::read_to_string(path).expect("child trace");
    let mut lines = s.lines();
    let skipped = lines.next().unwrap_or_default().parse().expect("skipped");
    let losses = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(|x| x.parse().expect("loss"))
        .collect();
    let state = lines
        .map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next().unwrap_or_default().to_string();
            (name, w.map(|x| x.parse().expect("bits")).collect())
        })
        .collect();
    Trace {
        losses,
        skipped,
        state,
    }
}

/// The second half, in a fresh process: started by `resuming_in_a_fresh_process_...` with
/// the state file, device, step count and output path in the environment.
#[test]
#[ignore = "the child half of resuming_in_a_fresh_process_continues_bit_for_bit (it starts this test)"]
fn resume_child() -> Result<()> {
    let var = |k: &str| std::env::var(k).expect("run by the parent test");
    let device = device_named(&var("HEMI_RESUME_DEVICE"));
    let steps: u64 = var("HEMI_RESUME_STEPS").parse().expect("steps");
    let trace = run(
        device,
        Some(Path::new(&var("HEMI_RESUME_FILE"))),
        steps,
        None,
    )?;
    write_trace(&trace, Path::new(&var("HEMI_RESUME_OUT")));
    Ok(())
}

#[test]
fn resuming_in_a_fresh_process_continues_bit_for_bit() -> Result<()> {
    let mut devices = vec!["cpu"];
    if cfg!(feature = "cuda") {
        devices.push("cuda-sim");
    } else {
        println!("resume test: cuda-sim skipped: built without feature `cuda`");
    }
    let (n, total) = (7u64, 13u64); // saves mid-epoch (5 batches per epoch)
    let dir = tempdir();
    for name in devices {
        let device = device_named(name);
        let whole = run(device, None, total, None)?;
        assert_eq!(whole.losses.len() as u64, total);
        let file = dir.join(format!("state-{name}.safetensors"));
        let first = run(device, None, total, Some((n, &file)))?;
        assert_eq!(
            first.losses[..],
            whole.losses[..n as usize],
            "{name}: the first {n} steps"
        );
        let out = dir.join(format!("trace-{name}.txt"));
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--ignored", "--exact", "resume_child", "--test-threads=1"])
            .env("HEMI_RESUME_DEVICE", name)
            .env("HEMI_RESUME_STEPS", total.to_string())
            .env("HEMI_RESUME_FILE", &file)
            .env("HEMI_RESUME_OUT", &out)
            .status()
            .expect("child process");
        assert!(status.success(), "{name}: the resumed process failed");
        let rest = read_trace(&out);
        let mut losses = first.losses.clone();
        losses.extend(&rest.losses);
        assert_eq!(losses, whole.losses, "{name}: losses of the resumed run");
        assert_eq!(
            rest.state, whole.state,
            "{name}: final parameters and buffers"
        );
        // Some steps overflowed and were skipped, before and after the save (the scaler's
        // state matters), and the others trained.
        assert!(
            first.skipped > 0 && rest.skipped > 0,
            "{name}: skipped {} then {}",
            first.skipped,
            rest.skipped
        );
        assert_eq!(
            first.skipped + rest.skipped,
            whole.skipped,
            "{name}: skipped steps"
        );
        assert!(whole.skipped < total, "{name}: every step skipped");
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
