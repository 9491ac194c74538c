//! The `--device` option: which Burn device runs the work, chosen at run time.

use std::fmt;

use burn::tensor::{Device, DeviceKind};
use clap::ValueEnum;

/// A compute device the user can name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DeviceChoice {
    /// Burn's pure-Rust CPU backend (multi-threaded, SIMD): the CPU default.
    #[default]
    Flex,
    /// Burn's ndarray CPU backend: much slower than flex, kept for comparison.
    Ndarray,
    /// The GPU through wgpu (Vulkan, Metal or DirectX; lavapipe when no GPU is present).
    Wgpu,
    /// Under mpirun/srun, the discrete GPU whose index is the process's rank on its machine
    /// (one process per GPU).
    #[value(name = "wgpu:local")]
    WgpuLocal,
}

impl DeviceChoice {
    /// The Burn device this choice names (the same mapping as a config's device names).
    pub fn device(self) -> Device {
        device_named(&self.to_string()).expect("every --device choice is a valid device name")
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        f.write_str(&name)
    }
}

/// The Burn device a config or command line names (see
/// [`xception_train::config::check_device_name`]). The binary alone picks the backends it
/// is built with, so the names map to devices here.
pub fn device_named(name: &str) -> Result<Device, String> {
    xception_train::config::check_device_name(name)?;
    Ok(match name {
        "flex" => Device::flex(),
        #[allow(deprecated)] // ndarray is deprecated upstream; our users asked to keep it
        "ndarray" => Device::ndarray(),
        "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
        "wgpu:local" => Device::wgpu(DeviceKind::DiscreteGpu(crate::processes::local_rank())),
        other => {
            let index = other
                .strip_prefix("wgpu:")
                .and_then(|i| i.parse::<usize>().ok())
                .unwrap_or_default();
            Device::wgpu(DeviceKind::DiscreteGpu(index))
        }
    })
}
