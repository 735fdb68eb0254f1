//! `flotilla cluster scale` semantics against a running autoscaler: the `local` provider,
//! whose instances are real `flotilla agent` processes, driven through the SDK calls the CLI
//! makes (`Client::scale`, `Client::autoscale_status`) with the admin certificate.

use std::time::{Duration, Instant};

use flotilla_protocol::messages::ScaleRequest;
use flotilla_sdk::{Client, LocalAutoscale, LocalCluster, LocalClusterOptions};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

async fn connected_agents(client: &Client) -> usize {
    client
        .agents()
        .await
        .map(|agents| agents.iter().filter(|agent| agent.connected).count())
        .unwrap_or(0)
}

async fn wait_for(what: &str, limit: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

fn scale(desired: Option<u32>, min: Option<u32>, max: Option<u32>) -> ScaleRequest {
    ScaleRequest { desired, min, max }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_scales_the_local_fleet_and_the_autoscaler_takes_over_again() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cluster = LocalCluster::start(LocalClusterOptions {
        agents: 0,
        slots_per_agent: 1,
        dir: Some(dir.path().to_path_buf()),
        autoscale: Some(LocalAutoscale {
            program: BIN.into(),
            max_agents: 3,
            scale_in_window: Duration::from_secs(2),
            idle_grace: Duration::from_secs(1),
            interval: Duration::from_millis(300),
        }),
        ..Default::default()
    })
    .await
    .expect("start the embedded cluster");
    let client = cluster.client().await.expect("admin client");

    let status = client.autoscale_status().await.expect("status");
    assert_eq!(status.provider, "local");
    assert_eq!((status.min, status.max, status.desired), (0, 3, 0));

    // Requests outside the bounds are refused and name them; nothing changes.
    let error = client
        .scale(scale(Some(5), None, None))
        .await
        .expect_err("above max");
    assert!(
        error
            .to_string()
            .contains("outside the group's bounds [0, 3]"),
        "{error}"
    );
    let error = client
        .scale(scale(None, Some(3), Some(2)))
        .await
        .expect_err("min above max");
    assert!(
        error
            .to_string()
            .contains("--min (3) must not exceed --max (2)"),
        "{error}"
    );
    assert_eq!(connected_agents(&client).await, 0);

    // Two instances by hand: two agent processes start and register.
    let status = client
        .scale(scale(Some(2), None, None))
        .await
        .expect("scale to 2");
    assert_eq!(status.desired, 2);
    wait_for("two agents", Duration::from_secs(60), async || {
        connected_agents(&client).await == 2
    })
    .await;

    // Nothing to run: once the scale-in window and the idle grace have passed, the autoscaler
    // goes on from the operator's size and takes the fleet back to zero.
    wait_for(
        "the fleet back at zero",
        Duration::from_secs(60),
        async || {
            let status = client.autoscale_status().await.expect("status");
            status.desired == 0 && status.actual == 0 && connected_agents(&client).await == 0
        },
    )
    .await;

    // A floor holds capacity for good: --min 1 brings one agent back and keeps it.
    let status = client
        .scale(scale(None, Some(1), None))
        .await
        .expect("raise min");
    assert_eq!((status.min, status.max), (1, 3));
    wait_for("the floor's agent", Duration::from_secs(60), async || {
        connected_agents(&client).await == 1
            && client.autoscale_status().await.expect("status").desired == 1
    })
    .await;

    cluster.shutdown().await;
}
