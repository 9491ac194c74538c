//! The `--device` option: which Burn device runs the work, chosen at run time.

use std::fmt;

use burn::tensor::Device;
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
}

impl DeviceChoice {
    /// The Burn device this choice names (the same mapping as a config's device names).
    pub fn device(self) -> Device {
        xception_train::parallel::device_named(&self.to_string())
            .expect("every --device choice is a valid device name")
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
