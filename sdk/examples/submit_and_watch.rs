//! Submit a sweep from Rust and watch it run.
//!
//! Against a running cluster (certificates from `flotilla certs init`):
//!
//! ```text
//! FLOTILLA_COORDINATOR=127.0.0.1:7070 FLOTILLA_CERTS=./certs \
//!     cargo run -p flotilla-sdk --features embedded --example submit_and_watch
//! ```
//!
//! Without `FLOTILLA_COORDINATOR`, it starts a local cluster in-process, like `flotilla up`.

use flotilla_sdk::{
    Client, Identity, LocalCluster, LocalClusterOptions, SweepBuilder, SweepEvent, SweepSummary,
};

/// Builds a sweep of the shipped quadratic trial, submits it, streams its events, and
/// returns the final summary after checking `best` agrees with it.
pub async fn run(
    client: &Client,
    trial_script: &str,
) -> Result<SweepSummary, Box<dyn std::error::Error>> {
    let spec = SweepBuilder::new("sdk-example")
        .minimize("loss")
        .float("x", -4.0, 4.0)
        .log_float("scale", 0.1, 10.0)
        .command("python3", [trial_script.to_string()])
        .metrics(["loss"])
        .max_trials(12)
        .max_parallel(4)
        .seed(11)
        .build()?;
    let submitted = client.submit(spec).await?;
    println!("submitted {} ({})", submitted.id, submitted.name);
    let mut events = client.watch(submitted.id).await?;
    let mut summary = None;
    while let Some(event) = events.next().await {
        match event? {
            SweepEvent::TrialStarted { attempt, agent, .. } => {
                println!("started  {attempt} on {agent}")
            }
            SweepEvent::Metric { .. } => {}
            SweepEvent::TrialFinished(trial) => println!(
                "finished {} {:?} objective={:?}",
                trial.id, trial.state, trial.objective
            ),
            SweepEvent::SweepFinished(done) => summary = Some(done),
            _ => {}
        }
    }
    let summary = summary.ok_or("the event stream ended before the sweep did")?;
    let best = client.best(submitted.id).await?;
    if best.as_ref().map(|trial| trial.id) != summary.best.as_ref().map(|trial| trial.id) {
        return Err("`best` and the final summary disagree".into());
    }
    println!(
        "best: {:?}",
        best.map(|trial| (trial.id.to_string(), trial.objective, trial.params))
    );
    Ok(summary)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/trials/quadratic.py"
    );
    match std::env::var("FLOTILLA_COORDINATOR") {
        Ok(address) => {
            let certs = std::env::var("FLOTILLA_CERTS").unwrap_or_else(|_| "certs".into());
            let client = Client::connect(
                address.parse()?,
                &Identity::load_from_dir(certs.as_ref(), "client")?,
            )
            .await?;
            run(&client, script).await?;
            client.close().await;
        }
        Err(_) => {
            let cluster = LocalCluster::start(LocalClusterOptions::default()).await?;
            let client = cluster.client().await?;
            run(&client, script).await?;
            client.close().await;
            cluster.shutdown().await;
        }
    }
    Ok(())
}
