//! The CUDA backend (feature `cuda`): hemi's own kernels from `kernels-cu/`, run through a
//! [`driver::Driver`] — cust on a GPU (`Device::Cuda(i)`), or the host emulator
//! (`Device::CudaSim`) that runs the very same kernel sources on the CPU, so CI exercises all
//! of the backend's Rust code without a GPU.
//!
//! ```
//! # #[cfg(feature = "cuda")] {
//! use hemi::{Device, DType, Tensor};
//! hemi::cuda::init();
//! let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0], [3], Device::CudaSim)?;
//! assert_eq!(x.relu()?.to_vec::<f32>()?, vec![1.0, 0.0, 3.0]);
//! # }
//! # Ok::<(), hemi::Error>(())
//! ```

pub mod alloc;
mod amp;
pub mod backend;
mod conv;
pub mod driver;
mod elementwise;
pub(crate) mod launch;
mod loss;
mod matmul;
mod memory;
mod norm;
mod operand;
mod optim;
mod pool;
mod reduce;
pub mod storage;

use backend::CudaBackend;
use driver::cust_driver::CustDriver;
use driver::sim::SimDriver;
use driver::Driver;
use hemi_engine::register_backend;
use hemi_engine::Device;
use hemi_engine::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

fn drivers() -> &'static Mutex<HashMap<Device, Arc<dyn Driver>>> {
    static DRIVERS: OnceLock<Mutex<HashMap<Device, Arc<dyn Driver>>>> = OnceLock::new();
    DRIVERS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn register(driver: Arc<dyn Driver>) {
    drivers()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(driver.device(), driver.clone());
    register_backend(Arc::new(CudaBackend::new(driver)));
}

/// Waits until all work launched on `device` has finished (for timing; every read-back
/// synchronizes anyway).
pub fn synchronize(device: Device) -> Result<()> {
    let d = drivers()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&device)
        .cloned();
    match d {
        Some(d) => d.synchronize(),
        None => Err(Error::Unsupported {
            op: "synchronize",
            device,
            msg: "not a CUDA device registered by hemi::cuda::init()".into(),
        }),
    }
}

/// What [`init`] found.
#[derive(Debug, Clone)]
pub struct CudaStatus {
    /// Devices with a registered CUDA backend (always `CudaSim`, plus every GPU).
    pub devices: Vec<Device>,
    /// Why there is no GPU device, when there is none (no driver, no device, ...).
    pub gpu_unavailable: Option<String>,
}

/// Registers the CUDA backends once: the emulator always, and `Device::Cuda(i)` for every
/// GPU the driver reports. Later calls return the first result.
pub fn init() -> &'static CudaStatus {
    static STATUS: OnceLock<CudaStatus> = OnceLock::new();
    STATUS.get_or_init(|| {
        register(Arc::new(SimDriver::new()));
        let mut devices = vec![Device::CudaSim];
        let gpu_unavailable = match CustDriver::device_count() {
            Ok(0) => Some("the CUDA driver reports no device".to_string()),
            Ok(n) => {
                let mut why = None;
                for i in 0..n {
                    match CustDriver::new(i) {
                        Ok(d) => {
                            register(Arc::new(d));
                            devices.push(Device::Cuda(i));
                        }
                        Err(e) => why = Some(e.to_string()),
                    }
                }
                why
            }
            Err(e) => Some(e.to_string()),
        };
        CudaStatus {
            devices,
            gpu_unavailable,
        }
    })
}

/// Path of the fatbin `build.rs` compiled (SASS sm_80 + sm_90, PTX compute_90).
pub const FATBIN_PATH: &str = env!("HEMI_FATBIN");
/// Path of ptxas's `-v` resource report for every kernel of the fatbin.
pub const PTXAS_REPORT_PATH: &str = env!("HEMI_PTXAS_REPORT");
