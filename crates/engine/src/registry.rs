//! The registry mapping each [`Device`] to its [`Backend`]. The CPU backend is always
//! present; the CUDA backend registers `Device::CudaSim` and `Device::Cuda(i)` when
//! initialized.

use crate::backend::Backend;
use crate::cpu::CpuBackend;
use crate::{Device, Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

type Registry = RwLock<HashMap<Device, Arc<dyn Backend>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut m: HashMap<Device, Arc<dyn Backend>> = HashMap::new();
        m.insert(Device::Cpu, Arc::new(CpuBackend::new()));
        RwLock::new(m)
    })
}

/// Installs (or replaces) the backend of a device. The CPU backend is always present.
pub fn register_backend(backend: Arc<dyn Backend>) {
    let mut reg = registry().write().unwrap_or_else(|e| e.into_inner());
    reg.insert(backend.device(), backend);
}

/// The backend of `device`, or an error when none is registered.
pub fn backend_for(device: Device) -> Result<Arc<dyn Backend>> {
    let reg = registry().read().unwrap_or_else(|e| e.into_inner());
    reg.get(&device).cloned().ok_or_else(|| Error::Unsupported {
        op: "backend_for",
        device,
        msg: "no backend registered for this device (build hemi with feature `cuda`)".into(),
    })
}
