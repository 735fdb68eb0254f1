//! Which device a trial trains on.
//!
//! `auto` picks CUDA when this build has the `cuda` feature and a GPU answers, and the CPU
//! (burn's ndarray backend) otherwise, saying why in the trial's log. `cuda` insists: a
//! missing GPU or missing CUDA libraries is an error, never a panic.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    /// A CUDA device by index.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("unknown device '{other}' (auto, cpu, cuda, cuda:N)")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

/// The device a trial will actually use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Cpu,
    Cuda(usize),
}

/// Whether this build can train on CUDA at all.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Resolves a choice, with a note for the log when `auto` falls back or a choice cannot be
/// honoured.
pub fn resolve(choice: DeviceChoice) -> Result<(Resolved, Option<String>), String> {
    match choice {
        DeviceChoice::Cpu => Ok((Resolved::Cpu, None)),
        DeviceChoice::Cuda(index) => cuda_probe(index).map(|()| (Resolved::Cuda(index), None)),
        DeviceChoice::Auto => match cuda_probe(0) {
            Ok(()) => Ok((Resolved::Cuda(0), None)),
            Err(reason) => Ok((
                Resolved::Cpu,
                Some(format!("device auto: training on the CPU ({reason})")),
            )),
        },
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_probe(_index: usize) -> Result<(), String> {
    Err("this build has no CUDA support; build with `--features cuda`".into())
}

/// Checks that CUDA device `index` works by running a tiny computation on it. cudarc loads
/// the CUDA libraries on first use and panics when they are missing; the panic is caught
/// and reported as a reason, the process carries on.
#[cfg(feature = "cuda")]
fn cuda_probe(index: usize) -> Result<(), String> {
    use burn::backend::Cuda;
    use burn::backend::cuda::CudaDevice;
    use burn::tensor::Tensor;

    if !std::path::Path::new("/dev/nvidiactl").exists()
        && !std::path::Path::new("/dev/dxg").exists()
    {
        return Err("no NVIDIA GPU on this machine (/dev/nvidiactl is missing)".into());
    }
    let probe = std::panic::catch_unwind(move || {
        let device = CudaDevice::new(index);
        let tensor = Tensor::<Cuda, 1>::from_floats([1.0, 2.0, 3.0], &device);
        tensor.sum().into_scalar()
    });
    match probe {
        Ok(value) if (f64::from(value) - 6.0).abs() < 1e-6 => Ok(()),
        Ok(value) => Err(format!("CUDA device {index} computed 1+2+3 = {value}")),
        Err(panic) => Err(format!(
            "CUDA device {index} is unusable: {}",
            crate::panic_message(panic.as_ref())
        )),
    }
}

/// Bytes of GPU memory in use by this process's allocations on `index`, when known.
#[cfg(feature = "cuda")]
pub fn gpu_memory_bytes(index: usize) -> Option<u64> {
    use burn::backend::cuda::CudaDevice;
    use burn::cubecl::Runtime;
    use burn::cubecl::cuda::CudaRuntime;
    let client = CudaRuntime::client(&CudaDevice::new(index));
    client.memory_usage().ok().map(|usage| usage.bytes_reserved)
}

#[cfg(not(feature = "cuda"))]
pub fn gpu_memory_bytes(_index: usize) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_auto_never_fails() {
        assert_eq!("cuda:1".parse(), Ok(DeviceChoice::Cuda(1)));
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        // On a machine without a GPU (or a build without CUDA) auto falls back with a note.
        let (resolved, note) = resolve(DeviceChoice::Auto).expect("auto resolves");
        if resolved == Resolved::Cpu {
            assert!(note.is_some());
        }
    }
}
