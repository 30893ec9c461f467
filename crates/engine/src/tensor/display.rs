//! `Debug` and `Display` for tensors: shape, dtype, device and a preview of the values.

use super::Tensor;
use std::fmt;

const PREVIEW: usize = 8;

impl Tensor {
    fn preview(&self) -> String {
        match self.to_f64_vec() {
            Ok(v) => {
                let shown: Vec<String> =
                    v.iter().take(PREVIEW).map(|x| format!("{x:.4}")).collect();
                let more = if v.len() > PREVIEW { ", ..." } else { "" };
                format!("[{}{more}]", shown.join(", "))
            }
            Err(e) => format!("<unreadable: {e}>"),
        }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor(shape={:?}, dtype={}, device={}, requires_grad={}, values={})",
            self.shape(),
            self.dtype(),
            self.device(),
            self.requires_grad(),
            self.preview()
        )
    }
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tensor({}, shape={:?}, dtype={}, device={})",
            self.preview(),
            self.shape(),
            self.dtype(),
            self.device()
        )
    }
}
