//! Random checkpoint inputs: raw bytes, valid safetensors files with mutations, and
//! hand-built headers (wrong dtypes, shapes, offsets, lengths, duplicate names). Loading one
//! must give `Ok` (then every tensor reads back) or `Err` — never a panic, an abort or an
//! allocation the file's size does not justify.

use crate::draw::{Draw, HUGE};
use hemi::{checkpoint, Device, Result};
use std::io::Cursor;

const DTYPES: [&str; 10] = [
    "F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "I32", "nonsense",
];

fn dtype_size(name: &str) -> usize {
    match name {
        "F64" | "I64" => 8,
        "F32" | "I32" => 4,
        "F16" | "BF16" => 2,
        _ => 1,
    }
}

/// A header of random entries and a data section that matches it or nearly does.
fn crafted(d: &mut Draw<'_>) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    for i in 0..d.below(4) {
        let dtype = d.pick(&DTYPES);
        let shape: Vec<usize> = (0..d.below(4))
            .map(|_| {
                if d.chance(5) {
                    d.pick(&HUGE)
                } else {
                    d.below(6)
                }
            })
            .collect();
        let bytes = shape
            .iter()
            .try_fold(dtype_size(dtype), |a, &b| a.checked_mul(b))
            .unwrap_or(usize::MAX);
        let (start, end) = if d.chance(85) {
            (offset, offset.saturating_add(bytes))
        } else {
            (d.below(64), d.pick(&[0, 3, 8, 64, usize::MAX]))
        };
        offset = end;
        let name = if d.chance(10) {
            "dup".to_string()
        } else {
            format!("t{i}")
        };
        let shape_json = if d.chance(5) {
            "[-1, 2]".to_string()
        } else {
            serde_json::to_string(&shape).unwrap_or_default()
        };
        entries.push(format!(
            r#""{name}":{{"dtype":"{dtype}","shape":{shape_json},"data_offsets":[{start},{end}]}}"#
        ));
    }
    if d.chance(20) {
        entries.push(r#""__metadata__":{"format":"pt"}"#.to_string());
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    if d.chance(10) {
        // Corrupt the JSON itself.
        let i = d.below(header.len());
        header[i] = d.byte();
    }
    let data_len = if d.chance(80) && offset < 4096 {
        offset
    } else {
        d.below(64)
    };
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend((0..data_len).map(|_| d.byte()));
    file
}

/// A valid file of small random tensors, serialized by the safetensors crate itself.
fn valid(d: &mut Draw<'_>) -> Vec<u8> {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = (0..1 + d.below(3))
        .map(|i| {
            let shape: Vec<usize> = (0..d.below(3)).map(|_| d.below(5)).collect();
            let n = shape.iter().product::<usize>() * 4;
            (format!("w{i}"), shape, (0..n).map(|_| d.byte()).collect())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .filter_map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .ok()
                .map(|v| (name.clone(), v))
        })
        .collect();
    safetensors::serialize(views, None).unwrap_or_default()
}

/// Flips, truncates, extends or rewrites the length prefix of `file`.
fn mutate(d: &mut Draw<'_>, mut file: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + d.below(3) {
        match d.below(5) {
            0 if !file.is_empty() => {
                let i = d.below(file.len());
                file[i] ^= 1 << d.below(8);
            }
            1 => file.truncate(d.below(file.len() + 1)),
            2 => file.extend((0..d.below(16)).map(|_| d.byte())),
            3 if file.len() >= 8 => {
                let n: u64 = d.pick(&[0, 1, 7, u64::MAX, 1 << 40, file.len() as u64]);
                file[..8].copy_from_slice(&n.to_le_bytes());
            }
            _ => {}
        }
    }
    file
}

/// Draws one checkpoint input.
pub fn draw_checkpoint(d: &mut Draw<'_>) -> Vec<u8> {
    match d.below(4) {
        0 => (0..d.below(64)).map(|_| d.byte()).collect(),
        1 => crafted(d),
        2 => {
            let v = valid(d);
            mutate(d, v)
        }
        _ => valid(d),
    }
}

/// Loads `bytes` as a checkpoint onto `device`; on success reads every tensor back. An `Err`
/// is a correct answer to a malformed file; only panics and aborts are findings.
pub fn load_checkpoint(bytes: &[u8], device: Device) -> Result<usize> {
    let tensors = checkpoint::load_tensors_from("fuzz input", Cursor::new(bytes), device)?;
    for t in tensors.values() {
        t.to_f64_vec()?;
    }
    Ok(tensors.len())
}
