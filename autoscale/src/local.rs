//! The `local` provider: agent processes on this machine, one per "instance". What
//! `flotilla up --autoscale` runs, so the embedded default scales the way a cloud fleet does.
//!
//! An instance is a child process the launcher describes (normally `flotilla agent
//! --agent-id local-N …`). Scaling out starts processes; scaling in picks unprotected ones,
//! newest first, and sends them SIGTERM, on which an agent drains (checkpointing what it
//! runs) and exits. Protected instances are never picked, as in an EC2 Auto Scaling group.
//! There is no lifecycle hook: the agent's own drain on SIGTERM is the hook.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::provider::{Group, Instance, Lifecycle, Provider, ProviderError};

/// Makes the command that starts the agent for an instance id.
pub type Launcher = Arc<dyn Fn(&str) -> Command + Send + Sync>;

struct LocalInstance {
    child: Child,
    protected: bool,
    /// SIGTERM sent: the agent is draining and will exit.
    stopping: bool,
}

struct Fleet {
    min: u32,
    max: u32,
    desired: u32,
    next: u32,
    instances: BTreeMap<u32, LocalInstance>,
}

pub struct LocalProvider {
    fleet: Mutex<Fleet>,
    launcher: Launcher,
}

fn id_of(number: u32) -> String {
    format!("local-{number}")
}

fn number_of(id: &str) -> Option<u32> {
    id.strip_prefix("local-")?.parse().ok()
}

impl LocalProvider {
    pub fn new(min: u32, max: u32, launcher: Launcher) -> LocalProvider {
        LocalProvider {
            fleet: Mutex::new(Fleet {
                min,
                max,
                desired: min,
                next: 0,
                instances: BTreeMap::new(),
            }),
            launcher,
        }
    }

    fn lock(&self, call: &'static str) -> Result<MutexGuard<'_, Fleet>, ProviderError> {
        self.fleet
            .lock()
            .map_err(|_| ProviderError::new(call, "the local fleet's lock is poisoned"))
    }

    /// Reaps exited agents, then starts or stops agents until the live count is `desired`.
    fn converge(&self, fleet: &mut Fleet) -> Result<(), ProviderError> {
        fleet.instances.retain(|number, instance| match instance.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                if !instance.stopping {
                    tracing::warn!(instance = %id_of(*number), %status, "local agent exited on its own");
                }
                false
            }
            Err(_) => false,
        });
        let live = fleet.instances.values().filter(|i| !i.stopping).count() as u32;
        if live < fleet.desired {
            for _ in live..fleet.desired {
                let number = fleet.next;
                fleet.next += 1;
                let id = id_of(number);
                let mut command = (self.launcher)(&id);
                command.kill_on_drop(true);
                let child = command
                    .spawn()
                    .map_err(|error| ProviderError::new("start agent", format!("{id}: {error}")))?;
                tracing::info!(instance = %id, "local agent started");
                fleet.instances.insert(
                    number,
                    LocalInstance {
                        child,
                        protected: false,
                        stopping: false,
                    },
                );
            }
        } else if live > fleet.desired {
            let mut excess = live - fleet.desired;
            // Newest first, never a protected one.
            for (number, instance) in fleet.instances.iter_mut().rev() {
                if excess == 0 {
                    break;
                }
                if instance.stopping || instance.protected {
                    continue;
                }
                if let Some(pid) = instance.child.id() {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                }
                instance.stopping = true;
                excess -= 1;
                tracing::info!(instance = %id_of(*number), "local agent told to drain and stop");
            }
        }
        Ok(())
    }

    /// Stops every agent: SIGTERM, up to `grace` for them to drain, then SIGKILL.
    pub async fn shutdown(&self, grace: Duration) {
        let mut children = Vec::new();
        if let Ok(mut fleet) = self.fleet.lock() {
            fleet.desired = 0;
            for (_, mut instance) in std::mem::take(&mut fleet.instances) {
                if let Some(pid) = instance.child.id() {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                }
                instance.stopping = true;
                children.push(instance.child);
            }
        }
        for mut child in children {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn describe_self(&self) -> String {
        "local".into()
    }

    async fn group(&self) -> Result<Group, ProviderError> {
        let mut fleet = self.lock("describe local fleet")?;
        self.converge(&mut fleet)?;
        let instances = fleet
            .instances
            .iter()
            .map(|(number, instance)| Instance {
                id: id_of(*number),
                lifecycle: if instance.stopping {
                    Lifecycle::Terminating
                } else {
                    Lifecycle::InService
                },
                protected: instance.protected,
            })
            .collect();
        Ok(Group {
            name: "local".into(),
            min: fleet.min,
            max: fleet.max,
            desired: fleet.desired,
            instances,
        })
    }

    async fn set_desired(&self, desired: u32) -> Result<(), ProviderError> {
        let mut fleet = self.lock("set desired")?;
        if desired < fleet.min || desired > fleet.max {
            return Err(ProviderError::new(
                "set desired",
                format!(
                    "{desired} is outside the fleet's bounds [{}, {}]",
                    fleet.min, fleet.max
                ),
            ));
        }
        fleet.desired = desired;
        self.converge(&mut fleet)
    }

    async fn set_bounds(&self, min: u32, max: u32) -> Result<(), ProviderError> {
        if min > max {
            return Err(ProviderError::new(
                "set bounds",
                format!("min ({min}) must not exceed max ({max})"),
            ));
        }
        let mut fleet = self.lock("set bounds")?;
        fleet.min = min;
        fleet.max = max;
        fleet.desired = fleet.desired.clamp(min, max);
        self.converge(&mut fleet)
    }

    async fn protect(&self, instances: &[String], protected: bool) -> Result<(), ProviderError> {
        let mut fleet = self.lock("protect")?;
        for id in instances {
            let instance = number_of(id)
                .and_then(|number| fleet.instances.get_mut(&number))
                .ok_or_else(|| ProviderError::new("protect", format!("no instance {id}")))?;
            instance.protected = protected;
        }
        Ok(())
    }

    async fn heartbeat(&self, _instance: &str) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn complete(&self, _instance: &str) -> Result<(), ProviderError> {
        Ok(())
    }
}
