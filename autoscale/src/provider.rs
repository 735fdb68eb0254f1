//! What the autoscaler needs from a fleet: one trait, one implementation per place agents
//! run (`aws` for an EC2 Auto Scaling group, `local` for agent processes on this machine).

use std::fmt;

use async_trait::async_trait;

/// Where an instance is in its life, as the group reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// Starting; not yet able to run trials.
    Pending,
    InService,
    /// Being terminated, held by a termination lifecycle hook until the hook is completed
    /// (or its heartbeat timeout passes).
    TerminatingWait,
    /// Being terminated, no longer held.
    Terminating,
    /// Anything else the provider reports (standby, detaching, …), by its name.
    Other(String),
}

impl Lifecycle {
    /// Instances that count towards the fleet's actual capacity.
    pub fn counts(&self) -> bool {
        matches!(self, Lifecycle::Pending | Lifecycle::InService)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The instance id; an agent on it registers under the same id.
    pub id: String,
    pub lifecycle: Lifecycle,
    /// Protected from scale-in: the group will not pick it when shrinking.
    pub protected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    pub instances: Vec<Instance>,
}

impl Group {
    /// Instances pending or in service.
    pub fn actual(&self) -> u32 {
        self.instances
            .iter()
            .filter(|instance| instance.lifecycle.counts())
            .count() as u32
    }
}

/// What a provider call failed on: the call, and the provider's own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    pub call: &'static str,
    pub message: String,
}

impl ProviderError {
    pub fn new(call: &'static str, message: impl fmt::Display) -> ProviderError {
        ProviderError {
            call,
            message: message.to_string(),
        }
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.call, self.message)
    }
}

impl std::error::Error for ProviderError {}

/// A fleet the autoscaler can size.
#[async_trait]
pub trait Provider: Send + Sync {
    /// For logs and `flotilla cluster status`: `aws:GROUP` or `local`.
    fn describe_self(&self) -> String;

    /// The group as it is now.
    async fn group(&self) -> Result<Group, ProviderError>;

    /// Asks for `desired` instances (within the group's own min and max).
    async fn set_desired(&self, desired: u32) -> Result<(), ProviderError>;

    /// Changes the group's own bounds (`flotilla cluster scale --min --max`).
    async fn set_bounds(&self, min: u32, max: u32) -> Result<(), ProviderError>;

    /// Protects instances from scale-in, or lifts the protection.
    async fn protect(&self, instances: &[String], protected: bool) -> Result<(), ProviderError>;

    /// Keeps a termination lifecycle hook waiting on `instance` alive.
    async fn heartbeat(&self, instance: &str) -> Result<(), ProviderError>;

    /// Lets a terminating instance go: its agent has drained.
    async fn complete(&self, instance: &str) -> Result<(), ProviderError>;
}
