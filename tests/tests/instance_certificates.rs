//! Per-instance agent certificates for an EC2 Auto Scaling group, against `moto_server` (an
//! AWS-compatible endpoint for Auto Scaling and S3, started here): `flotilla certs
//! issue-instances` gives every instance a certificate bound to its instance id, under the
//! folder named by its role session (`ROLE_ID:INSTANCE_ID`, the only one its IAM policy lets
//! it read), does nothing more when run again, and removes the certificate of an instance
//! that left the group. What moto cannot show (the IAM condition itself) is Terraform's
//! (`terraform/modules/iam`) and checked there by checkov and the HCL parse only.

use std::process::Command;

use aws_sdk_autoscaling::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use flotilla_harness::{Moto, flotilla_bin};

const ROLE_ID: &str = "AROATESTAGENTROLE";

fn autoscaling(endpoint: &str) -> aws_sdk_autoscaling::Client {
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
    aws_sdk_autoscaling::Client::from_conf(config)
}

fn instance_ids(
    runtime: &tokio::runtime::Runtime,
    client: &aws_sdk_autoscaling::Client,
) -> Vec<String> {
    runtime.block_on(async {
        let output = client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names("gpu")
            .send()
            .await
            .expect("describe");
        let mut ids: Vec<String> = output.auto_scaling_groups()[0]
            .instances()
            .iter()
            .filter_map(|instance| instance.instance_id().map(str::to_string))
            .collect();
        ids.sort();
        ids
    })
}

#[test]
fn every_instance_gets_a_certificate_bound_to_its_id_and_only_its_own_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let moto = Moto::start(&dir.path().join("moto.log"));
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    moto.create_bucket("fleet");
    let certs = dir.path().join("certs");
    let output = Command::new(flotilla_bin())
        .args(["certs", "init", "--out"])
        .arg(&certs)
        .output()
        .expect("certs init");
    assert!(output.status.success());

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = autoscaling(&endpoint);
    runtime.block_on(async {
        client
            .create_launch_configuration()
            .launch_configuration_name("agents")
            .image_id("ami-12c6146b")
            .instance_type("g5.xlarge")
            .send()
            .await
            .expect("create launch configuration");
        client
            .create_auto_scaling_group()
            .auto_scaling_group_name("gpu")
            .launch_configuration_name("agents")
            .min_size(0)
            .max_size(4)
            .desired_capacity(2)
            .availability_zones("us-east-1a")
            .send()
            .await
            .expect("create group");
    });
    let instances = instance_ids(&runtime, &client);
    assert_eq!(instances.len(), 2);

    let issue = || {
        let output = Command::new(flotilla_bin())
            .args(["certs", "issue-instances", "--group", "aws:gpu"])
            .args(["--to", "s3://fleet/agent-certs/", "--role-id", ROLE_ID])
            .arg("--certs")
            .arg(&certs)
            .envs(moto.environment())
            .env("AWS_ENDPOINT_URL", &endpoint)
            .output()
            .expect("run certs issue-instances");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let first = issue();
    let mut keys = moto.keys("fleet", "agent-certs/");
    keys.sort();
    let mut expected: Vec<String> = instances
        .iter()
        .flat_map(|id| {
            [
                format!("agent-certs/{ROLE_ID}:{id}/agent-key.pem"),
                format!("agent-certs/{ROLE_ID}:{id}/agent.pem"),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(keys, expected, "{first}");

    // Each certificate is bound to its instance's id.
    let options: Vec<(String, String)> = moto
        .environment()
        .into_iter()
        .filter_map(|(name, value)| {
            let key = match name.as_str() {
                "AWS_ENDPOINT" => "aws_endpoint",
                "AWS_ALLOW_HTTP" => "aws_allow_http",
                "AWS_REGION" => "aws_region",
                "AWS_ACCESS_KEY_ID" => "aws_access_key_id",
                "AWS_SECRET_ACCESS_KEY" => "aws_secret_access_key",
                _ => return None,
            };
            Some((key.to_string(), value))
        })
        .collect();
    let options: Vec<(&str, &str)> = options
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    let store = flotilla_train::ArtifactStore::open_with("s3://fleet/agent-certs/", &options)
        .expect("the bucket");
    for id in &instances {
        let fetched = dir.path().join(format!("{id}.pem"));
        let body = runtime
            .block_on(store.get(&format!("s3://fleet/agent-certs/{ROLE_ID}:{id}/agent.pem")))
            .expect("the certificate object");
        std::fs::write(&fetched, body).expect("write");
        let shown = Command::new(flotilla_bin())
            .args(["certs", "show"])
            .arg(&fetched)
            .output()
            .expect("certs show");
        let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
        assert!(shown.contains(&format!("agent id  {id}")), "{shown}");
        assert!(shown.contains("role      agent"), "{shown}");
    }

    // Again: nothing new.
    let again = issue();
    assert!(!again.contains("issued"), "{again}");

    // One instance leaves: its certificate goes.
    runtime.block_on(async {
        client
            .set_desired_capacity()
            .auto_scaling_group_name("gpu")
            .desired_capacity(1)
            .send()
            .await
            .expect("scale in");
    });
    let remaining = instance_ids(&runtime, &client);
    assert_eq!(remaining.len(), 1);
    let gone = instances
        .iter()
        .find(|id| !remaining.contains(id))
        .expect("an instance left");
    let third = issue();
    assert!(
        third.contains(&format!("removed the certificate of {gone}")),
        "{third}"
    );
    let keys = moto.keys("fleet", "agent-certs/");
    assert!(
        keys.iter().all(|key| !key.contains(gone.as_str())),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 2, "{keys:?}");

    // A role id that is not one is refused before anything is written.
    let output = Command::new(flotilla_bin())
        .args(["certs", "issue-instances", "--group", "aws:gpu"])
        .args(["--to", "s3://fleet/agent-certs/", "--role-id", "../../etc"])
        .arg("--certs")
        .arg(&certs)
        .envs(moto.environment())
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--role-id"));
}
