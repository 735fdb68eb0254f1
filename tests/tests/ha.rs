//! High availability on a real etcd with real coordinator and agent processes: leaders
//! killed and paused, etcd members killed. Each test names the acceptance point it proves.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_harness::{
    Cluster, Etcd, Moto, assert_no_trial_ran_twice_at_once, run_events, wait_until,
};
use flotilla_protocol::etcd_pki::EtcdCert;
use serde_json::Value;

const TTL: Duration = Duration::from_secs(2);

/// Trial number → params of every succeeded trial; panics if any trial did not succeed.
fn succeeded_params(results: &Value) -> BTreeMap<u64, Value> {
    let mut params = BTreeMap::new();
    for trial in results["trials"].as_array().expect("trials") {
        assert_eq!(trial["state"], "succeeded", "{trial}");
        let number = trial["number"].as_u64().expect("number");
        assert!(
            params.insert(number, trial["params"].clone()).is_none(),
            "trial {number} listed twice"
        );
    }
    params
}

fn wait_completed(cluster: &Cluster, sweep: &str, limit: Duration) -> Value {
    cluster.wait_completed(sweep, limit)
}

/// A process's log, without the terminal colour codes.
fn log_of(cluster: &Cluster, name: &str) -> String {
    let text = std::fs::read_to_string(cluster.path(&format!("{name}.log"))).unwrap_or_default();
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Acceptance: the leader SIGKILLed five times during a 600-trial sweep with 3 coordinators
/// and 3 agents. Every trial completes exactly once, the trial ids and parameters equal a
/// fault-free run's, and no trial ran twice at the same time.
#[test]
fn killing_the_leader_five_times_loses_no_trial_and_runs_none_twice() {
    let mut cluster = Cluster::new(1, 3, TTL);
    for index in 0..3 {
        cluster.start_coordinator(index);
    }
    let (_, mut epoch) = cluster.wait_for_leader(0, Duration::from_secs(30));
    for name in ["a0", "a1", "a2"] {
        cluster.start_agent(name, 2);
    }
    cluster.wait_for_agents(3, Duration::from_secs(30));

    // The fault-free reference, on the same cluster.
    let reference = cluster.write_logged_sweep("reference", 600, 6, "0.25");
    let reference = cluster.submit(&reference);
    let reference = succeeded_params(&wait_completed(
        &cluster,
        &reference,
        Duration::from_secs(120),
    ));
    assert_eq!(reference.len(), 600);

    // Long enough (25 s of trials) to outlast five kills even on a busy machine, now that a
    // failover takes about one lease TTL.
    let chaos = cluster.write_logged_sweep("chaos", 600, 6, "0.25");
    // The sweep is submitted with `sweep submit --watch`, which must follow it through every
    // failover to its end and then write its results.
    let submit_out = cluster.path("submit.out");
    let submit_results = cluster.path("submit-results.json");
    let mut submitter = std::process::Command::new(flotilla_harness::flotilla_bin())
        .args(["sweep", "submit"])
        .arg(&chaos)
        .arg("--watch")
        .arg("--results")
        .arg(&submit_results)
        .args(["--coordinator", &cluster.addresses()])
        .arg("--certs")
        .arg(cluster.path("certs"))
        .args(["--identity", "admin"])
        .stdout(std::fs::File::create(&submit_out).expect("submit output"))
        .stderr(std::fs::File::create(cluster.path("submit.err")).expect("submit errors"))
        .spawn()
        .expect("start the submitting watcher");
    let mut sweep = String::new();
    wait_until("the sweep submitted", Duration::from_secs(30), || {
        let printed = std::fs::read_to_string(&submit_out).unwrap_or_default();
        match printed
            .split_whitespace()
            .skip_while(|word| *word != "sweep")
            .nth(1)
        {
            Some(id) => {
                sweep = id.to_string();
                true
            }
            None => false,
        }
    });
    // A second client watches the whole sweep event by event (`sweep watch` resumes after
    // the last event it printed).
    let watch_out = cluster.path("watch.out");
    let mut watcher = std::process::Command::new(flotilla_harness::flotilla_bin())
        .args([
            "sweep",
            "watch",
            &sweep,
            "--coordinator",
            &cluster.addresses(),
        ])
        .arg("--certs")
        .arg(cluster.path("certs"))
        .args(["--identity", "admin"])
        .stdout(std::fs::File::create(&watch_out).expect("watch output"))
        .stderr(std::fs::File::create(cluster.path("watch.err")).expect("watch errors"))
        .spawn()
        .expect("start the watcher");
    let mut failovers = Vec::new();
    for kill in 0..5 {
        // Let the sweep make progress under this leader first.
        let before = cluster.progress(&sweep).map_or(0, |(_, done)| done);
        wait_until(
            "progress under the current leader",
            Duration::from_secs(60),
            || {
                cluster
                    .progress(&sweep)
                    .is_some_and(|(state, done)| done >= before + 4 || state == "Completed")
            },
        );
        let (leader, current) = cluster.wait_for_leader(epoch - 1, Duration::from_secs(30));
        if cluster
            .progress(&sweep)
            .is_some_and(|(state, _)| state == "Completed")
        {
            panic!("the sweep finished after only {kill} kills; make it longer");
        }
        let killed_at = Instant::now();
        cluster.kill_coordinator(leader);
        let (_, next) = cluster.wait_for_leader(current, Duration::from_secs(30));
        failovers.push(killed_at.elapsed());
        // The new leader knows every agent from the store, reconnected or not yet.
        let agents = cluster.flotilla_ok(&["cluster", "agents"]);
        for name in ["a0", "a1", "a2"] {
            assert!(
                agents.contains(name),
                "{name} missing after a takeover:\n{agents}"
            );
        }
        epoch = next;
        cluster.start_coordinator(leader);
    }
    let results = wait_completed(&cluster, &sweep, Duration::from_secs(180));
    // The watcher saw each trial's end exactly once and the sweep's end, and exited 0.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = watcher.try_wait().expect("watcher") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the watcher did not end with the sweep"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let printed = std::fs::read_to_string(&watch_out).expect("watch output");
    let errors = std::fs::read_to_string(cluster.path("watch.err")).unwrap_or_default();
    assert!(status.success(), "the watcher failed: {errors}\n{printed}");
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    for line in printed.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.get(1) == Some(&"trial")
            && matches!(words.get(3), Some(&"succeeded" | &"failed" | &"stopped"))
        {
            *ends.entry(words[2].to_string()).or_default() += 1;
        }
    }
    assert_eq!(ends.len(), 600, "every trial's end was seen:\n{printed}");
    assert!(
        ends.values().all(|count| *count == 1),
        "a trial's end was shown twice: {:?}",
        ends.iter()
            .filter(|(_, count)| **count > 1)
            .collect::<Vec<_>>()
    );
    assert!(
        printed
            .lines()
            .last()
            .is_some_and(|line| line.contains("Completed")),
        "{printed}"
    );
    // `sweep submit --watch` ended with the sweep: exit 0, the final state, and every trial
    // in its results file.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = submitter.try_wait().expect("submitter") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sweep submit --watch did not end with the sweep"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let printed = std::fs::read_to_string(&submit_out).expect("submit output");
    let errors = std::fs::read_to_string(cluster.path("submit.err")).unwrap_or_default();
    assert!(
        status.success(),
        "sweep submit --watch failed: {errors}\n{printed}"
    );
    assert!(
        printed.contains(&format!("sweep {sweep} Completed: 600 succeeded, 0 failed")),
        "sweep submit --watch did not report the final state:\n{printed}"
    );
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(&submit_results).expect("the results sweep submit wrote"),
    )
    .expect("results JSON");
    assert_eq!(
        written["trials"].as_array().map(Vec::len),
        Some(600),
        "sweep submit --watch wrote every trial"
    );
    let chaos_params = succeeded_params(&results);
    assert_eq!(
        chaos_params, reference,
        "the chaotic run's trials differ from the fault-free run's"
    );
    let events = run_events(&cluster.path("chaos.runs"));
    assert_no_trial_ran_twice_at_once(&events);
    // Leader loss is not the trials' fault: it spends no retry budget.
    for trial in results["trials"].as_array().expect("trials") {
        assert_eq!(trial["failures"], 0, "{trial}");
    }
    eprintln!("leader killed 5 times; a new leader answered after {failovers:?}");
}

/// Acceptance: a leader paused (SIGSTOP) past its lease and then resumed has none of its
/// writes accepted — every record written to etcd after the new leader's election carries
/// the new epoch — it steps down on its own, agents follow the new leader, and the sweep
/// completes with every trial exactly once.
#[test]
fn a_leader_paused_past_its_lease_is_fenced_when_it_resumes() {
    let mut cluster = Cluster::new(1, 3, TTL);
    for index in 0..3 {
        cluster.start_coordinator(index);
    }
    let (old_leader, old_epoch) = cluster.wait_for_leader(0, Duration::from_secs(30));
    for name in ["a0", "a1"] {
        cluster.start_agent(name, 2);
    }
    cluster.wait_for_agents(2, Duration::from_secs(30));
    let file = cluster.write_logged_sweep("paused", 60, 4, "0.3");
    let sweep = cluster.submit(&file);
    wait_until("the sweep to start", Duration::from_secs(30), || {
        cluster.progress(&sweep).is_some_and(|(_, done)| done >= 4)
    });

    cluster.coordinator(old_leader).pause();
    let (new_leader, new_epoch) = cluster.wait_for_leader(old_epoch, Duration::from_secs(30));
    assert_ne!(new_leader, old_leader);
    // Keep it paused well past its lease while the new leader works, then let it run.
    std::thread::sleep(TTL * 2);
    cluster.coordinator(old_leader).resume();
    wait_until(
        "the resumed leader to step down",
        Duration::from_secs(20),
        || log_of(&cluster, &cluster.coordinators[old_leader].name).contains("stepping down"),
    );
    let results = wait_completed(&cluster, &sweep, Duration::from_secs(120));
    assert_eq!(succeeded_params(&results).len(), 60);
    assert_no_trial_ran_twice_at_once(&run_events(&cluster.path("paused.runs")));

    assert_no_writes_after_takeover(&cluster, old_epoch, new_epoch);
    // Agents never obeyed the old leader after the takeover: every connection after it was
    // to an epoch at least as new.
    for agent in ["a0", "a1"] {
        let log = log_of(&cluster, &format!("agent-{agent}"));
        let epochs: Vec<u64> = log
            .lines()
            .filter(|line| line.contains("connected to the coordinator"))
            .filter_map(|line| line.split("epoch=e").nth(1))
            .filter_map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        let first_new = epochs.iter().position(|epoch| *epoch >= new_epoch);
        let first_new = first_new
            .unwrap_or_else(|| panic!("agent {agent} never joined epoch {new_epoch}: {epochs:?}"));
        assert!(
            epochs[first_new..].iter().all(|epoch| *epoch >= new_epoch),
            "agent {agent} went back to an older leader: {epochs:?}"
        );
    }
}

/// Acceptance: with a three-member etcd, losing one member does not stop scheduling; losing
/// two stops progress with no leader anywhere (no split brain); restarting them resumes the
/// sweep, which completes with every trial exactly once.
#[test]
fn one_etcd_member_lost_keeps_scheduling_two_lost_stops_it_until_they_return() {
    let mut cluster = Cluster::new(3, 2, TTL);
    for index in 0..2 {
        cluster.start_coordinator(index);
    }
    cluster.wait_for_leader(0, Duration::from_secs(30));
    for name in ["a0", "a1"] {
        cluster.start_agent(name, 2);
    }
    cluster.wait_for_agents(2, Duration::from_secs(30));
    let file = cluster.write_logged_sweep("quorum", 80, 4, "0.3");
    let sweep = cluster.submit(&file);
    wait_until("the sweep to start", Duration::from_secs(30), || {
        cluster.progress(&sweep).is_some_and(|(_, done)| done >= 4)
    });

    let members = |status: &Value| -> Vec<(String, bool)> {
        status["etcd"]
            .as_array()
            .expect("etcd members")
            .iter()
            .map(|member| {
                let name = member["name"].as_str().unwrap_or_default().to_string();
                (name, member["healthy"] == true && member["error"].is_null())
            })
            .collect()
    };
    let healthy = members(&cluster.status().expect("status"));
    assert_eq!(healthy.len(), 3, "{healthy:?}");
    assert!(healthy.iter().all(|(_, ok)| *ok), "{healthy:?}");

    cluster.etcd_mut().kill_member(0);
    // `cluster status` reports the dead member and the two live ones.
    wait_until(
        "cluster status to show etcd0 down",
        Duration::from_secs(30),
        || {
            cluster.status().is_some_and(|status| {
                let members = members(&status);
                members.len() == 3 && members.iter().all(|(name, ok)| *ok == (name != "etcd0"))
            })
        },
    );
    let (_, done) = cluster.progress(&sweep).unwrap_or_default();
    wait_until(
        "progress with one etcd member down",
        Duration::from_secs(60),
        || {
            cluster
                .progress(&sweep)
                .is_some_and(|(_, now)| now >= done + 10)
        },
    );

    cluster.etcd_mut().kill_member(1);
    // Within a couple of leases every replica has stepped down and none can win.
    wait_until(
        "every coordinator to stop leading",
        Duration::from_secs(30),
        || cluster.status().is_none(),
    );
    let quiet_since = Instant::now();
    while quiet_since.elapsed() < TTL * 3 {
        assert!(
            cluster.status().is_none(),
            "a coordinator leads without an etcd quorum"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    cluster.etcd_mut().start_member(0);
    cluster.etcd_mut().start_member(1);
    cluster.etcd().wait_healthy(Duration::from_secs(60));
    cluster.wait_for_leader(0, Duration::from_secs(60));
    let results = wait_completed(&cluster, &sweep, Duration::from_secs(180));
    assert_eq!(succeeded_params(&results).len(), 80);
    assert_no_trial_ran_twice_at_once(&run_events(&cluster.path("quorum.runs")));
}

/// etcd keeps every revision (no compaction here). The takeover is the revision at which the
/// old leader's election key was deleted (its lease ran out); from then on every state write
/// must come from `new_epoch` or later.
fn assert_no_writes_after_takeover(cluster: &Cluster, old_epoch: u64, new_epoch: u64) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let election = runtime.block_on(history(cluster.etcd(), "/flotilla/v1/election"));
    let old_key = election
        .iter()
        .find(|event| event.put && event.create_revision == old_epoch as i64)
        .map(|event| event.key.clone())
        .expect("the old leader's election key");
    let takeover = election
        .iter()
        .find(|event| !event.put && event.key == old_key)
        .map(|event| event.revision)
        .expect("the old leader's election key was deleted");
    let writes = runtime.block_on(history(cluster.etcd(), "/flotilla/v1/state/"));
    let after_takeover: Vec<_> = writes
        .iter()
        .filter(|event| event.put && event.revision > takeover)
        .collect();
    assert!(!after_takeover.is_empty(), "the new leader wrote nothing");
    for event in &after_takeover {
        let (writer, _) = flotilla_coordinator::store::etcd::open_envelope(&event.value)
            .expect("a record with its epoch header");
        assert!(
            writer.0 >= new_epoch,
            "{} written at revision {} by epoch {writer}, after epoch {new_epoch} took over at revision {takeover}",
            event.key,
            event.revision
        );
    }
}

/// A leader shut down (SIGTERM) flushes its writes, exits 0 and revokes its lease on the way
/// out, so a follower can take over without waiting for the lease to expire: right after the
/// exit, etcd no longer has the lease (with a 10 s TTL, an unrevoked one would still live).
#[test]
fn a_leader_shut_down_revokes_its_lease_and_a_follower_takes_over() {
    let mut cluster = Cluster::new(1, 2, Duration::from_secs(10));
    cluster.start_coordinator(0);
    let (leader, epoch) = cluster.wait_for_leader(0, Duration::from_secs(30));
    cluster.start_coordinator(1);
    for name in ["a0", "a1"] {
        cluster.start_agent(name, 2);
    }
    cluster.wait_for_agents(2, Duration::from_secs(30));
    // A cordon is stored in etcd: the next leader keeps it.
    let out = cluster.flotilla_ok(&["agent", "cordon", "a1"]);
    assert!(out.contains("a1 cordoned"), "{out}");
    let file = cluster.write_logged_sweep("resign", 40, 4, "0.2");
    let sweep = cluster.submit(&file);
    wait_until("the sweep to start", Duration::from_secs(30), || {
        cluster.progress(&sweep).is_some_and(|(_, done)| done >= 4)
    });

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let election = runtime.block_on(history(cluster.etcd(), "/flotilla/v1/election"));
    let lease = election
        .iter()
        .find(|event| event.put && event.create_revision == epoch as i64)
        .map(|event| event.lease)
        .expect("the leader's election key and its lease");
    let status = cluster.coordinators[leader]
        .process
        .as_mut()
        .expect("the leader runs")
        .terminate()
        .expect("the leader exits");
    assert!(status.success(), "{status:?}");
    let remaining = runtime.block_on(async {
        let mut client = flotilla_etcd::connect(&cluster.etcd().config(EtcdCert::Root))
            .await
            .expect("connect");
        client
            .lease_time_to_live(lease, None)
            .await
            .expect("time to live")
            .ttl()
    });
    assert_eq!(remaining, -1, "the lease outlived its leader's shutdown");
    assert!(log_of(&cluster, &cluster.coordinators[leader].name).contains("resigning"));
    cluster.wait_for_leader(epoch, Duration::from_secs(30));
    let results = wait_completed(&cluster, &sweep, Duration::from_secs(120));
    assert_eq!(succeeded_params(&results).len(), 40);
    assert_no_trial_ran_twice_at_once(&run_events(&cluster.path("resign.runs")));
    let agents = cluster.flotilla_ok(&["cluster", "agents"]);
    assert!(
        agents
            .lines()
            .any(|line| line.contains("a1") && line.contains("draining")),
        "the new leader kept a1 cordoned:\n{agents}"
    );
    let placed_on_a1 = results["trials"]
        .as_array()
        .expect("trials")
        .iter()
        .filter(|trial| trial["agent"] == "a1")
        .count();
    assert_eq!(placed_on_a1, 0, "a cordoned agent ran trials");
}

/// Acceptance (leader-change notice): a follower that refuses a peer for not leading keeps the
/// refusal's stream open and, once the leader it named is killed and the election ends, sends
/// a second `NotLeader` naming the new leader, within about a lease of the kill: peers learn of
/// the new leader from the follower's etcd observer, not by asking again and again.
#[test]
fn a_follower_names_the_new_leader_on_the_open_refusal_once_the_election_ends() {
    use flotilla_protocol::framing;
    use flotilla_protocol::messages::{HelloReply, RefusalReason, Role};
    use flotilla_protocol::tls::{self, COORDINATOR_SERVER_NAME, Identity};

    let ttl = Duration::from_secs(2);
    let mut cluster = Cluster::new(1, 3, ttl);
    for index in 0..3 {
        cluster.start_coordinator(index);
    }
    let (leader, epoch) = cluster.wait_for_leader(0, Duration::from_secs(30));
    // Followers observe the election a moment after the leader answers.
    std::thread::sleep(Duration::from_millis(500));
    let follower = (leader + 1) % 3;
    let identity = Identity::load_from_dir(&cluster.path("certs"), "admin").expect("identity");
    let address: std::net::SocketAddr = cluster.coordinators[follower]
        .address
        .parse()
        .expect("address");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (endpoint, connection, mut recv) = runtime.block_on(async {
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("bind")).expect("endpoint");
        endpoint.set_default_client_config(tls::client_config(&identity).expect("TLS"));
        let connection = endpoint
            .connect(address, COORDINATOR_SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, mut recv) = connection.open_bi().await.expect("stream");
        framing::write_frame(
            &mut send,
            &flotilla_protocol::handshake::hello(Role::Client, "notice-test"),
        )
        .await
        .expect("hello");
        let first = framing::read_frame::<_, HelloReply>(&mut recv)
            .await
            .expect("a refusal")
            .expect("a frame");
        let named = match first {
            HelloReply::Refused(refusal) => match refusal.reason {
                RefusalReason::NotLeader { leader } => leader,
                other => panic!("refused for {other:?}"),
            },
            HelloReply::Welcome(_) => panic!("a follower welcomed a client"),
        };
        assert_eq!(
            named.as_deref(),
            Some(cluster.coordinators[leader].address.as_str())
        );
        (endpoint, connection, recv)
    });
    let killed_at = Instant::now();
    cluster.kill_coordinator(leader);
    // A command typed during the election waits for the new leader instead of failing on the
    // dead one the followers still name (`Client::connect_leader`).
    let during = std::process::Command::new(flotilla_harness::flotilla_bin())
        .args(["cluster", "status", "--coordinator", &cluster.addresses()])
        .arg("--certs")
        .arg(cluster.path("certs"))
        .args(["--identity", "admin"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run flotilla");
    let notice = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(8),
            framing::read_frame::<_, HelloReply>(&mut recv),
        )
        .await
    });
    let noticed_after = killed_at.elapsed();
    let named = match notice {
        Ok(Ok(Some(HelloReply::Refused(refusal)))) => match refusal.reason {
            RefusalReason::NotLeader {
                leader: Some(leader),
            } => leader,
            other => panic!("the notice was {other:?}"),
        },
        other => panic!("no leader-change notice within 8 s of the kill: {other:?}"),
    };
    let (next, _) = cluster.wait_for_leader(epoch, Duration::from_secs(30));
    assert_eq!(
        named, cluster.coordinators[next].address,
        "the notice named the new leader"
    );
    let during = during.wait_with_output().expect("flotilla ends");
    assert!(
        during.status.success(),
        "cluster status during the election failed: {}",
        String::from_utf8_lossy(&during.stderr)
    );
    assert!(
        noticed_after < ttl + Duration::from_millis(2500),
        "the notice came {noticed_after:?} after the kill (lease {ttl:?})"
    );
    runtime.block_on(async {
        connection.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
    });
    eprintln!("leader killed; the follower named the new leader after {noticed_after:?}");
}

/// Acceptance (partition): the leader, in its own network namespace, is cut off from etcd and
/// the agents while it keeps running. It steps down by itself within its lease, a follower
/// takes over, and none of the cut-off leader's writes is accepted. Once the link is back it
/// campaigns again as a follower, and the sweep completes with every trial exactly once.
/// Where the machine does not allow network namespaces, `scripts/test.sh` leaves it out of the
/// run and says so (SKIPPED in the suite's summary); run by hand there, it prints SKIPPED and
/// returns. Under the suite on a machine that allows them (`FLOTILLA_REQUIRE_NETNS=1`), a
/// namespace that cannot be made fails it instead of skipping.
#[test]
fn a_leader_cut_off_by_a_partition_steps_down_and_rejoins_as_a_follower() {
    if let Err(reason) = flotilla_harness::Netns::supported() {
        assert!(
            std::env::var_os("FLOTILLA_REQUIRE_NETNS").is_none(),
            "network namespaces worked for the suite's probe but not here: {reason}"
        );
        eprintln!("SKIPPED: network namespaces are not available here: {reason}");
        return;
    }
    let netns = flotilla_harness::Netns::create(0).expect("a namespace");
    let mut cluster = Cluster::with_namespaces(1, 3, TTL, vec![netns]);
    // The replica in the namespace campaigns first, so it leads.
    cluster.start_coordinator(0);
    let (leader, old_epoch) = cluster.wait_for_leader(0, Duration::from_secs(30));
    assert_eq!(leader, 0);
    cluster.start_coordinator(1);
    cluster.start_coordinator(2);
    for name in ["a0", "a1"] {
        cluster.start_agent(name, 2);
    }
    cluster.wait_for_agents(2, Duration::from_secs(30));
    let file = cluster.write_logged_sweep("partition", 120, 4, "0.2");
    let sweep = cluster.submit(&file);
    wait_until("the sweep to start", Duration::from_secs(30), || {
        cluster.progress(&sweep).is_some_and(|(_, done)| done >= 8)
    });

    cluster.coordinators[0]
        .netns
        .as_ref()
        .expect("namespace")
        .cut();
    let (new_leader, new_epoch) = cluster.wait_for_leader(old_epoch, Duration::from_secs(30));
    assert_ne!(new_leader, 0);
    wait_until(
        "the cut-off leader to step down",
        Duration::from_secs(20),
        || log_of(&cluster, "c0").contains("stepping down"),
    );
    assert!(
        cluster.coordinators[0]
            .process
            .as_mut()
            .expect("c0")
            .is_running(),
        "the cut-off leader should step down, not exit"
    );
    std::thread::sleep(TTL);
    cluster.coordinators[0]
        .netns
        .as_ref()
        .expect("namespace")
        .heal();

    let results = wait_completed(&cluster, &sweep, Duration::from_secs(180));
    assert_eq!(succeeded_params(&results).len(), 120);
    assert_no_trial_ran_twice_at_once(&run_events(&cluster.path("partition.runs")));
    for trial in results["trials"].as_array().expect("trials") {
        assert_eq!(trial["failures"], 0, "{trial}");
    }
    assert_no_writes_after_takeover(&cluster, old_epoch, new_epoch);
    // Healed, the old leader campaigns again and follows.
    wait_until(
        "the healed replica to rejoin the election",
        Duration::from_secs(30),
        || {
            cluster.status().is_some_and(|status| {
                status["replicas"]
                    .as_array()
                    .is_some_and(|replicas| replicas.len() == 3)
                    && status["leader"] != "c0"
            })
        },
    );
}

/// One event of etcd's history under a prefix.
struct HistoryEvent {
    key: String,
    revision: i64,
    put: bool,
    create_revision: i64,
    lease: i64,
    value: Vec<u8>,
}

/// Every event under `prefix` in etcd's history (etcd here never compacts), oldest first.
async fn history(etcd: &Etcd, prefix: &str) -> Vec<HistoryEvent> {
    let mut client = flotilla_etcd::connect(&etcd.config(EtcdCert::Root))
        .await
        .expect("connect to etcd");
    let current = client
        .get("history-probe", None)
        .await
        .expect("get")
        .header()
        .map_or(0, |header| header.revision());
    let options = etcd_client::WatchOptions::new()
        .with_prefix()
        .with_start_revision(1);
    let mut stream = client.watch(prefix, Some(options)).await.expect("watch");
    let mut events = Vec::new();
    loop {
        let Ok(Ok(Some(message))) =
            tokio::time::timeout(Duration::from_secs(2), stream.message()).await
        else {
            // The replay is over: nothing more within the quiet period.
            break;
        };

        for event in message.events() {
            if let Some(kv) = event.kv() {
                events.push(HistoryEvent {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    revision: kv.mod_revision(),
                    put: event.event_type() == etcd_client::EventType::Put,
                    create_revision: kv.create_revision(),
                    lease: kv.lease(),
                    value: kv.value().to_vec(),
                });
            }
        }
        if events.last().is_some_and(|event| event.revision >= current) {
            break;
        }
    }
    events
}

/// Acceptance: an agent SIGKILLed mid-trial on the etcd cluster. The trial resumes from its
/// latest checkpoint on the other agent: the epochs after the checkpoint are trained again,
/// not those before it, and the result equals the same trial run without interruption
/// (training is deterministic and resume is exact). Agent loss spends no retry.
#[test]
fn a_trainer_trial_on_a_killed_agent_resumes_from_its_latest_checkpoint_elsewhere() {
    let mut cluster = Cluster::new(1, 2, TTL);
    for index in 0..2 {
        cluster.start_coordinator(index);
    }
    cluster.wait_for_leader(0, Duration::from_secs(30));
    for name in ["a0", "a1"] {
        cluster.start_agent_with(name, 1, &["--device", "cpu"]);
    }
    cluster.wait_for_agents(2, Duration::from_secs(30));
    let interrupted = cluster.submit(&cluster.write_lstm_sweep("interrupted", 30));
    let mut victim = None;
    let mut checkpointed = 0;
    wait_until("two checkpoints", Duration::from_secs(120), || {
        let Some(results) = cluster.results(&interrupted) else {
            return false;
        };
        let trial = &results["trials"][0];
        assert_ne!(trial["state"], "succeeded", "finished too soon: {trial}");
        victim = trial["agent"].as_str().map(String::from);
        checkpointed = trial["checkpoint"]["epoch"].as_u64().unwrap_or(0);
        checkpointed >= 2
    });
    let victim = victim.expect("the trial's agent");
    let reference = cluster.submit(&cluster.write_lstm_sweep("reference", 30));
    let index = cluster
        .agents
        .iter()
        .position(|agent| agent.name == victim)
        .expect("the victim agent");
    if let Some(mut process) = cluster.agents[index].process.take() {
        process.kill();
    }
    let survivor = if victim == "a0" { "a1" } else { "a0" };
    let resumed = wait_completed(&cluster, &interrupted, Duration::from_secs(240));
    let straight = wait_completed(&cluster, &reference, Duration::from_secs(240));
    let (resumed, straight) = (&resumed["trials"][0], &straight["trials"][0]);
    assert_eq!(resumed["state"], "succeeded", "{resumed}");
    assert_eq!(resumed["agent"], survivor, "{resumed}");
    assert_eq!(
        resumed["failures"], 0,
        "agent loss spends no retry: {resumed}"
    );
    let attempt = resumed["attempt"].as_u64().expect("attempt");
    assert!(attempt >= 1, "{resumed}");
    assert_eq!(resumed["checkpoint"]["attempt"], attempt, "{resumed}");
    assert_eq!(resumed["checkpoint"]["epoch"], 30, "{resumed}");
    // The survivor resumed attempt 0's checkpoint, at or after the one seen before the kill.
    let log = log_of(&cluster, &format!("agent-{survivor}"));
    let line = log
        .lines()
        .find(|line| line.contains("resuming from") && line.contains("attempt 0"))
        .unwrap_or_else(|| panic!("{survivor} did not resume attempt 0's checkpoint:\n{log}"));
    let done: u64 = line
        .split(" epochs done")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no epoch count in {line:?}"));
    assert!(
        done >= checkpointed,
        "resumed from epoch {done}, but epoch {checkpointed} had been checkpointed: {line}"
    );
    for (name, value) in straight["metrics"].as_object().expect("metrics") {
        if name != "samples_per_second" {
            assert_eq!(&resumed["metrics"][name], value, "{name}");
        }
    }
}

/// Acceptance: an agent paused (SIGSTOP) past its checkpoint lease while a new attempt
/// resumes the trial on another agent, then resumed. The trial's `latest` pointer in etcd
/// never moves backwards and, once the new attempt has moved it, never points at the stale
/// attempt's objects again; the trial completes once, on the new attempt.
#[test]
fn an_agent_paused_past_its_checkpoint_lease_never_moves_the_pointer_back() {
    let mut cluster = Cluster::new(1, 1, TTL);
    cluster.start_coordinator(0);
    cluster.wait_for_leader(0, Duration::from_secs(30));
    for name in ["a0", "a1"] {
        cluster.start_agent_with(name, 1, &["--device", "cpu"]);
    }
    cluster.wait_for_agents(2, Duration::from_secs(30));
    let sweep = cluster.submit(&cluster.write_lstm_sweep("paused-agent", 60));
    let mut victim = None;
    wait_until("two checkpoints", Duration::from_secs(120), || {
        let Some(results) = cluster.results(&sweep) else {
            return false;
        };
        let trial = &results["trials"][0];
        assert_ne!(trial["state"], "succeeded", "finished too soon: {trial}");
        victim = trial["agent"].as_str().map(String::from);
        trial["checkpoint"]["epoch"].as_u64().unwrap_or(0) >= 2
    });
    let victim = victim.expect("the trial's agent");
    let index = cluster
        .agents
        .iter()
        .position(|agent| agent.name == victim)
        .expect("the victim agent");
    cluster.agents[index]
        .process
        .as_ref()
        .expect("running")
        .pause();
    // The coordinator declares it lost, the other agent takes the lease once it expired, and
    // its attempt publishes a checkpoint of its own.
    wait_until(
        "the new attempt to publish a checkpoint",
        Duration::from_secs(60),
        || {
            cluster.results(&sweep).is_some_and(|results| {
                let trial = &results["trials"][0];
                trial["attempt"].as_u64().unwrap_or(0) >= 1
                    && trial["checkpoint"]["attempt"] == trial["attempt"]
            })
        },
    );
    cluster.agents[index]
        .process
        .as_ref()
        .expect("running")
        .resume();
    let results = wait_completed(&cluster, &sweep, Duration::from_secs(240));
    let trial = &results["trials"][0];
    assert_eq!(trial["state"], "succeeded", "{trial}");
    assert_ne!(trial["agent"], victim.as_str(), "{trial}");
    assert_eq!(trial["failures"], 0, "{trial}");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let history = runtime.block_on(history(
        cluster.etcd(),
        "/flotilla/v1/checkpoints/s1-t0/latest",
    ));
    let pointers: Vec<Value> = history
        .iter()
        .filter(|event| event.put)
        .map(|event| serde_json::from_slice(&event.value).expect("a JSON checkpoint pointer"))
        .collect();
    assert!(pointers.len() >= 3, "{pointers:?}");
    let mut newest_attempt = 0;
    let mut previous: Option<(u64, u64)> = None;
    for pointer in &pointers {
        let attempt = pointer["attempt"].as_u64().expect("attempt");
        let step = pointer["step"].as_u64().expect("step");
        assert!(
            attempt >= newest_attempt,
            "the pointer went back to attempt {attempt} after attempt {newest_attempt}: {pointers:?}"
        );
        newest_attempt = attempt;
        if let Some(previous) = previous {
            assert!(
                (attempt, step) > previous,
                "the pointer moved backwards to {pointer} from {previous:?}"
            );
        }
        previous = Some((attempt, step));
    }
    assert!(newest_attempt >= 1, "{pointers:?}");
    assert_eq!(
        pointers.last().expect("a pointer")["epoch"],
        60,
        "{pointers:?}"
    );
    let log = log_of(&cluster, &format!("agent-{victim}"));
    eprintln!(
        "stale attempt refused a pointer move after resuming: {}",
        log.contains("checkpoint not published")
    );
}

/// Acceptance (rollouts survive failover): model versions and a paused canary rollout are in
/// etcd; the leader is killed, and the new leader shows the same versions and the rollout
/// with its decisions, and continues it (resume, then an operator's abort, both stored).
#[test]
fn model_versions_and_a_rollout_survive_a_leader_failover() {
    let mut cluster = Cluster::new(1, 2, Duration::from_secs(3));
    cluster.start_coordinator(0);
    let (leader, epoch) = cluster.wait_for_leader(0, Duration::from_secs(30));
    cluster.start_coordinator(1);
    cluster.start_agent_with("a0", 1, &["--device", "cpu"]);
    cluster.wait_for_agents(1, Duration::from_secs(30));
    let file = cluster.write_lstm_sweep("model", 2);
    let sweep = cluster.submit(&file);
    wait_completed(&cluster, &sweep, Duration::from_secs(120));
    let out = cluster.flotilla_ok(&[
        "model",
        "register",
        "--from",
        &sweep,
        "--name",
        "churn",
        "--stage",
        "production",
    ]);
    assert!(out.contains("churn@1.0.0 (production)"), "{out}");
    let out = cluster.flotilla_ok(&["model", "register", "--from", &sweep, "--name", "churn"]);
    assert!(out.contains("churn@1.1.0 (staging)"), "{out}");
    cluster.flotilla_ok(&["rollout", "start", "churn@1.1.0"]);
    let out = cluster.flotilla_ok(&["rollout", "pause", "churn"]);
    assert!(out.contains("paused"), "{out}");

    cluster.kill_coordinator(leader);
    cluster.wait_for_leader(epoch, Duration::from_secs(30));
    let models = cluster.flotilla_ok(&["model", "list", "churn"]);
    assert!(
        models.contains("1.0.0") && models.contains("production") && models.contains("1.1.0"),
        "{models}"
    );
    let status = cluster.flotilla_ok(&["rollout", "status", "churn"]);
    assert!(
        status.contains("1.0.0 → 1.1.0 — paused") && status.contains("paused by an operator"),
        "{status}"
    );
    let out = cluster.flotilla_ok(&["rollout", "resume", "churn"]);
    assert!(out.contains("— running"), "{out}");
    let out = cluster.flotilla_ok(&["rollout", "abort", "churn"]);
    assert!(
        out.contains("— aborted") && out.contains("canary at 0.0%"),
        "{out}"
    );
    let models = cluster.flotilla_ok(&["model", "list", "churn", "--json"]);
    let models: Value = serde_json::from_str(&models).expect("models JSON");
    let stages: Vec<&str> = models
        .as_array()
        .expect("array")
        .iter()
        .map(|model| model["stage"].as_str().expect("stage"))
        .collect();
    assert_eq!(stages, ["Production", "Staging"]);
}

/// Acceptance (failure isolation): one sweep's actor fails (the coordinator's test-only fault
/// hook), and only that sweep is stopped and stored failed with the reason; the other sweep
/// runs on under the same leader, then through a leader kill, to completion with every trial
/// once, while the failed sweep stays failed under the new leader instead of failing again.
#[cfg(feature = "fault-injection")]
#[test]
fn a_failing_sweep_fails_alone_and_stays_failed_across_a_failover() {
    let mut cluster = Cluster::new(1, 3, TTL);
    cluster.coordinator_env = vec![("FLOTILLA_FAULT_FAIL_SWEEP".into(), "doomed".into())];
    for index in 0..3 {
        cluster.start_coordinator(index);
    }
    let (_, epoch) = cluster.wait_for_leader(0, Duration::from_secs(30));
    for name in ["a0", "a1"] {
        cluster.start_agent(name, 2);
    }
    cluster.wait_for_agents(2, Duration::from_secs(30));
    let doomed = cluster.write_logged_sweep("doomed", 40, 2, "0.25");
    let doomed = cluster.submit(&doomed);
    let healthy = cluster.write_logged_sweep("healthy", 80, 2, "0.25");
    let healthy = cluster.submit(&healthy);
    wait_until("the doomed sweep to fail", Duration::from_secs(60), || {
        cluster
            .progress(&doomed)
            .is_some_and(|(state, _)| state == "Failed")
    });
    // The leader did not stop for it: same epoch, and the other sweep makes progress.
    let (leader, still) = cluster.wait_for_leader(0, Duration::from_secs(30));
    assert_eq!(still, epoch, "the leader kept leading");
    let before = cluster.progress(&healthy).map_or(0, |(_, done)| done);
    wait_until(
        "progress of the healthy sweep",
        Duration::from_secs(60),
        || {
            cluster
                .progress(&healthy)
                .is_some_and(|(_, done)| done >= before + 4)
        },
    );

    cluster.kill_coordinator(leader);
    cluster.wait_for_leader(epoch, Duration::from_secs(30));
    let results = wait_completed(&cluster, &healthy, Duration::from_secs(180));
    assert_eq!(succeeded_params(&results).len(), 80);
    assert_no_trial_ran_twice_at_once(&run_events(&cluster.path("healthy.runs")));
    let failed = cluster
        .results(&doomed)
        .expect("the failed sweep's results");
    assert_eq!(failed["sweep"]["state"], "Failed", "{failed:#}");
    assert!(
        failed["sweep"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("injected fault")),
        "{failed:#}"
    );
    let unfinished = failed["trials"]
        .as_array()
        .expect("trials")
        .iter()
        .filter(|trial| trial["state"] == "running" || trial["state"] == "pending")
        .count();
    assert_eq!(unfinished, 0, "the failed sweep runs nothing: {failed:#}");
}

/// Bounded state on etcd: a settled sweep moves to the archive (the cluster's S3 bucket,
/// moto here, which every coordinator reads) after its retention, and its keys leave etcd. A
/// new leader, which loads no settled sweep's trials, still lists the archived sweep and
/// returns its results from the archive, and hands out a new id to the next sweep.
#[test]
fn a_settled_sweep_leaves_etcd_for_the_archive_and_a_new_leader_still_answers() {
    let mut cluster = Cluster::new(1, 2, TTL);
    let moto = Moto::start(&cluster.path("moto.log"));
    moto.create_bucket("flotilla-archive");
    cluster.coordinator_env = moto.environment();
    cluster.coordinator_args = vec![
        "--archive".into(),
        "s3://flotilla-archive/cluster".into(),
        "--retain-finished".into(),
        "2s".into(),
    ];
    for index in 0..2 {
        cluster.start_coordinator(index);
    }
    let (leader, epoch) = cluster.wait_for_leader(0, Duration::from_secs(30));
    cluster.start_agent("a0", 2);
    cluster.wait_for_agents(1, Duration::from_secs(30));
    let file = cluster.write_logged_sweep("kept", 6, 2, "0.1");
    let sweep = cluster.submit(&file);
    let results = wait_completed(&cluster, &sweep, Duration::from_secs(120));
    assert_eq!(succeeded_params(&results).len(), 6);
    let id: u64 = sweep.trim_start_matches('s').parse().expect("a sweep id");
    let summary = format!("cluster/archive/sweeps/{id:020}.summary");
    wait_until("the sweep to be archived", Duration::from_secs(60), || {
        moto.keys("flotilla-archive", "cluster/").contains(&summary)
    });
    let digits = format!("{id:020}");
    wait_until("its keys to leave etcd", Duration::from_secs(30), || {
        let output = cluster
            .etcd()
            .etcdctl()
            .args(["get", "--prefix", "--keys-only", "/flotilla"])
            .output()
            .expect("etcdctl get");
        assert!(output.status.success(), "etcdctl: {output:?}");
        !String::from_utf8_lossy(&output.stdout).contains(&digits)
    });

    cluster.kill_coordinator(leader);
    cluster.wait_for_leader(epoch, Duration::from_secs(30));
    let after = cluster
        .results(&sweep)
        .expect("the archived sweep's results from the new leader");
    assert_eq!(after["sweep"], results["sweep"], "{after:#}");
    assert_eq!(after["trials"], results["trials"], "{after:#}");
    let listed = cluster.flotilla_ok(&["sweep", "list"]);
    assert!(
        listed.contains("kept"),
        "the archived sweep is listed: {listed}"
    );
    let next = cluster.write_logged_sweep("next", 2, 1, "0.1");
    let next = cluster.submit(&next);
    let next_id: u64 = next.trim_start_matches('s').parse().expect("a sweep id");
    assert!(next_id > id, "{next} reuses no archived id ({sweep})");
}

/// The value of an unlabelled or labelled series in a `/metrics` text, if present.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The leader owns etcd's upkeep: it exports each member's database size against the quota,
/// compacts history (an old revision can no longer be read) and, with the root identity
/// given for it, defragments the member.
#[test]
fn the_leader_compacts_and_defragments_etcd_and_reports_its_size() {
    let mut cluster = Cluster::new(1, 1, TTL);
    let root = cluster.etcd().pki.join("root.pem");
    cluster.coordinator_args = vec![
        "--etcd-status-every".into(),
        "500ms".into(),
        "--etcd-compact-every".into(),
        "1s".into(),
        "--etcd-defrag-every".into(),
        "2s".into(),
        "--etcd-quota-bytes".into(),
        "1073741824".into(),
        "--etcd-maintenance-cert".into(),
        root.display().to_string(),
    ];
    cluster.start_coordinator(0);
    cluster.wait_for_leader(0, Duration::from_secs(30));
    let metrics = cluster.coordinators[0].metrics.clone();
    let scrape = || {
        flotilla_harness::http_get(&metrics, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape();
        let counted = |operation: &str| {
            let name = format!(
                r#"flotilla_etcd_maintenance_total{{operation="{operation}",result="ok"}}"#
            );
            series(&text, &name).is_some_and(|count| count >= 1.0)
        };
        if counted("compact") && counted("defragment") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no compaction and defragmentation within 30 s:\n{text}\n{}",
            log_of(&cluster, "c0")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = scrape();
    assert_eq!(
        series(&text, "flotilla_etcd_quota_bytes"),
        Some(1073741824.0)
    );
    let size = series(&text, r#"flotilla_etcd_db_size_bytes{member="etcd0"}"#);
    assert!(size.is_some_and(|size| size > 0.0), "{text}");
    assert!(
        !text.contains(r#"result="error""#),
        "no maintenance step failed: {text}"
    );
    let old = cluster
        .etcd()
        .etcdctl()
        .args(["get", "--prefix", "/flotilla", "--rev", "1"])
        .output()
        .expect("etcdctl get");
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("compacted"),
        "revision 1 was compacted away: {old:?}"
    );
}
