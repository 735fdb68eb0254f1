//! Takeover against history: how long a new leader takes to dispatch, and how much memory
//! it holds, with 0 to a million settled trials stored in etcd, against the empty store.
//!
//! ```text
//! cargo build --release -p flotilla
//! cargo run --release -p flotilla-cluster-tests --bin takeover-bench -- [STORED,…] [KILLS]
//! ```
//!
//! For each count of stored trials (default 0,10000,100000,1000000): a fresh real etcd (one
//! member), two coordinators (lease TTL 2 s, `--retain-finished never`, so the history stays
//! in etcd) and one agent. The history is fabricated into etcd first, in the store's own
//! layout and codec: settled sweeps of 1,000 trials each (succeeded, with parameters, metrics
//! and timings like a real sweep's), their summaries and the id high-water mark. A live sweep
//! of 0.2 s command trials then runs, and the leader is SIGKILLed KILLS times (default 3):
//! takeover is measured from the kill to the new leader's first dispatch (the trials' own
//! start times; see `failover-bench`). After each takeover the new leader's resident memory
//! (VmRSS) is read once it has dispatched for 3 s, and its "leading" log line gives how long
//! loading the store took. `FLOTILLA_BIN` runs another build's coordinators (an older one,
//! for a before/after comparison). The figures go to stdout as one line per count and, with
//! `--svg DIR`, as growth curves (takeover-time.svg, takeover-rss.svg) drawn into DIR.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_coordinator::store::SweepRecord;
use flotilla_coordinator::store::etcd::{
    envelope, next_sweep_key, summary_key, sweep_key, trial_key,
};
use flotilla_harness::bench::{leader_change, percentile};
use flotilla_harness::{Cluster, wait_until};
use flotilla_protocol::messages::{SweepState, SweepSummary, TrialCounts, TrialRecord, TrialState};
use flotilla_protocol::spec::SweepSpec;
use flotilla_protocol::{Epoch, ParamValue, SweepId, TrialId, codec, etcd_pki::EtcdCert};

const TRIALS_PER_SWEEP: u64 = 1000;

fn trial(sweep: u64, number: u32) -> TrialRecord {
    let x = f64::from(number) / 1000.0;
    let mut record = TrialRecord::pending(
        TrialId {
            sweep: SweepId(sweep),
            number,
        },
        BTreeMap::from([
            ("lr".to_string(), ParamValue::Float(0.001 + x * 0.01)),
            (
                "layers".to_string(),
                ParamValue::Int(i64::from(number % 4 + 1)),
            ),
            ("dropout".to_string(), ParamValue::Float(x * 0.5)),
        ]),
        0,
    );
    record.state = TrialState::Succeeded;
    record.metrics = BTreeMap::from([
        ("loss".to_string(), 1.0 - x * 0.5),
        ("accuracy".to_string(), 0.5 + x * 0.4),
        ("epoch".to_string(), 20.0),
    ]);
    record.objective = Some(1.0 - x * 0.5);
    record.feasible = true;
    record.agent = Some(flotilla_protocol::AgentId("gpu-host-017".into()));
    record.started_ms = Some(1_760_000_000_000 + u64::from(number) * 1000);
    record.finished_ms = Some(1_760_000_060_000 + u64::from(number) * 1000);
    record.duration_ms = Some(60_000);
    record.dispatch_latency_us = Some(900);
    record.seq = u64::from(number) * 4 + 3;
    record
}

fn sweep(id: u64) -> (SweepRecord, SweepSummary) {
    let mut spec = SweepSpec::example();
    spec.name = format!("history-{id}");
    let record = SweepRecord {
        id: SweepId(id),
        spec,
        seed: id,
        state: SweepState::Completed,
        created_ms: 1_760_000_000_000,
        finished_ms: Some(1_760_001_000_000),
        message: None,
    };
    let summary = SweepSummary {
        id: SweepId(id),
        name: record.spec.name.clone(),
        state: SweepState::Completed,
        objective_metric: "loss".into(),
        direction: record.spec.objective.direction,
        max_trials: TRIALS_PER_SWEEP as u32,
        counts: TrialCounts {
            succeeded: TRIALS_PER_SWEEP as u32,
            ..TrialCounts::default()
        },
        best: Some(trial(id, 999)),
        created_ms: record.created_ms,
        finished_ms: record.finished_ms,
        phases: Vec::new(),
        message: None,
    };
    (record, summary)
}

/// Writes `trials` settled trials (in sweeps of 1,000) into the cluster's etcd; returns how
/// long it took.
async fn fabricate(cluster: &Cluster, trials: u64) -> Duration {
    let started = Instant::now();
    let config = cluster.etcd().config(EtcdCert::Root);
    let client = flotilla_etcd::connect(&config)
        .await
        .expect("connect to etcd");
    let root = flotilla_etcd::EtcdConfig::new(Vec::new()).root();
    let sweeps = trials.div_ceil(TRIALS_PER_SWEEP);
    let value = |bytes: Vec<u8>| envelope(Epoch(1), &bytes);
    let mut writers = tokio::task::JoinSet::new();
    // Eight writers, each a share of the sweeps, 100 puts per transaction.
    for writer in 0..8u64 {
        let mut client = client.clone();
        let root = root.clone();
        writers.spawn(async move {
            let mut operations = Vec::new();
            for id in (1..=sweeps).filter(|id| id % 8 == writer) {
                let (record, summary) = sweep(id);
                let count = TRIALS_PER_SWEEP.min(trials - (id - 1) * TRIALS_PER_SWEEP);
                let mut puts = vec![
                    (
                        sweep_key(&root, id),
                        value(codec::encode(&record).expect("encode")),
                    ),
                    (
                        summary_key(&root, id),
                        value(codec::encode(&summary).expect("encode")),
                    ),
                ];
                for number in 0..count as u32 {
                    let record = trial(id, number);
                    puts.push((
                        trial_key(&root, id, number),
                        value(codec::encode(&record).expect("encode")),
                    ));
                }
                for (key, bytes) in puts {
                    operations.push(etcd_client::TxnOp::put(key, bytes, None));
                    if operations.len() == 100 {
                        let txn = etcd_client::Txn::new().and_then(std::mem::take(&mut operations));
                        client.txn(txn).await.expect("write history");
                    }
                }
            }
            if !operations.is_empty() {
                client
                    .txn(etcd_client::Txn::new().and_then(operations))
                    .await
                    .expect("write history");
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("a writer");
    }
    let mut client = client;
    client
        .put(
            next_sweep_key(&root),
            value(codec::encode(&(sweeps + 1)).expect("encode")),
            None,
        )
        .await
        .expect("write the id mark");
    started.elapsed()
}

fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The newest "leading" line's loaded_ms in coordinator `index`'s log.
fn loaded_ms(cluster: &Cluster, index: usize) -> Option<f64> {
    let log = std::fs::read_to_string(cluster.path(&format!("c{index}.log"))).ok()?;
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("leading") && line.contains("loaded_ms"))?;
    let value = line.split("loaded_ms=").nth(1)?.split_whitespace().next()?;
    value
        .trim_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

struct Figures {
    stored: u64,
    fabricate_s: f64,
    takeover_s: Vec<f64>,
    loaded_ms: Vec<f64>,
    rss_mib: Vec<f64>,
}

fn measure(stored: u64, kills: usize, runtime: &tokio::runtime::Runtime) -> Figures {
    let mut cluster = Cluster::new(1, 2, Duration::from_secs(2));
    // Keep the history in etcd. A build from before archiving (FLOTILLA_BIN, for a
    // comparison) has no such flag and keeps everything anyway.
    let help = std::process::Command::new(flotilla_harness::flotilla_bin())
        .args(["coordinator", "--help"])
        .output()
        .expect("flotilla coordinator --help");
    if String::from_utf8_lossy(&help.stdout).contains("--retain-finished") {
        cluster.coordinator_args = vec!["--retain-finished".into(), "never".into()];
    }
    let fabricate_s = runtime.block_on(fabricate(&cluster, stored)).as_secs_f64();
    for index in 0..2 {
        cluster.start_coordinator(index);
    }
    let (_, mut epoch) = cluster.wait_for_leader(0, Duration::from_secs(120));
    cluster.start_agent("a0", 4);
    cluster.wait_for_agents(1, Duration::from_secs(60));
    let file = cluster.write_logged_sweep("bench", 100_000, 4, "0.2");
    let sweep = cluster.submit(&file);
    let mut figures = Figures {
        stored,
        fabricate_s,
        takeover_s: Vec::new(),
        loaded_ms: Vec::new(),
        rss_mib: Vec::new(),
    };
    for _ in 0..kills {
        let took = leader_change(&mut cluster, &sweep, &mut epoch, |cluster, leader| {
            cluster.kill_coordinator(leader)
        });
        figures.takeover_s.push(took);
        let (leader, _) = cluster.wait_for_leader(epoch - 1, Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(3));
        figures
            .rss_mib
            .push(rss_mib(cluster.coordinator(leader).pid().as_raw()));
        figures.loaded_ms.extend(loaded_ms(&cluster, leader));
    }
    wait_until("the sweep to run on", Duration::from_secs(60), || {
        cluster.progress(&sweep).is_some()
    });
    figures
}

/// 10000 → "10k", 1000000 → "1M".
fn short(count: u64) -> String {
    match count {
        0 => "0".into(),
        n if n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 0.5)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let svg = args
        .iter()
        .position(|arg| arg == "--svg")
        .and_then(|at| args.get(at + 1).cloned());
    let positional: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(at, arg)| !arg.starts_with("--") && (*at == 0 || args[at - 1] != "--svg"))
        .map(|(_, arg)| arg)
        .collect();
    let counts: Vec<u64> = positional.first().map_or_else(
        || vec![0, 10_000, 100_000, 1_000_000],
        |list| {
            list.split(',')
                .map(|count| count.parse().expect("a count"))
                .collect()
        },
    );
    let kills: usize = positional
        .get(1)
        .map_or(3, |kills| kills.parse().expect("kills"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "lease TTL 2s; {kills} leader kills per count; settled sweeps of {TRIALS_PER_SWEEP} trials in etcd"
    );
    println!(
        "stored trials | fabricate s | takeover p50 s (all) | vs empty | store load ms p50 | leader RSS MiB p50"
    );
    let mut all = Vec::new();
    for stored in counts {
        let figures = measure(stored, kills, &runtime);
        let empty = all
            .first()
            .map_or(f64::NAN, |first: &Figures| median(&first.takeover_s));
        let takeover = median(&figures.takeover_s);
        println!(
            "{} | {:.1} | {:.2} ({}) | {:+.2} | {:.0} | {:.0}",
            figures.stored,
            figures.fabricate_s,
            takeover,
            figures
                .takeover_s
                .iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            if empty.is_nan() {
                0.0
            } else {
                takeover - empty
            },
            median(&figures.loaded_ms),
            median(&figures.rss_mib),
        );
        all.push(figures);
    }
    if let Some(dir) = svg {
        let xs: Vec<String> = all.iter().map(|f| short(f.stored)).collect();
        let takeover = flotilla_report::plots::growth_curve(
            "Takeover (leader SIGKILLed → first dispatch) against stored trials",
            "settled trials stored in etcd",
            "seconds",
            &xs,
            &[
                ("p50", all.iter().map(|f| median(&f.takeover_s)).collect()),
                (
                    "max",
                    all.iter()
                        .map(|f| f.takeover_s.iter().copied().fold(f64::NAN, f64::max))
                        .collect(),
                ),
            ],
        );
        let memory = flotilla_report::plots::growth_curve(
            "New leader's memory against stored trials",
            "settled trials stored in etcd",
            "RSS (MiB)",
            &xs,
            &[(
                "leader RSS p50",
                all.iter().map(|f| median(&f.rss_mib)).collect(),
            )],
        );
        std::fs::create_dir_all(&dir).expect("chart folder");
        for (name, plot) in [
            ("takeover-time.svg", takeover),
            ("takeover-rss.svg", memory),
        ] {
            let path = std::path::Path::new(&dir).join(name);
            std::fs::write(&path, plot.svg).expect("write a chart");
            println!("chart: {}", path.display());
        }
    }
}
