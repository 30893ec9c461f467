//! Checkpoints in the safetensors format, with PyTorch's names and dtypes, so a model's state
//! dict can be exchanged with `torch` (`safetensors.torch.load_file` / `save_file`).
//!
//! Writes are atomic: the file is written next to its destination under a temporary name,
//! synced, then renamed over it. Loading checks every name, shape and dtype against the model
//! and reports all mismatches at once; a truncated or corrupt file is an `Err`.
//!
//! ```
//! use hemi_engine::nn::{Linear, Module};
//! use hemi_engine::{checkpoint, Device};
//! let dir = std::env::temp_dir().join(format!("hemi-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).map_err(|e| hemi_engine::Error::Io { path: "tmp".into(), msg: e.to_string() })?;
//! let path = dir.join("linear.safetensors");
//! let a = Linear::new(3, 2, true, Device::Cpu)?;
//! checkpoint::save(&a, &path)?;
//! let b = Linear::new(3, 2, true, Device::Cpu)?;
//! checkpoint::load(&b, &path)?;
//! assert_eq!(a.weight.to_vec::<f32>()?, b.weight.to_vec::<f32>()?);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), hemi_engine::Error>(())
//! ```

use crate::nn::Module;
use crate::{CpuStorage, DType, Device, Error, Result, Tensor};
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

fn to_st(dt: DType) -> Dtype {
    match dt {
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
    }
}

fn from_st(dt: Dtype) -> Option<DType> {
    Some(match dt {
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        _ => return None,
    })
}

/// A tensor's host bytes (little-endian) ready for safetensors.
struct HostView {
    dtype: DType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl HostView {
    fn new(t: &Tensor) -> Result<Self> {
        let bytes = t.to_host()?.as_bytes().to_vec();
        Ok(HostView {
            dtype: t.dtype(),
            shape: t.dims().to_vec(),
            bytes,
        })
    }
}

impl View for &HostView {
    fn dtype(&self) -> Dtype {
        to_st(self.dtype)
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes named tensors to `path` atomically: a temporary `.NAME.tmp-PID` beside it, synced,
/// renamed over it, and the directory synced; temporaries that killed saves of the same path
/// left behind are deleted first.
pub fn save_tensors(tensors: &[(String, Tensor)], path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let views: Vec<(String, HostView)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), HostView::new(t)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), None)
        .map_err(|e| io_err(path, e))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| io_err(path, "not a file path"))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    remove_stale_temporaries(path, file_name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    };
    write().map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        io_err(path, e)
    })
}

/// Deletes the `.NAME.tmp-PID` files that killed saves of `path` left behind: those of
/// processes that no longer run (Linux's `/proc`; elsewhere only this process's own).
fn remove_stale_temporaries(path: &Path, file_name: &std::ffi::OsStr) {
    let prefix = format!(".{}.tmp-", file_name.to_string_lossy());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let me = std::process::id().to_string();
    let proc_fs = Path::new("/proc/self").exists();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let alive = pid != me && (!proc_fs || Path::new("/proc").join(pid).exists());
        if !alive && pid.bytes().all(|b| b.is_ascii_digit()) {
            std::fs::remove_file(e.path()).ok();
        }
    }
}

/// Flushes the directory entry of a rename to disk (Unix), so a power loss cannot leave the
/// new name pointing at nothing.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(d) = path.parent() {
        let d = if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        };
        std::fs::File::open(d)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Errs when the JSON header of a safetensors file names a tensor twice.
fn reject_duplicate_names(path: &Path, bytes: &[u8]) -> Result<()> {
    use serde::de::{Deserializer, Error as _, IgnoredAny, MapAccess, Visitor};
    struct Unique;
    impl<'de> Visitor<'de> for Unique {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(A::Error::custom(format!(
                        "tensor name {key:?} appears twice"
                    )));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let Some(len) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    else {
        return Ok(()); // too short: the safetensors parser reports it
    };
    let Some(header) = usize::try_from(len)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
    else {
        return Ok(());
    };
    serde_json::Deserializer::from_slice(header)
        .deserialize_map(Unique)
        .map_err(|e| io_err(path, format!("not a valid safetensors file: {e}")))
}

/// Reads every tensor of a safetensors file onto `device`.
pub fn load_tensors(path: impl AsRef<Path>, device: Device) -> Result<BTreeMap<String, Tensor>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    reject_duplicate_names(path, &bytes)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| io_err(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = from_st(view.dtype()).ok_or_else(|| {
            io_err(
                path,
                format!("tensor {name}: unsupported dtype {:?}", view.dtype()),
            )
        })?;
        let host = CpuStorage::from_bytes(dtype, view.data())
            .map_err(|e| io_err(path, format!("tensor {name}: {e}")))?;
        out.insert(
            name,
            Tensor::from_host(host, view.shape().to_vec(), device)?,
        );
    }
    Ok(out)
}

/// Saves a module's parameters and buffers (its [`Module::state_dict`]).
pub fn save(module: &dyn Module, path: impl AsRef<Path>) -> Result<()> {
    save_tensors(&module.state_dict(), path)
}

/// Loads a checkpoint into a module in place. Every expected name must be present with the
/// same shape and dtype, and no extra names may exist; otherwise nothing is changed and the
/// error lists every mismatch.
pub fn load(module: &dyn Module, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut file = load_tensors(path, Device::Cpu)?;
    let expected = module.state_dict();
    let mut problems = Vec::new();
    let mut pairs = Vec::new();
    for (name, t) in &expected {
        match file.remove(name) {
            None => problems.push(format!("missing {name} ({} {:?})", t.dtype(), t.shape())),
            Some(src) if src.shape() != t.shape() => problems.push(format!(
                "{name}: shape {:?} in file, model has {:?}",
                src.shape(),
                t.shape()
            )),
            Some(src) if src.dtype() != t.dtype() => problems.push(format!(
                "{name}: dtype {} in file, model has {}",
                src.dtype(),
                t.dtype()
            )),
            Some(src) => pairs.push((t.clone(), src)),
        }
    }
    problems.extend(file.keys().map(|k| format!("unexpected {k}")));
    if !problems.is_empty() {
        return Err(Error::Checkpoint {
            path: path.display().to_string(),
            problems,
        });
    }
    let _g = crate::no_grad();
    pairs
        .into_iter()
        .try_for_each(|(dst, src)| dst.assign(&src))
}
