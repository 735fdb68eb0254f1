//! The `aws` provider: an EC2 Auto Scaling group, through aws-sdk-autoscaling.
//!
//! Calls: DescribeAutoScalingGroups, SetDesiredCapacity, UpdateAutoScalingGroup (bounds),
//! SetInstanceProtection, RecordLifecycleActionHeartbeat and CompleteLifecycleAction — the
//! calls the coordinator's IAM policy in `terraform/` allows on its group and nothing else.
//! Credentials and region come from the standard AWS chain (environment, profile, web
//! identity, container or instance role). The endpoint can be overridden for tests with
//! `AwsOptions::endpoint` or the SDK's own `AWS_ENDPOINT_URL`.
//!
//! TLS is rustls on ring, like the rest of Flotilla (no aws-lc build).

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::error::DisplayErrorContext;
use aws_sdk_autoscaling::types::LifecycleState;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use crate::provider::{Group, Instance, Lifecycle, Provider, ProviderError};

/// The termination lifecycle hook's name unless told otherwise (terraform/ creates it).
pub const DEFAULT_HOOK: &str = "flotilla-drain";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsOptions {
    pub group: String,
    /// The termination lifecycle hook the coordinator heartbeats and completes.
    pub hook: String,
    /// Overrides the Auto Scaling endpoint (tests: moto_server on loopback).
    pub endpoint: Option<String>,
    /// Overrides the region from the chain.
    pub region: Option<String>,
}

impl AwsOptions {
    /// Parses `aws:GROUP` or `aws:GROUP:HOOK`.
    pub fn parse(text: &str) -> Result<AwsOptions, String> {
        let rest = text
            .strip_prefix("aws:")
            .ok_or_else(|| format!("'{text}' is not aws:GROUP[:HOOK]"))?;
        let (group, hook) = match rest.split_once(':') {
            Some((group, hook)) => (group, hook),
            None => (rest, DEFAULT_HOOK),
        };
        if group.is_empty() || hook.is_empty() {
            return Err(format!(
                "'{text}': the group name (and hook name, when given) must not be empty"
            ));
        }
        Ok(AwsOptions {
            group: group.to_string(),
            hook: hook.to_string(),
            endpoint: None,
            region: None,
        })
    }
}

pub struct AwsProvider {
    client: Client,
    options: AwsOptions,
}

fn error<E: std::error::Error>(call: &'static str, source: E) -> ProviderError {
    ProviderError::new(call, DisplayErrorContext(source))
}

fn lifecycle(state: Option<&LifecycleState>) -> Lifecycle {
    match state {
        Some(
            LifecycleState::Pending | LifecycleState::PendingWait | LifecycleState::PendingProceed,
        ) => Lifecycle::Pending,
        Some(LifecycleState::InService) => Lifecycle::InService,
        Some(LifecycleState::TerminatingWait) => Lifecycle::TerminatingWait,
        Some(LifecycleState::Terminating | LifecycleState::TerminatingProceed) => {
            Lifecycle::Terminating
        }
        Some(other) => Lifecycle::Other(other.as_str().to_string()),
        None => Lifecycle::Other("unknown".into()),
    }
}

fn count(value: Option<i32>) -> u32 {
    value.unwrap_or(0).max(0) as u32
}

impl AwsProvider {
    /// Loads credentials and region from the standard chain.
    pub async fn from_env(options: AwsOptions) -> AwsProvider {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(endpoint) = &options.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(region) = &options.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let config = loader.load().await;
        AwsProvider::new(Client::new(&config), options)
    }

    /// With a client made elsewhere (tests give static credentials).
    pub fn new(client: Client, options: AwsOptions) -> AwsProvider {
        AwsProvider { client, options }
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn describe_self(&self) -> String {
        format!("aws:{}", self.options.group)
    }

    async fn group(&self) -> Result<Group, ProviderError> {
        const CALL: &str = "DescribeAutoScalingGroups";
        let output = self
            .client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.options.group)
            .send()
            .await
            .map_err(|e| error(CALL, e))?;
        let group = output
            .auto_scaling_groups()
            .iter()
            .find(|group| group.auto_scaling_group_name() == Some(self.options.group.as_str()))
            .ok_or_else(|| {
                ProviderError::new(
                    CALL,
                    format!("no Auto Scaling group '{}'", self.options.group),
                )
            })?;
        let instances = group
            .instances()
            .iter()
            .filter_map(|instance| {
                Some(Instance {
                    id: instance.instance_id()?.to_string(),
                    lifecycle: lifecycle(instance.lifecycle_state()),
                    protected: instance.protected_from_scale_in().unwrap_or(false),
                })
            })
            .collect();
        Ok(Group {
            name: self.options.group.clone(),
            min: count(group.min_size()),
            max: count(group.max_size()),
            desired: count(group.desired_capacity()),
            instances,
        })
    }

    async fn set_desired(&self, desired: u32) -> Result<(), ProviderError> {
        self.client
            .set_desired_capacity()
            .auto_scaling_group_name(&self.options.group)
            .desired_capacity(desired as i32)
            // The autoscaler keeps its own cooldowns; the group's would only delay it.
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| error("SetDesiredCapacity", e))?;
        Ok(())
    }

    async fn set_bounds(&self, min: u32, max: u32) -> Result<(), ProviderError> {
        self.client
            .update_auto_scaling_group()
            .auto_scaling_group_name(&self.options.group)
            .min_size(min as i32)
            .max_size(max as i32)
            .send()
            .await
            .map_err(|e| error("UpdateAutoScalingGroup", e))?;
        Ok(())
    }

    async fn protect(&self, instances: &[String], protected: bool) -> Result<(), ProviderError> {
        self.client
            .set_instance_protection()
            .auto_scaling_group_name(&self.options.group)
            .set_instance_ids(Some(instances.to_vec()))
            .protected_from_scale_in(protected)
            .send()
            .await
            .map_err(|e| error("SetInstanceProtection", e))?;
        Ok(())
    }

    async fn heartbeat(&self, instance: &str) -> Result<(), ProviderError> {
        self.client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&self.options.group)
            .lifecycle_hook_name(&self.options.hook)
            .instance_id(instance)
            .send()
            .await
            .map_err(|e| error("RecordLifecycleActionHeartbeat", e))?;
        Ok(())
    }

    async fn complete(&self, instance: &str) -> Result<(), ProviderError> {
        self.client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.options.group)
            .lifecycle_hook_name(&self.options.hook)
            .instance_id(instance)
            .lifecycle_action_result("CONTINUE")
            .send()
            .await
            .map_err(|e| error("CompleteLifecycleAction", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_group_and_hook() {
        let options = AwsOptions::parse("aws:gpu-agents").expect("parse");
        assert_eq!(options.group, "gpu-agents");
        assert_eq!(options.hook, DEFAULT_HOOK);
        let options = AwsOptions::parse("aws:gpu-agents:drain-hook").expect("parse");
        assert_eq!(options.hook, "drain-hook");
        assert!(
            AwsOptions::parse("gcp:x")
                .expect_err("an error")
                .contains("aws:GROUP")
        );
        assert!(
            AwsOptions::parse("aws:")
                .expect_err("an error")
                .contains("must not be empty")
        );
    }
}
