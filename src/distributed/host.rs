//! Host staging for collectives of libraries that take host memory (MPI): a tensor's values
//! as a flat buffer of a type the library reduces natively, and back.

#[cfg(feature = "mpi")]
use crate::{DType, Device};
use crate::{Error, Result, Tensor};

/// A tensor's values on the host: f32 (f16 and bf16 widened exactly), f64 or i64.
#[cfg(feature = "mpi")]
#[derive(Debug)]
pub(crate) enum HostBuf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

#[cfg(feature = "mpi")]
impl HostBuf {
    /// `tensor`'s values in logical order, widened where needed.
    pub(crate) fn read(tensor: &Tensor) -> Result<HostBuf> {
        Ok(match tensor.dtype() {
            DType::F32 => HostBuf::F32(tensor.to_vec()?),
            DType::F16 | DType::BF16 => HostBuf::F32(tensor.to_dtype(DType::F32)?.to_vec()?),
            DType::F64 => HostBuf::F64(tensor.to_vec()?),
            DType::I64 => HostBuf::I64(tensor.to_vec()?),
        })
    }

    /// An uninitialized-equivalent buffer of the same type and length (receive side).
    pub(crate) fn like(&self) -> HostBuf {
        match self {
            HostBuf::F32(v) => HostBuf::F32(vec![0.0; v.len()]),
            HostBuf::F64(v) => HostBuf::F64(vec![0.0; v.len()]),
            HostBuf::I64(v) => HostBuf::I64(vec![0; v.len()]),
        }
    }

    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        match self {
            HostBuf::F32(v) => v.len(),
            HostBuf::F64(v) => v.len(),
            HostBuf::I64(v) => v.len(),
        }
    }

    /// Writes the values into `tensor` in place (rounded once to its dtype).
    pub(crate) fn write(self, tensor: &Tensor) -> Result<()> {
        let shape = tensor.shape().clone();
        let src = match self {
            HostBuf::F32(v) => Tensor::from_vec(v, shape, Device::Cpu)?,
            HostBuf::F64(v) => Tensor::from_vec(v, shape, Device::Cpu)?,
            HostBuf::I64(v) => Tensor::from_vec(v, shape, Device::Cpu)?,
        };
        let src = if src.dtype() == tensor.dtype() {
            src
        } else {
            src.to_dtype(tensor.dtype())?
        };
        tensor.assign(&src)
    }
}

/// Collectives reduce in place: the tensor must be contiguous.
pub(crate) fn check_contiguous(op: &'static str, t: &Tensor) -> Result<()> {
    if t.layout().is_contiguous() {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!(
                "collectives work in place on contiguous tensors; this {:?} tensor is a strided \
                 view (reduce a .contiguous() copy and assign it back)",
                t.dims()
            ),
        ))
    }
}

/// A root rank must exist.
pub(crate) fn check_root(op: &'static str, root: usize, world: usize) -> Result<()> {
    if root < world {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("root rank {root} is out of range for a world of {world} ranks"),
        ))
    }
}
