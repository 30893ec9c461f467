//! Training metrics as JSON lines: one object per optimizer step (`"kind": "train"`) and per
//! evaluation (`"kind": "eval"`), appended to a file as they happen, so a run that dies keeps
//! every line written before, and a resumed run continues the same file.
//!
//! ```
//! use hemi::metrics::{read, MetricsLog, Record};
//! let path = std::env::temp_dir().join(format!("hemi-metrics-{}.jsonl", std::process::id()));
//! # std::fs::remove_file(&path).ok();
//! let mut log = MetricsLog::append(&path)?;
//! log.write(&Record::Train { step: 1, epoch: 0, loss: 2.3, loss_scale: Some(65536.0), skipped: false, lr: 1e-3, images_per_s: 850.0, peak_bytes: 1 << 20 })?;
//! log.write(&Record::Eval { epoch: 0, step: 1, loss: 2.1, accuracy: 0.3 })?;
//! let back = read(&path)?;
//! assert_eq!(back.len(), 2);
//! assert!(matches!(back[1], Record::Eval { accuracy, .. } if accuracy == 0.3));
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), hemi::Error>(())
//! ```

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// One optimizer step.
    Train {
        /// Steps taken, this one included (skipped ones too).
        step: u64,
        /// The epoch.
        epoch: u64,
        /// The batch's loss.
        loss: f64,
        /// The gradient scaler's scale before its update (fp16 autocast), else `None`.
        loss_scale: Option<f64>,
        /// Whether the scaler skipped this step (inf/NaN gradients).
        skipped: bool,
        /// The learning rate of the step.
        lr: f64,
        /// Throughput of the step (images per second, loading excluded).
        images_per_s: f64,
        /// Peak bytes of tensor storage on the device since the previous record.
        peak_bytes: usize,
    },
    /// One evaluation pass (per epoch).
    Eval {
        /// The epoch evaluated (after its training).
        epoch: u64,
        /// Steps taken by then.
        step: u64,
        /// Mean loss over the evaluation set.
        loss: f64,
        /// Fraction classified correctly.
        accuracy: f64,
    },
}

/// An open metrics file, appended to.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

impl MetricsLog {
    /// Opens (creating) `path` for appending.
    pub fn append(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        Ok(MetricsLog { path, file })
    }

    /// Appends one record as a line (written through: no buffering to lose).
    pub fn write(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r).map_err(|e| io(&self.path, e))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| io(&self.path, e))
    }
}

/// Every record of a metrics file; a malformed line is an error naming its number. A last
/// line cut short (the writer died mid-line) is ignored.
pub fn read(path: impl AsRef<Path>) -> Result<Vec<Record>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == lines.len() && !complete => break,
            Err(e) => return Err(io(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}
