//! The agent's GPUs and which running attempt holds each.
//!
//! An agent knows its GPUs from NVML where a driver is present, or from `--gpus`: a count
//! (`--gpus 2`: indices 0 and 1) or a list of indices (`--gpus 0,2`). With NVML present the
//! declaration restricts what NVML sees and may not name a GPU it does not have; without
//! NVML the declaration is taken as it is (a host whose driver is not loaded yet, or a test).
//!
//! Each attempt, and each serving program's replica, gets exactly the GPUs it asked for, to
//! itself: [`GpuPool::take`] hands out the lowest free indices and [`GpuPool::give_back`]
//! returns them when the attempt ends or the program exits. A command trial and a serving
//! program see them as `CUDA_VISIBLE_DEVICES` and `FLOTILLA_GPUS`; built-in trainers train on
//! the first. The pool is shared with the metrics endpoint, which labels each GPU's readings
//! with the trial or model version holding it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flotilla_protocol::AttemptId;
use flotilla_protocol::models::ModelRef;

/// What holds a GPU: a trial's attempt or a model version's serving program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Attempt(AttemptId),
    Replica(ModelRef),
}

impl From<AttemptId> for Holder {
    fn from(attempt: AttemptId) -> Holder {
        Holder::Attempt(attempt)
    }
}

impl From<ModelRef> for Holder {
    fn from(model: ModelRef) -> Holder {
        Holder::Replica(model)
    }
}

/// What `--gpus` said, or nothing (find them through NVML).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GpuSpec {
    /// Every GPU NVML reports (none without a driver).
    #[default]
    Detect,
    /// Exactly these indices.
    Indices(Vec<u32>),
}

impl GpuSpec {
    /// No GPUs at all (the embedded default's agents, tests).
    pub fn none() -> GpuSpec {
        GpuSpec::Indices(Vec::new())
    }

    /// The first `count` indices.
    pub fn count(count: u32) -> GpuSpec {
        GpuSpec::Indices((0..count).collect())
    }

    /// The indices this spec names, given what NVML sees (`None`: no driver).
    pub fn resolve(&self, visible: Option<u32>) -> Result<Vec<u32>, String> {
        match (self, visible) {
            (GpuSpec::Detect, visible) => Ok((0..visible.unwrap_or(0)).collect()),
            (GpuSpec::Indices(indices), None) => Ok(indices.clone()),
            (GpuSpec::Indices(indices), Some(visible)) => {
                match indices.iter().find(|index| **index >= visible) {
                    Some(index) => Err(format!(
                        "--gpus names GPU {index}, but NVML sees {visible} GPU(s) on this host (indices 0..{visible})"
                    )),
                    None => Ok(indices.clone()),
                }
            }
        }
    }
}

impl std::str::FromStr for GpuSpec {
    type Err = String;

    /// `N` (the first N GPUs) or `I,J,…` (these indices; `0,` for GPU 0 alone).
    fn from_str(text: &str) -> Result<GpuSpec, String> {
        let text = text.trim();
        if !text.contains(',') {
            return text.parse::<u32>().map(GpuSpec::count).map_err(|_| {
                format!("'{text}' is neither a GPU count (2) nor a list of indices (0,2)")
            });
        }
        let mut indices = Vec::new();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let index = part
                .parse::<u32>()
                .map_err(|_| format!("'{part}' in --gpus {text} is not a GPU index"))?;
            if indices.contains(&index) {
                return Err(format!("GPU {index} is named twice in --gpus {text}"));
            }
            indices.push(index);
        }
        indices.sort_unstable();
        Ok(GpuSpec::Indices(indices))
    }
}

/// The agent's GPUs and their holders.
#[derive(Debug, Clone, Default)]
pub struct GpuPool {
    inner: Arc<Mutex<BTreeMap<u32, Option<Holder>>>>,
}

impl GpuPool {
    pub fn new(indices: &[u32]) -> GpuPool {
        GpuPool {
            inner: Arc::new(Mutex::new(
                indices.iter().map(|index| (*index, None)).collect(),
            )),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Option<Holder>>> {
        // A poisoned lock only means a panic elsewhere; the map itself is always whole.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn total(&self) -> u32 {
        self.lock().len() as u32
    }

    /// The lowest `count` free GPUs, now held by `holder`; `Err` says how many are free.
    pub fn take(&self, holder: impl Into<Holder>, count: u32) -> Result<Vec<u32>, String> {
        let holder = holder.into();
        let mut gpus = self.lock();
        let free: Vec<u32> = gpus
            .iter()
            .filter(|(_, holder)| holder.is_none())
            .map(|(index, _)| *index)
            .collect();
        if (free.len() as u32) < count {
            return Err(format!(
                "{count} GPU(s) asked for, {} of {} free",
                free.len(),
                gpus.len()
            ));
        }
        let taken: Vec<u32> = free.into_iter().take(count as usize).collect();
        for index in &taken {
            gpus.insert(*index, Some(holder.clone()));
        }
        Ok(taken)
    }

    /// Frees whatever `holder` holds.
    pub fn give_back(&self, holder: impl Into<Holder>) {
        let holder = Some(holder.into());
        for held in self.lock().values_mut() {
            if *held == holder {
                *held = None;
            }
        }
    }

    /// Each GPU index and what holds it, if anything.
    pub fn holders(&self) -> Vec<(u32, Option<Holder>)> {
        self.lock()
            .iter()
            .map(|(index, holder)| (*index, holder.clone()))
            .collect()
    }
}

/// `CUDA_VISIBLE_DEVICES`' form: `0,2`.
pub fn visible_devices(gpus: &[u32]) -> String {
    gpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::{SweepId, TrialId};

    fn attempt(number: u32) -> AttemptId {
        AttemptId {
            trial: TrialId {
                sweep: SweepId(1),
                number,
            },
            attempt: 0,
        }
    }

    #[test]
    fn specs_parse_counts_and_indices() {
        assert_eq!("2".parse(), Ok(GpuSpec::Indices(vec![0, 1])));
        assert_eq!("0".parse(), Ok(GpuSpec::none()));
        assert_eq!("2,0".parse(), Ok(GpuSpec::Indices(vec![0, 2])));
        assert_eq!("3,".parse(), Ok(GpuSpec::Indices(vec![3])));
        assert!(
            "two"
                .parse::<GpuSpec>()
                .expect_err("refused")
                .contains("'two'")
        );
        assert!(
            "0,x"
                .parse::<GpuSpec>()
                .expect_err("refused")
                .contains("'x'")
        );
        assert!(
            "1,1"
                .parse::<GpuSpec>()
                .expect_err("refused")
                .contains("twice")
        );
    }

    #[test]
    fn declarations_restrict_what_nvml_sees() {
        assert_eq!(GpuSpec::Detect.resolve(Some(4)), Ok(vec![0, 1, 2, 3]));
        assert_eq!(GpuSpec::Detect.resolve(None), Ok(vec![]));
        assert_eq!(GpuSpec::count(2).resolve(None), Ok(vec![0, 1]));
        assert_eq!(
            GpuSpec::Indices(vec![0, 2]).resolve(Some(4)),
            Ok(vec![0, 2])
        );
        let error = GpuSpec::Indices(vec![0, 4])
            .resolve(Some(4))
            .expect_err("refused");
        assert!(
            error.contains("GPU 4") && error.contains("4 GPU(s)"),
            "{error}"
        );
    }

    #[test]
    fn no_two_attempts_share_a_gpu() {
        let pool = GpuPool::new(&[0, 2]);
        assert_eq!(pool.take(attempt(0), 1), Ok(vec![0]));
        assert_eq!(pool.take(attempt(1), 1), Ok(vec![2]));
        let refused = pool.take(attempt(2), 1).expect_err("refused");
        assert!(refused.contains("0 of 2 free"), "{refused}");
        pool.give_back(attempt(0));
        assert_eq!(pool.take(attempt(2), 1), Ok(vec![0]));
        pool.give_back(attempt(1));
        pool.give_back(attempt(2));
        assert_eq!(pool.take(attempt(3), 2), Ok(vec![0, 2]));
        assert_eq!(pool.take(attempt(4), 0), Ok(vec![]));
        assert_eq!(visible_devices(&[0, 2]), "0,2");
    }

    #[test]
    fn serving_replicas_hold_gpus_apart_from_attempts() {
        let pool = GpuPool::new(&[0, 1]);
        let model: ModelRef = "demo@1.0.0".parse().expect("ref");
        assert_eq!(pool.take(model.clone(), 1), Ok(vec![0]));
        assert_eq!(pool.take(attempt(0), 1), Ok(vec![1]));
        assert!(pool.take(attempt(1), 1).is_err());
        assert_eq!(pool.holders()[0], (0, Some(Holder::Replica(model.clone()))));
        pool.give_back(model);
        assert_eq!(pool.holders()[0], (0, None));
        assert_eq!(pool.holders()[1], (1, Some(Holder::Attempt(attempt(0)))));
    }
}
