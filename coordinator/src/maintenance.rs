//! etcd upkeep the leader owns while it leads: history compaction, defragmentation, and the
//! database size as metrics.
//!
//! etcd keeps every revision of every key until it is compacted, and a compacted database
//! keeps its file size until it is defragmented; once the file reaches the backend quota
//! (2 GiB by default) etcd refuses every write, the whole cluster's included. So the leader:
//!
//! - reads each member's status every [`Maintenance::status_every`] and exports its database
//!   size and the part in use (`flotilla_etcd_db_size_bytes`, `…_in_use_bytes`), next to the
//!   quota they are alerted against (`flotilla_etcd_quota_bytes`, `EtcdDatabaseNearQuota`);
//! - compacts history every [`Maintenance::compact_every`], up to the revision it saw one
//!   interval earlier, so watchers that lag by less than an interval miss nothing;
//! - defragments the members one at a time (each pauses its own requests while it runs) every
//!   [`Maintenance::defrag_every`], or sooner once more than half a large database is free.
//!   etcd lets only its root user defragment: the leader uses the admin identity given
//!   (`--etcd-maintenance-cert`); without one it compacts and reports, and counts each skipped
//!   defragmentation so the operator sees it is theirs to run.
//!
//! Each step is logged and counted (`flotilla_etcd_maintenance_total{operation,result}`); a
//! failure is retried at the next pass and never affects leading.

use std::time::{Duration, Instant};

use flotilla_etcd::EtcdConfig;
use tokio_util::sync::CancellationToken;

use crate::metrics::METRICS;

/// A database this large or more is defragmented early once more than half of it is free.
const EARLY_DEFRAG_BYTES: i64 = 64 << 20;

/// When the leader maintains etcd.
#[derive(Debug, Clone)]
pub struct Maintenance {
    pub status_every: Duration,
    pub compact_every: Duration,
    pub defrag_every: Duration,
    /// The backend quota etcd runs with (`--quota-backend-bytes`; 2 GiB by default).
    pub quota_bytes: u64,
    /// An etcd identity allowed to defragment (etcd's root user); `None`: no
    /// defragmentation.
    pub admin: Option<flotilla_etcd::EtcdTls>,
}

impl Default for Maintenance {
    fn default() -> Maintenance {
        Maintenance {
            status_every: Duration::from_secs(30),
            compact_every: Duration::from_secs(3600),
            defrag_every: Duration::from_secs(24 * 3600),
            quota_bytes: 2 << 30,
            admin: None,
        }
    }
}

/// One member's database as its status reports it.
#[derive(Debug, Clone)]
struct MemberSize {
    name: String,
    endpoint: String,
    size: i64,
    in_use: i64,
}

/// Runs until `stop`: the leader's term owns it.
pub async fn run(
    client: etcd_client::Client,
    config: EtcdConfig,
    maintenance: Maintenance,
    stop: CancellationToken,
) {
    METRICS.etcd_quota.set(maintenance.quota_bytes as i64);
    let started = Instant::now();
    let mut last_compact = started;
    let mut last_defrag = started;
    // The revision seen at the last compaction pass: the next one compacts up to it.
    let mut compact_to: Option<i64> = None;
    let mut ticker = tokio::time::interval(maintenance.status_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                // A follower reports nothing: the new leader's figures are the ones to read.
                METRICS.etcd_db_size.reset();
                METRICS.etcd_db_size_in_use.reset();
                METRICS.etcd_quota.set(0);
                return;
            }
            _ = ticker.tick() => {}
        }
        let sizes = member_sizes(&client, &config).await;
        for member in &sizes {
            METRICS
                .etcd_db_size
                .with_label_values(&[member.name.as_str()])
                .set(member.size);
            METRICS
                .etcd_db_size_in_use
                .with_label_values(&[member.name.as_str()])
                .set(member.in_use);
        }
        if last_compact.elapsed() >= maintenance.compact_every {
            last_compact = Instant::now();
            compact_to = compact(&client, &config, compact_to).await;
        }
        if last_defrag.elapsed() >= maintenance.defrag_every || fragmented(&sizes) {
            last_defrag = Instant::now();
            defragment(&config, &maintenance, &sizes, &stop).await;
        }
    }
}

/// Whether a member's database is large and more than half of it free: worth defragmenting
/// before the schedule says so.
fn fragmented(sizes: &[MemberSize]) -> bool {
    sizes
        .iter()
        .any(|member| member.size >= EARLY_DEFRAG_BYTES && member.in_use * 2 < member.size)
}

fn count(operation: &str, result: &str) {
    METRICS
        .etcd_maintenance
        .with_label_values(&[operation, result])
        .inc();
}

/// Each member's database size, asked of the member itself.
async fn member_sizes(client: &etcd_client::Client, config: &EtcdConfig) -> Vec<MemberSize> {
    let timeout = Duration::from_secs(2);
    let mut client = client.clone();
    let Ok(Ok(listed)) = tokio::time::timeout(timeout, client.member_list()).await else {
        return Vec::new();
    };
    let mut sizes = Vec::new();
    for member in listed.members() {
        let Some(endpoint) = member.client_urls().first().cloned() else {
            continue;
        };
        match crate::ha::member_status(config, &endpoint, timeout).await {
            Ok(status) => sizes.push(MemberSize {
                name: member.name().to_string(),
                endpoint,
                size: status.db_size(),
                in_use: status.raft_used_db_size(),
            }),
            Err(error) => {
                tracing::debug!(member = member.name(), %error, "no status from an etcd member");
            }
        }
    }
    sizes
}

/// Compacts history up to `to` (the revision seen a pass ago), and returns the revision
/// now, for the next pass.
async fn compact(
    client: &etcd_client::Client,
    config: &EtcdConfig,
    to: Option<i64>,
) -> Option<i64> {
    let mut client = client.clone();
    let timeout = Duration::from_secs(10);
    // Any read answers with the store's revision; this key is one the coordinators may read.
    let probe = crate::store::etcd::next_sweep_key(&config.root());
    let now = match tokio::time::timeout(timeout, client.get(probe, None)).await {
        Ok(Ok(answer)) => answer.header().map(|header| header.revision()),
        Ok(Err(error)) => {
            count("compact", "error");
            tracing::warn!(%error, "cannot read etcd's revision; no compaction this pass");
            None
        }
        Err(_) => None,
    };
    if let Some(revision) = to {
        let options = etcd_client::CompactionOptions::new().with_physical();
        match tokio::time::timeout(timeout, client.compact(revision, Some(options))).await {
            Ok(Ok(_)) => {
                count("compact", "ok");
                tracing::info!(revision, "etcd history compacted");
            }
            Ok(Err(error))
                if error
                    .to_string()
                    .contains("required revision has been compacted") =>
            {
                count("compact", "ok");
            }
            Ok(Err(error)) => {
                count("compact", "error");
                tracing::warn!(revision, %error, "etcd compaction failed; tried again next pass");
            }
            Err(_) => {
                count("compact", "error");
                tracing::warn!(revision, "etcd compaction timed out; tried again next pass");
            }
        }
    }
    now.or(to)
}

/// Defragments each member in turn with the admin identity, if there is one.
async fn defragment(
    config: &EtcdConfig,
    maintenance: &Maintenance,
    sizes: &[MemberSize],
    stop: &CancellationToken,
) {
    let Some(admin) = &maintenance.admin else {
        count("defragment", "skipped");
        tracing::info!(
            "etcd defragmentation is due but no --etcd-maintenance-cert was given (etcd lets only its root user defragment); run `etcdctl defrag` on each member"
        );
        return;
    };
    for member in sizes {
        if stop.is_cancelled() {
            return;
        }
        let one = EtcdConfig {
            endpoints: vec![member.endpoint.clone()],
            tls: Some(admin.clone()),
            ..config.clone()
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(60), async {
            let mut single = flotilla_etcd::connect(&one).await?;
            single.defragment().await
        })
        .await;
        match answer {
            Ok(Ok(_)) => {
                count("defragment", "ok");
                tracing::info!(member = %member.name, before = member.size, took = ?started.elapsed(), "etcd member defragmented");
            }
            Ok(Err(error)) => {
                count("defragment", "error");
                tracing::warn!(member = %member.name, %error, "etcd defragmentation failed; tried again at the next one due");
            }
            Err(_) => {
                count("defragment", "error");
                tracing::warn!(member = %member.name, "etcd defragmentation took over 60 s");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(size: i64, in_use: i64) -> MemberSize {
        MemberSize {
            name: "etcd0".into(),
            endpoint: "https://127.0.0.1:2379".into(),
            size,
            in_use,
        }
    }

    #[test]
    fn only_a_large_database_mostly_free_is_defragmented_early() {
        let mib = 1 << 20;
        assert!(fragmented(&[member(100 * mib, 40 * mib)]));
        assert!(!fragmented(&[member(100 * mib, 60 * mib)]), "half in use");
        assert!(!fragmented(&[member(32 * mib, mib)]), "small");
        assert!(fragmented(&[
            member(32 * mib, mib),
            member(80 * mib, 10 * mib)
        ]));
        assert!(!fragmented(&[]));
    }
}
