//! What every family's typed launches share: launch geometry defaults, the `Strided` view
//! record, dtype suffixes and codes, and the one `unsafe` entry to `Driver::launch`. Each
//! family's launches live next to its trait impl (`src/cuda/<family>/launch.rs`, or in
//! `<family>.rs`); `launch!`-style untyped calls exist nowhere else.

use super::driver::{Driver, LaunchConfig};
use hemi_engine::{DType, Error, Layout, Result};
use std::ffi::c_void;

/// Threads per block of the 1-D elementwise kernels.
pub const THREADS: u32 = 256;
/// Upper bound on blocks of grid-stride kernels.
pub const MAX_BLOCKS: u32 = 4096;
/// Highest rank a [`Strided`] carries.
pub const MAX_RANK: usize = 8;

/// A strided view as the kernels take it (`struct Strided` in `kernels-cu/dtype.cuh`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Strided {
    offset: i64,
    rank: i32,
    pad: i32,
    dims: [i64; MAX_RANK],
    strides: [i64; MAX_RANK],
}

impl Strided {
    /// Converts a layout; ranks above [`MAX_RANK`] are an error naming `op`.
    pub fn new(op: &'static str, l: &Layout) -> Result<Self> {
        if l.dims().len() > MAX_RANK {
            return Err(Error::InvalidArgument {
                op,
                msg: format!(
                    "rank {} exceeds the CUDA backend's {MAX_RANK}",
                    l.dims().len()
                ),
            });
        }
        let mut s = Strided {
            offset: l.offset() as i64,
            rank: l.dims().len().max(1) as i32,
            pad: 0,
            dims: [1; MAX_RANK],
            strides: [0; MAX_RANK],
        };
        for (i, (&d, &st)) in l.dims().iter().zip(l.strides()).enumerate() {
            s.dims[i] = d as i64;
            s.strides[i] = st as i64;
        }
        Ok(s)
    }
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<Strided>() == 144 && offset_of!(Strided, rank) == 8);
    assert!(offset_of!(Strided, dims) == 16 && offset_of!(Strided, strides) == 80);
};

/// Kernel-name suffix of a float dtype the elementwise kernels support.
pub fn float_suffix(
    op: &'static str,
    device: hemi_engine::Device,
    dt: DType,
) -> Result<&'static str> {
    match dt {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        other => Err(Error::Unsupported {
            op,
            device,
            msg: format!("{other} tensors run on the CPU backend only"),
        }),
    }
}

/// Code of a float dtype for kernels that take the dtype at run time (`load_coded` /
/// `store_coded` in `kernels-cu/dtype.cuh`): 0 = f32, 1 = f16, 2 = bf16.
pub fn dtype_code(op: &'static str, device: hemi_engine::Device, dt: DType) -> Result<i32> {
    Ok(match float_suffix(op, device, dt)? {
        "f16" => 1,
        "bf16" => 2,
        _ => 0,
    })
}

/// Launches `name` with pointers to the given argument values.
///
/// # Safety
/// Each pointee must have exactly the type of the kernel's parameter at that position, and
/// device pointers must cover everything the kernel reads and writes for this launch.
pub unsafe fn launch(
    driver: &dyn Driver,
    name: &str,
    cfg: LaunchConfig,
    args: &mut [*mut c_void],
) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { driver.launch(name, cfg, args) }
}

/// Builds the `void**` array for a launch from mutable locals.
#[macro_export]
#[doc(hidden)]
macro_rules! kernel_args {
    ($($a:expr),* $(,)?) => {
        [$(std::ptr::addr_of_mut!($a).cast::<std::ffi::c_void>()),*]
    };
}
