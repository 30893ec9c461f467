//! Training-state checkpoints: everything an interrupted run needs to continue exactly —
//! model parameters and buffers, optimizer state (step counts, moments), the gradient
//! scaler's state, the learning-rate scheduler's state, the default random generator, and the
//! position in the data (epoch, next batch, global step).
//!
//! One safetensors file: tensors under `model.<name>` and `optimizer.<param index>.<buffer>`,
//! the rest as JSON strings in the header's metadata (`optimizer`, `scaler`, `scheduler`,
//! `rng`, `progress`). Written atomically (a temporary beside the destination, synced, then
//! renamed), so a crash mid-save leaves the previous checkpoint intact.
//!
//! ```
//! use hemi::nn::{Linear, Module};
//! use hemi::optim::{Adam, AdamConfig, Optimizer};
//! use hemi::train_state::{load, save, Parts, Progress};
//! use hemi::{DType, Device, Tensor};
//! let path = std::env::temp_dir().join(format!("hemi-state-{}.safetensors", std::process::id()));
//! let model = Linear::new(3, 2, true, Device::Cpu)?;
//! let mut opt = Adam::new(model.parameters(), AdamConfig::adam())?;
//! model.forward(&Tensor::randn([4, 3], DType::F32, Device::Cpu)?)?.sum_all()?.backward()?;
//! opt.step()?;
//! let progress = Progress { epoch: 0, batch: 1, step: 1 };
//! save(&path, Parts { model: &model, optimizer: &mut opt, scaler: None, scheduler: None }, &progress)?;
//! let copy = Linear::new(3, 2, true, Device::Cpu)?;
//! let mut opt2 = Adam::new(copy.parameters(), AdamConfig::adam())?;
//! let back = load(&path, Parts { model: &copy, optimizer: &mut opt2, scaler: None, scheduler: None })?;
//! assert_eq!(back, progress);
//! assert_eq!(copy.weight.to_vec::<f32>()?, model.weight.to_vec::<f32>()?);
//! assert_eq!(opt2.state_dict().params[0].step, 1);
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), hemi::Error>(())
//! ```

use crate::amp::GradScaler;
use crate::nn::Module;
use crate::optim::{LrScheduler, Optimizer, OptimizerState, ParamState, SchedulerState};
use crate::{checkpoint, Device, Error, Result, RngState, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// The epoch in progress.
    pub epoch: u64,
    /// The next batch of that epoch (`DataLoader::epoch_from` continues there).
    pub batch: usize,
    /// Optimizer steps taken (skipped ones included).
    pub step: u64,
}

/// The parts of a run that a training state covers. Saving reads them; loading writes them.
#[allow(missing_debug_implementations)]
pub struct Parts<'a> {
    /// The model (parameters and buffers).
    pub model: &'a dyn Module,
    /// Its optimizer.
    pub optimizer: &'a mut dyn Optimizer,
    /// The gradient scaler, with fp16 autocast.
    pub scaler: Option<&'a mut GradScaler>,
    /// The learning-rate scheduler.
    pub scheduler: Option<&'a mut LrScheduler>,
}

/// A version tag, so that a file of another layout is refused by name.
const FORMAT: &str = "hemi-training-state-1";

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::invalid("train_state::save", e.to_string()))
}

/// Writes `parts` and `progress` to `path` (atomically).
pub fn save(path: impl AsRef<Path>, parts: Parts<'_>, progress: &Progress) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = parts
        .model
        .state_dict()
        .into_iter()
        .map(|(n, t)| (format!("model.{n}"), t))
        .collect();
    let opt = parts.optimizer.state_dict();
    let mut steps = Vec::with_capacity(opt.params.len());
    for (i, p) in opt.params.iter().enumerate() {
        steps.push(p.step);
        for (name, t) in &p.buffers {
            tensors.push((format!("optimizer.{i}.{name}"), t.clone()));
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    let optimizer = serde_json::json!({
        "kind": opt.kind,
        "hyper_params": opt.hyper_params,
        "steps": steps,
    });
    meta.insert("optimizer".into(), json(&optimizer)?);
    if let Some(s) = parts.scaler.as_deref() {
        meta.insert("scaler".into(), json(&s.state_dict()?)?);
    }
    if let Some(s) = parts.scheduler.as_deref() {
        let st = s.state();
        let v =
            serde_json::json!({"last_epoch": st.last_epoch, "base_lr": st.base_lr, "lr": st.lr});
        meta.insert("scheduler".into(), json(&v)?);
    }
    meta.insert("rng".into(), crate::rng_state().to_hex());
    let p = serde_json::json!({"epoch": progress.epoch, "batch": progress.batch, "step": progress.step});
    meta.insert("progress".into(), json(&p)?);
    checkpoint::save_tensors_with_metadata(&tensors, &meta, path)
}

/// The metadata value `key` parsed as JSON, or an error naming the file.
fn field(
    path: &Path,
    meta: &BTreeMap<String, String>,
    key: &str,
) -> Result<Option<serde_json::Value>> {
    meta.get(key)
        .map(|s| serde_json::from_str(s))
        .transpose()
        .map_err(|e| io(path, format!("metadata {key}: {e}")))
}

fn io(path: &Path, msg: impl Into<String>) -> Error {
    Error::Io {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// Reads a training state into `parts` (which must be built like the saved run: same model
/// architecture, optimizer kind and parameter order) and returns where the run stood. The
/// default random generator of this thread is restored too.
pub fn load(path: impl AsRef<Path>, parts: Parts<'_>) -> Result<Progress> {
    let path = path.as_ref();
    let (tensors, meta) = checkpoint::load_tensors_with_metadata(path, Device::Cpu)?;
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(io(
            path,
            format!("not a {FORMAT} file (a model checkpoint? use checkpoint::load)"),
        ));
    }
    let num = |v: &serde_json::Value, k: &str| -> Result<f64> {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| io(path, format!("metadata lacks the number {k}")))
    };
    // Model: every name, shape and dtype checked before anything is written.
    let mut problems = Vec::new();
    let mut pairs = Vec::new();
    for (name, t) in parts.model.state_dict() {
        match tensors.get(&format!("model.{name}")) {
            None => problems.push(format!("missing model.{name}")),
            Some(src) if src.dims() != t.dims() || src.dtype() != t.dtype() => {
                problems.push(format!(
                    "model.{name}: {} {:?} in file, model has {} {:?}",
                    src.dtype(),
                    src.dims(),
                    t.dtype(),
                    t.dims()
                ))
            }
            Some(src) => pairs.push((t, src.clone())),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Checkpoint {
            path: path.display().to_string(),
            problems,
        });
    }
    // Optimizer state (its own checks, all before any change).
    let o = field(path, &meta, "optimizer")?.ok_or_else(|| io(path, "no optimizer state"))?;
    let kind = o
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    let hyper_params: BTreeMap<String, f64> = o
        .get("hyper_params")
        .and_then(|h| serde_json::from_value(h.clone()).ok())
        .ok_or_else(|| io(path, "optimizer hyper_params unreadable"))?;
    let steps: Vec<u64> = o
        .get("steps")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .ok_or_else(|| io(path, "optimizer steps unreadable"))?;
    let mut params: Vec<ParamState> = steps
        .iter()
        .map(|&step| ParamState {
            step,
            ..Default::default()
        })
        .collect();
    for (name, t) in &tensors {
        if let Some(rest) = name.strip_prefix("optimizer.") {
            let (i, buffer) = rest
                .split_once('.')
                .and_then(|(i, b)| Some((i.parse::<usize>().ok()?, b)))
                .ok_or_else(|| {
                    io(
                        path,
                        format!("tensor {name}: not optimizer.<index>.<buffer>"),
                    )
                })?;
            let p = params.get_mut(i).ok_or_else(|| {
                io(
                    path,
                    format!("tensor {name}: parameter {i} of {}", steps.len()),
                )
            })?;
            p.buffers.insert(buffer.to_string(), t.clone());
        }
    }
    parts.optimizer.load_state_dict(&OptimizerState {
        kind,
        hyper_params,
        params,
    })?;
    if let Some(s) = parts.scaler {
        let d = field(path, &meta, "scaler")?.ok_or_else(|| io(path, "no scaler state"))?;
        let d = serde_json::from_value(d).map_err(|e| io(path, format!("scaler state: {e}")))?;
        s.load_state_dict(&d)?;
    }
    if let Some(s) = parts.scheduler {
        let v = field(path, &meta, "scheduler")?.ok_or_else(|| io(path, "no scheduler state"))?;
        let state = SchedulerState {
            last_epoch: num(&v, "last_epoch")? as u64,
            base_lr: num(&v, "base_lr")?,
            lr: num(&v, "lr")?,
        };
        s.load_state(state, parts.optimizer)?;
    }
    let rng = meta
        .get("rng")
        .ok_or_else(|| io(path, "no generator state"))?;
    let rng = RngState::from_hex(rng)?;
    let p = field(path, &meta, "progress")?.ok_or_else(|| io(path, "no progress"))?;
    let progress = Progress {
        epoch: num(&p, "epoch")? as u64,
        batch: num(&p, "batch")? as usize,
        step: num(&p, "step")? as u64,
    };
    {
        let _g = crate::no_grad();
        for (dst, src) in pairs {
            dst.assign(&src)?;
        }
    }
    crate::set_rng_state(&rng);
    Ok(progress)
}
