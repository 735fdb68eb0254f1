//! Checkpoint leases against a real etcd, driven directly: two agents' lease holders race for
//! one trial. This exercises the refusal that the process-level test can only provoke by
//! timing (there the coordinator usually stops the stale attempt before it writes again).

use std::time::Duration;

use flotilla_agent::leases::{CheckpointLeases, LeaseError};
use flotilla_coordinator::ha::EtcdConfig;
use flotilla_harness::Etcd;
use flotilla_protocol::etcd_pki::EtcdCert;
use flotilla_protocol::messages::CheckpointRef;
use flotilla_protocol::{AttemptId, SweepId, TrialId};

fn attempt(number: u32) -> AttemptId {
    AttemptId {
        trial: TrialId {
            sweep: SweepId(1),
            number: 0,
        },
        attempt: number,
    }
}

fn checkpoint(attempt: u32, step: u64) -> CheckpointRef {
    CheckpointRef {
        uri: format!("file:///artifacts/s1-t0/{attempt}/{step}"),
        attempt,
        step,
        epoch: step as u32,
        bytes: 1,
    }
}

async fn latest(config: &EtcdConfig) -> Option<CheckpointRef> {
    let mut client = flotilla_etcd::connect(config).await.expect("connect");
    let answer = client
        .get(config.checkpoint_latest_key("s1-t0"), None)
        .await
        .expect("get");
    answer
        .kvs()
        .first()
        .map(|kv| serde_json::from_slice(kv.value()).expect("a JSON pointer"))
}

/// A holder whose lease vanished at the server (expired while it was paused, here revoked
/// behind its back, so its own fence still believes it holds) has its pointer moves refused
/// by etcd once another attempt took the trial; the pointer stays the new attempt's.
#[test]
fn a_stale_holder_cannot_move_the_pointer_after_another_attempt_took_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(dir.path(), 1);
    let mut config = etcd.config(EtcdCert::Agent);
    config.lease_ttl = Duration::from_secs(2);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let old = CheckpointLeases::connect(config.clone())
            .await
            .expect("old");
        let blocked = CheckpointLeases::connect(config.clone())
            .await
            .expect("blocked");
        let (stale, latest_before) = old
            .acquire(attempt(0), Duration::from_secs(1))
            .await
            .expect("the first attempt takes the trial");
        assert!(latest_before.is_none());
        old.move_latest(&stale, &checkpoint(0, 5))
            .await
            .expect("move");

        // While the old holder's lease lives, the new attempt may not start.
        let refused = blocked
            .acquire(attempt(1), Duration::from_millis(500))
            .await;
        let Err(LeaseError::Refused(message)) = refused else {
            panic!("took a trial another attempt holds: {refused:?}")
        };
        assert!(message.contains("s1-t0#0 still holds"), "{message}");

        // The old agent's lease ends at the server (as when it is paused past its TTL).
        let mut client = flotilla_etcd::connect(&config).await.expect("connect");
        let leases = client.leases().await.expect("leases");
        for lease in leases.leases() {
            client.lease_revoke(lease.id()).await.expect("revoke");
        }
        let new = CheckpointLeases::connect(config.clone())
            .await
            .expect("new");
        let (owner, resume) = new
            .acquire(attempt(1), Duration::from_secs(10))
            .await
            .expect("the new attempt takes the trial once the old lease is gone");
        assert_eq!(resume, Some(checkpoint(0, 5)), "it resumes from the latest");
        new.move_latest(&owner, &checkpoint(1, 6))
            .await
            .expect("move");

        // The stale holder writes again: refused, and the pointer does not move. etcd refuses
        // the transaction ("no longer holds"), unless the holder's keep-alive has already
        // seen its lease gone, in which case it refuses by itself ("lease ran out").
        let stale_move = old.move_latest(&stale, &checkpoint(0, 7)).await;
        let Err(message) = stale_move else {
            panic!("a stale attempt moved the pointer")
        };
        assert!(
            message.contains("no longer holds") || message.contains("lease ran out"),
            "{message}"
        );
        assert_eq!(latest(&config).await, Some(checkpoint(1, 6)));

        // Releasing lets the next attempt start at once.
        new.release(&owner).await;
        let (_, resume) = old
            .acquire(attempt(2), Duration::from_secs(1))
            .await
            .expect("released");
        assert_eq!(resume, Some(checkpoint(1, 6)));
        old.shutdown().await;
        new.shutdown().await;
    });
}

/// A holder whose own fence ran out (its keep-alives stopped: paused, cut off) refuses to
/// move the pointer by itself, before asking etcd.
#[test]
fn a_holder_whose_lease_ran_out_refuses_to_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(dir.path(), 1);
    let mut config = etcd.config(EtcdCert::Agent);
    config.lease_ttl = Duration::from_secs(1);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let holder = CheckpointLeases::connect(config.clone())
            .await
            .expect("holder");
        let (ownership, _) = holder
            .acquire(attempt(0), Duration::from_secs(1))
            .await
            .expect("acquire");
        // Stop the keep-alives: the fence runs out within the granted TTL (etcd may grant
        // somewhat more than asked for: its minimum depends on its election timeout).
        holder.shutdown().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let refused = holder.move_latest(&ownership, &checkpoint(0, 1)).await;
        let Err(message) = refused else {
            panic!("wrote after its lease ran out")
        };
        assert!(message.contains("ran out"), "{message}");
        assert_eq!(latest(&config).await, None);
    });
}

/// An etcd that does not answer is tried again until the wait is over, and then named as
/// unavailable (the agent hands such an attempt back rather than failing it); once etcd is
/// back within the wait, the attempt gets its lease. A release that etcd did not answer is
/// retried until it did, so the next attempt does not wait for the agent's lease to end.
#[test]
fn an_unanswered_take_or_release_is_tried_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut etcd = Etcd::start(dir.path(), 1);
    let mut config = etcd.config(EtcdCert::Agent);
    // A long lease: only a retried release can free the trial for the next attempt in time.
    config.lease_ttl = Duration::from_secs(30);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let holder = CheckpointLeases::connect(config.clone())
            .await
            .expect("holder");
        etcd.kill_member(0);
        let began = std::time::Instant::now();
        let refused = holder.acquire(attempt(0), Duration::from_secs(2)).await;
        assert!(
            matches!(refused, Err(LeaseError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(
            began.elapsed() >= Duration::from_secs(2),
            "{:?}",
            began.elapsed()
        );

        // etcd returns while the attempt waits: it gets the lease.
        let restart = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            etcd.start_member(0);
            etcd
        });
        let (ownership, _) = holder
            .acquire(attempt(0), Duration::from_secs(30))
            .await
            .expect("the lease once etcd is back");
        let mut etcd = restart.join().expect("restart etcd");

        // A release while etcd is down is retried once it is back: the next attempt (on
        // another agent) takes the trial well before this agent's lease could expire.
        etcd.kill_member(0);
        holder.release(&ownership).await;
        etcd.start_member(0);
        let other = CheckpointLeases::connect(config.clone())
            .await
            .expect("other");
        let began = std::time::Instant::now();
        other
            .acquire(attempt(1), Duration::from_secs(20))
            .await
            .expect("the next attempt takes the trial");
        drop(etcd);
        assert!(
            began.elapsed() < Duration::from_secs(15),
            "{:?}",
            began.elapsed()
        );
    });
}
