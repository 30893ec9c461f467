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
use crate::{CpuStorage, DType, Device, Error, Result, Shape, Tensor};
use safetensors::{Dtype, View};
use std::borrow::Cow;
use std::collections::BTreeMap;
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

/// A tensor to be written: its bytes are fetched to the host only when safetensors writes it
/// (one tensor's host copy at a time). A failed fetch is kept and reported after the write, so
/// the half-written temporary is deleted rather than renamed.
struct LazyView<'a> {
    tensor: &'a Tensor,
    failed: &'a std::cell::RefCell<Option<Error>>,
}

impl View for &LazyView<'_> {
    fn dtype(&self) -> Dtype {
        to_st(self.tensor.dtype())
    }
    fn shape(&self) -> &[usize] {
        self.tensor.dims()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self
            .tensor
            .to_host()
            .and_then(|h| crate::alloc::copy_of(h.as_bytes()))
        {
            Ok(bytes) => Cow::Owned(bytes),
            Err(e) => {
                self.failed.borrow_mut().get_or_insert(e);
                Cow::Owned(Vec::new())
            }
        }
    }
    fn data_len(&self) -> usize {
        self.tensor.elem_count() * self.tensor.dtype().size_in_bytes()
    }
}

/// Writes named tensors to `path` atomically: a temporary `.NAME.tmp-PID` beside it, synced,
/// renamed over it, and the directory synced; temporaries that killed saves of the same path
/// left behind are deleted first. Tensors are fetched to the host one at a time while the
/// file is written, so the extra memory is one tensor's bytes.
pub fn save_tensors(tensors: &[(String, Tensor)], path: impl AsRef<Path>) -> Result<()> {
    save_tensors_with_metadata(tensors, &BTreeMap::new(), path)
}

/// [`save_tensors`] with string metadata in the header (safetensors' `__metadata__`; none is
/// written when `metadata` is empty).
///
/// ```
/// use hemi_engine::{checkpoint, Device, Tensor};
/// use std::collections::BTreeMap;
/// let path = std::env::temp_dir().join(format!("hemi-meta-{}.safetensors", std::process::id()));
/// let t = Tensor::from_vec(vec![1.0f32, 2.0], [2], Device::Cpu)?;
/// let meta = BTreeMap::from([("epoch".to_string(), "3".to_string())]);
/// checkpoint::save_tensors_with_metadata(&[("w".into(), t)], &meta, &path)?;
/// let (tensors, read) = checkpoint::load_tensors_with_metadata(&path, Device::Cpu)?;
/// assert_eq!(read, meta);
/// assert_eq!(tensors["w"].to_vec::<f32>()?, vec![1.0, 2.0]);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), hemi_engine::Error>(())
/// ```
pub fn save_tensors_with_metadata(
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
    path: impl AsRef<Path>,
) -> Result<()> {
    let path = path.as_ref();
    let failed = std::cell::RefCell::new(None);
    let views: Vec<(&str, LazyView<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.as_str(),
                LazyView {
                    tensor: t,
                    failed: &failed,
                },
            )
        })
        .collect();
    let file_name = path
        .file_name()
        .ok_or_else(|| io_err(path, "not a file path"))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    remove_stale_temporaries(path, file_name);
    let cleanup = |e: Error| {
        std::fs::remove_file(&tmp).ok();
        e
    };
    let metadata = (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect());
    safetensors::serialize_to_file(views.iter().map(|(n, v)| (*n, v)), metadata, &tmp)
        .map_err(|e| cleanup(io_err(path, e)))?;
    if let Some(e) = failed.into_inner() {
        return Err(cleanup(e));
    }
    let commit = || -> std::io::Result<()> {
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    };
    commit().map_err(|e| cleanup(io_err(path, e)))
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

/// Errs when a safetensors JSON header names a tensor twice.
fn reject_duplicate_names(path: &Path, header: &[u8]) -> Result<()> {
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
    serde_json::Deserializer::from_slice(header)
        .deserialize_map(Unique)
        .map_err(|e| invalid_file(path, e))
}

fn invalid_file(path: &Path, e: impl std::fmt::Display) -> Error {
    io_err(path, format!("not a valid safetensors file: {e}"))
}

/// The safetensors header limit (the format's own: larger headers are refused).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor of a checkpoint file: where its bytes lie.
struct Entry {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    start: u64,
}

/// An open checkpoint whose header is parsed and checked against the source's length;
/// tensors are read one at a time ([`Index::read`]), so loading never holds the whole file.
struct Index<R> {
    /// The file's path (or a description of the reader), for messages.
    path: std::path::PathBuf,
    reader: R,
    /// In file order.
    entries: Vec<Entry>,
    /// The header's `__metadata__` strings.
    metadata: BTreeMap<String, String>,
}

impl Index<std::fs::File> {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        Index::new(path, file)
    }
}

impl<R: std::io::Read + std::io::Seek> Index<R> {
    /// Parses the header of the safetensors data `reader` holds (from its start to its end).
    fn new(path: &Path, mut reader: R) -> Result<Self> {
        use std::io::SeekFrom;
        let len = reader
            .seek(SeekFrom::End(0))
            .and_then(|len| reader.seek(SeekFrom::Start(0)).map(|_| len))
            .map_err(|e| io_err(path, e))?;
        let mut len8 = [0u8; 8];
        reader
            .read_exact(&mut len8)
            .map_err(|_| invalid_file(path, "shorter than its 8-byte header length"))?;
        let n = u64::from_le_bytes(len8);
        if n > MAX_HEADER_BYTES || n > len - 8 {
            return Err(invalid_file(
                path,
                format!("header of {n} bytes in a file of {len}"),
            ));
        }
        let mut header = crate::alloc::filled(n as usize, 0u8)?;
        reader
            .read_exact(&mut header)
            .map_err(|e| io_err(path, e))?;
        reject_duplicate_names(path, &header)?;
        let meta: safetensors::tensor::Metadata =
            serde_json::from_slice(&header).map_err(|e| invalid_file(path, e))?;
        let data_start = 8 + n;
        let mut entries = Vec::new();
        let mut end = 0usize;
        for name in meta.offset_keys() {
            let Some(info) = meta.info(&name) else {
                continue;
            };
            let dtype = from_st(info.dtype).ok_or_else(|| {
                io_err(
                    path,
                    format!("tensor {name}: unsupported dtype {:?}", info.dtype),
                )
            })?;
            // The parser checked that offsets tile the data section and match the shapes.
            end = end.max(info.data_offsets.1);
            entries.push(Entry {
                start: data_start + info.data_offsets.0 as u64,
                dtype,
                shape: info.shape.clone(),
                name,
            });
        }
        if u64::try_from(end).map_or(true, |end| end != len - data_start) {
            return Err(invalid_file(
                path,
                format!(
                    "{end} bytes of tensor data, the file holds {}",
                    len - data_start
                ),
            ));
        }
        let metadata = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Index {
            path: path.to_path_buf(),
            reader,
            entries,
            metadata,
        })
    }

    /// Reads entry `i` into one host buffer and places it on `device`.
    fn read(&mut self, i: usize, device: Device) -> Result<Tensor> {
        use std::io::SeekFrom;
        let e = &self.entries[i];
        let n = Shape::from(e.shape.clone()).checked_elem_count("load")?;
        let mut host = CpuStorage::full(e.dtype, n, 0.0)?;
        let path = &self.path;
        self.reader
            .seek(SeekFrom::Start(e.start))
            .and_then(|_| self.reader.read_exact(host.as_bytes_mut()))
            .map_err(|err| io_err(path, format!("tensor {}: {err}", e.name)))?;
        Tensor::from_host(host, e.shape.clone(), device)
    }

    /// Every tensor, read one at a time.
    fn read_all(mut self, device: Device) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for i in 0..self.entries.len() {
            let t = self.read(i, device)?;
            out.insert(std::mem::take(&mut self.entries[i].name), t);
        }
        Ok(out)
    }
}

/// Reads every tensor of a safetensors file onto `device`, one tensor's bytes at a time (the
/// result holds them all; peak extra host memory is one tensor). A malformed file — bad
/// header, unsupported dtype, offsets that do not tile the data, a duplicate name, a length
/// that does not match — is an `Err` naming the path.
pub fn load_tensors(path: impl AsRef<Path>, device: Device) -> Result<BTreeMap<String, Tensor>> {
    Index::open(path.as_ref())?.read_all(device)
}

/// [`load_tensors`] and the header's metadata strings (empty when there are none).
pub fn load_tensors_with_metadata(
    path: impl AsRef<Path>,
    device: Device,
) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    let mut index = Index::open(path.as_ref())?;
    let metadata = std::mem::take(&mut index.metadata);
    Ok((index.read_all(device)?, metadata))
}

/// [`load_tensors`] from any seekable reader holding a safetensors file (an in-memory buffer:
/// `std::io::Cursor::new(bytes)`); `name` stands for the path in messages.
///
/// ```
/// use hemi_engine::{checkpoint, Device};
/// let err = checkpoint::load_tensors_from("bytes", std::io::Cursor::new(b"not a checkpoint"), Device::Cpu);
/// assert!(err.unwrap_err().to_string().contains("not a valid safetensors file"));
/// ```
pub fn load_tensors_from(
    name: &str,
    reader: impl std::io::Read + std::io::Seek,
    device: Device,
) -> Result<BTreeMap<String, Tensor>> {
    Index::new(Path::new(name), reader)?.read_all(device)
}

/// Saves a module's parameters and buffers (its [`Module::state_dict`]).
pub fn save(module: &dyn Module, path: impl AsRef<Path>) -> Result<()> {
    save_tensors(&module.state_dict(), path)
}

/// Loads a checkpoint into a module in place. Every expected name must be present with the
/// same shape and dtype, and no extra names may exist; otherwise nothing is changed and the
/// error lists every mismatch. The header is checked against the module and the file's length
/// first; then tensors are read and copied in one at a time, so the extra host memory is one
/// tensor. Only an I/O error while reading the data (after all checks passed) can leave the
/// module partly loaded.
pub fn load(module: &dyn Module, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut index = Index::open(path)?;
    let mut in_file: BTreeMap<&str, usize> = index
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.as_str(), i))
        .collect();
    let expected = module.state_dict();
    let mut problems = Vec::new();
    let mut pairs = Vec::new();
    for (name, t) in &expected {
        let Some(i) = in_file.remove(name.as_str()) else {
            problems.push(format!("missing {name} ({} {:?})", t.dtype(), t.shape()));
            continue;
        };
        let src = &index.entries[i];
        if src.shape != t.dims() {
            problems.push(format!(
                "{name}: shape {:?} in file, model has {:?}",
                Shape::from(src.shape.clone()),
                t.shape()
            ));
        } else if src.dtype != t.dtype() {
            problems.push(format!(
                "{name}: dtype {} in file, model has {}",
                src.dtype,
                t.dtype()
            ));
        } else {
            pairs.push((t.clone(), i));
        }
    }
    problems.extend(in_file.keys().map(|k| format!("unexpected {k}")));
    if !problems.is_empty() {
        return Err(Error::Checkpoint {
            path: path.display().to_string(),
            problems,
        });
    }
    let _g = crate::no_grad();
    for (dst, i) in pairs {
        let src = index.read(i, Device::Cpu)?;
        dst.assign(&src)?;
    }
    Ok(())
}
