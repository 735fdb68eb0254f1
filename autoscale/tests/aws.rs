//! The `aws` provider against real Auto Scaling APIs where they can run here:
//!
//! - `moto_server` (PyPI `moto[server]`, started by the test on loopback): create a group,
//!   scale it from demand, protect a busy instance, scale in around it.
//! - For RecordLifecycleActionHeartbeat and CompleteLifecycleAction, which moto does not
//!   implement, a minimal HTTP double (`LifecycleDouble`, a fake, named so) that answers the
//!   AWS query protocol and records every request so the test can check its shape.
//!
//! `FLOTILLA_MOTO_SERVER` names the moto_server program (`scripts/test.sh` installs it into
//! a virtualenv and sets it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use flotilla_autoscale::aws::{AwsOptions, AwsProvider};
use flotilla_autoscale::{ClusterView, Lifecycle, Policy, Provider, Reconciler};
use flotilla_harness::Moto;

fn client(endpoint: &str) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_sdk_autoscaling::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(endpoint)
        .http_client(http)
        .build();
    Client::from_conf(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_a_moto_group_from_demand_and_keeps_the_busy_instance() {
    let moto = Moto::start_temporary();
    let endpoint = moto.endpoint();
    let client = client(&endpoint);
    client
        .create_launch_configuration()
        .launch_configuration_name("flotilla-agents")
        .image_id("ami-12c6146b")
        .instance_type("g5.xlarge")
        .send()
        .await
        .expect("create launch configuration");
    client
        .create_auto_scaling_group()
        .auto_scaling_group_name("gpu")
        .launch_configuration_name("flotilla-agents")
        .min_size(0)
        .max_size(4)
        .desired_capacity(0)
        .availability_zones("us-east-1a")
        .send()
        .await
        .expect("create group");
    let options = AwsOptions::parse("aws:gpu").expect("options");
    let provider = AwsProvider::new(client.clone(), options);

    // No window, no grace: each step follows demand at once, so the sequence is plain.
    let policy = Policy {
        slots_per_instance: 1,
        scale_in_window: Duration::ZERO,
        idle_grace: Duration::ZERO,
        ..Policy::default()
    };
    let mut reconciler = Reconciler::new(policy, Duration::from_secs(60));
    let mut now = Duration::ZERO;
    let mut step = |demand: u32, busy: BTreeSet<String>| {
        now += Duration::from_secs(10);
        let view = ClusterView {
            demand_slots: demand,
            connected: busy.clone(),
            busy,
        };
        (now, view)
    };

    // A burst of three slots: three instances.
    let (at, view) = step(3, BTreeSet::new());
    let taken = reconciler.step(&provider, at, &view).await.expect("step");
    assert_eq!(taken.decision.desired, 3, "{}", taken.decision.reason);
    assert!(taken.errors.is_empty(), "{:?}", taken.errors);
    let group = provider.group().await.expect("describe");
    assert_eq!(group.desired, 3);
    assert_eq!(group.actual(), 3, "{group:?}");

    // One instance's agent runs a trial: it gets scale-in protection.
    let busy_id = group.instances[1].id.clone();
    let (at, view) = step(3, BTreeSet::from([busy_id.clone()]));
    let taken = reconciler.step(&provider, at, &view).await.expect("step");
    assert_eq!(taken.protection, vec![(busy_id.clone(), true)]);
    let group = provider.group().await.expect("describe");
    let protected: BTreeMap<String, bool> = group
        .instances
        .iter()
        .map(|i| (i.id.clone(), i.protected))
        .collect();
    assert_eq!(protected.get(&busy_id), Some(&true), "{protected:?}");
    assert_eq!(
        protected.values().filter(|p| **p).count(),
        1,
        "{protected:?}"
    );

    // Demand falls to that one trial: the group shrinks to one, and the one left is the
    // busy, protected instance.
    let (at, view) = step(1, BTreeSet::from([busy_id.clone()]));
    let taken = reconciler.step(&provider, at, &view).await.expect("step");
    assert_eq!(taken.decision.desired, 1, "{}", taken.decision.reason);
    let group = provider.group().await.expect("describe");
    let live: Vec<&str> = group
        .instances
        .iter()
        .filter(|i| i.lifecycle.counts())
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(live, vec![busy_id.as_str()], "{group:?}");

    // The trial ends: protection is lifted, and the idle fleet goes to zero.
    let (at, view) = step(0, BTreeSet::new());
    let taken = reconciler.step(&provider, at, &view).await.expect("step");
    assert_eq!(taken.decision.desired, 0, "{}", taken.decision.reason);
    assert_eq!(taken.protection, vec![(busy_id.clone(), false)]);
    let group = provider.group().await.expect("describe");
    assert_eq!(group.desired, 0);

    // Bounds from `flotilla cluster scale --min --max` land on the group.
    provider.set_bounds(1, 3).await.expect("bounds");
    let group = provider.group().await.expect("describe");
    assert_eq!((group.min, group.max), (1, 3));
    // A wrong group name is an error that names it.
    let missing = AwsProvider::new(client, AwsOptions::parse("aws:nope").expect("options"));
    let error = missing.group().await.expect_err("no such group");
    assert!(
        error.to_string().contains("no Auto Scaling group 'nope'"),
        "{error}"
    );
}

/// A fake Auto Scaling endpoint for the lifecycle calls moto lacks: it describes a group
/// whose instances wait on the termination hook and records every request's parameters.
#[derive(Clone, Default)]
struct LifecycleDouble {
    requests: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
}

const NS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";

fn describe_xml() -> String {
    let instance = |id: &str, state: &str| {
        format!(
            "<member><InstanceId>{id}</InstanceId><AvailabilityZone>us-east-1a</AvailabilityZone>\
             <LifecycleState>{state}</LifecycleState><HealthStatus>Healthy</HealthStatus>\
             <ProtectedFromScaleIn>false</ProtectedFromScaleIn></member>"
        )
    };
    format!(
        "<DescribeAutoScalingGroupsResponse xmlns=\"{NS}\"><DescribeAutoScalingGroupsResult>\
         <AutoScalingGroups><member><AutoScalingGroupName>gpu</AutoScalingGroupName>\
         <MinSize>0</MinSize><MaxSize>4</MaxSize><DesiredCapacity>1</DesiredCapacity>\
         <DefaultCooldown>300</DefaultCooldown><AvailabilityZones><member>us-east-1a</member>\
         </AvailabilityZones><HealthCheckType>EC2</HealthCheckType>\
         <CreatedTime>2026-01-01T00:00:00Z</CreatedTime><Instances>{}{}{}</Instances>\
         </member></AutoScalingGroups></DescribeAutoScalingGroupsResult>\
         <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>\
         </DescribeAutoScalingGroupsResponse>",
        instance("i-keep", "InService"),
        instance("i-draining", "Terminating:Wait"),
        instance("i-drained", "Terminating:Wait"),
    )
}

fn parse_form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| {
            (
                key.to_string(),
                value.replace("%3A", ":").replace("%2F", "/"),
            )
        })
        .collect()
}

async fn serve_double(double: LifecycleDouble) -> String {
    use axum::http::StatusCode;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the double");
    let address = listener.local_addr().expect("address");
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |body: String| {
            let double = double.clone();
            async move {
                let form = parse_form(&body);
                let action = form.get("Action").cloned().unwrap_or_default();
                if let Ok(mut requests) = double.requests.lock() {
                    requests.push(form);
                }
                let xml = match action.as_str() {
                    "DescribeAutoScalingGroups" => describe_xml(),
                    "RecordLifecycleActionHeartbeat"
                    | "CompleteLifecycleAction"
                    | "SetInstanceProtection" => format!(
                        "<{action}Response xmlns=\"{NS}\"><{action}Result/>\
                         <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>\
                         </{action}Response>"
                    ),
                    _ => return (StatusCode::BAD_REQUEST, format!("unexpected {action}")),
                };
                (StatusCode::OK, xml)
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_instances_drain_heartbeat_while_busy_and_complete_when_idle() {
    let double = LifecycleDouble::default();
    let endpoint = serve_double(double.clone()).await;
    let provider = AwsProvider::new(
        client(&endpoint),
        AwsOptions::parse("aws:gpu:drain-hook").expect("options"),
    );
    let group = provider.group().await.expect("describe through the double");
    assert_eq!(group.instances[1].lifecycle, Lifecycle::TerminatingWait);

    let mut reconciler = Reconciler::new(Policy::default(), Duration::from_secs(60));
    let view = ClusterView {
        demand_slots: 1,
        busy: BTreeSet::from(["i-keep".to_string(), "i-draining".to_string()]),
        connected: BTreeSet::from([
            "i-keep".to_string(),
            "i-draining".to_string(),
            "i-drained".to_string(),
        ]),
    };
    double.requests.lock().expect("requests").clear();
    let step = reconciler
        .step(&provider, Duration::from_secs(1), &view)
        .await
        .expect("step");
    assert!(step.errors.is_empty(), "{:?}", step.errors);
    assert_eq!(step.drain, vec!["i-draining", "i-drained"]);
    assert_eq!(step.completed, vec!["i-drained"]);

    let requests = double.requests.lock().expect("requests").clone();
    let actions: Vec<&str> = requests
        .iter()
        .map(|form| form.get("Action").map_or("", String::as_str))
        .filter(|action| *action != "DescribeAutoScalingGroups")
        .collect();
    // i-keep is busy and unprotected in the double's answer, so protection is asked for too.
    assert_eq!(
        actions,
        vec![
            "SetInstanceProtection",
            "RecordLifecycleActionHeartbeat",
            "CompleteLifecycleAction"
        ],
        "{requests:?}"
    );
    let find = |action: &str| {
        requests
            .iter()
            .find(|form| form.get("Action").map(String::as_str) == Some(action))
            .cloned()
            .expect("request")
    };
    let heartbeat = find("RecordLifecycleActionHeartbeat");
    assert_eq!(
        heartbeat.get("AutoScalingGroupName").map(String::as_str),
        Some("gpu")
    );
    assert_eq!(
        heartbeat.get("LifecycleHookName").map(String::as_str),
        Some("drain-hook")
    );
    assert_eq!(
        heartbeat.get("InstanceId").map(String::as_str),
        Some("i-draining")
    );
    let complete = find("CompleteLifecycleAction");
    assert_eq!(
        complete.get("AutoScalingGroupName").map(String::as_str),
        Some("gpu")
    );
    assert_eq!(
        complete.get("LifecycleHookName").map(String::as_str),
        Some("drain-hook")
    );
    assert_eq!(
        complete.get("InstanceId").map(String::as_str),
        Some("i-drained")
    );
    assert_eq!(
        complete.get("LifecycleActionResult").map(String::as_str),
        Some("CONTINUE")
    );
}
