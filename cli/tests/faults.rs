//! Trials that fail, hang or take their agent down, with real processes (a coordinator,
//! agents, `sh` commands):
//!
//! - a command that crashes every time with `max_retries = 2` fails after exactly three
//!   attempts;
//! - a command past its `timeout` is stopped with its whole process group and recorded as
//!   timed out;
//! - a command that SIGKILLs its agent on every start (the agents are restarted, as systemd
//!   would) fails after `max_reschedules` re-runs, naming the agents it took down, and an
//!   agent that lost its trials twice is cordoned automatically.

use std::time::{Duration, Instant};

use serde_json::Value;

use flotilla_harness::*;

/// A one-trial sweep running `script` under `sh -c`, with `extra` TOML appended.
fn one_trial_sweep(cluster: &Cluster, name: &str, script: &str, extra: &str) -> String {
    let path = cluster.path(&format!("{name}.toml"));
    let text = format!(
        r#"
name = "{name}"
[objective]
metric = "loss"
direction = "minimize"
[space.x]
type = "categorical"
choices = [1]
[algorithm]
name = "grid"
[budget]
max_trials = 1
[trial]
command = "sh"
args = ["-c", {script:?}]
metrics = ["loss"]
{extra}
"#
    );
    std::fs::write(&path, text).expect("write sweep");
    path.to_str().expect("utf-8").to_string()
}

fn only_trial(cluster: &Cluster, sweep: &str) -> Value {
    let results = cluster.expect_results(sweep);
    assert_eq!(results["sweep"]["state"], "Completed", "{results:#}");
    let trials = trials(&results);
    assert_eq!(trials.len(), 1, "{results:#}");
    trials[0].clone()
}

#[test]
fn a_crashing_trial_fails_after_exactly_its_retries_and_a_hung_one_at_its_timeout() {
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator(0);
    cluster.start_agent("agent-0", 2);
    cluster.wait_for_agents(1, Duration::from_secs(60));

    // Crashes on every attempt: 1 + max_retries attempts, then failed.
    let attempts = cluster.path("attempts.txt");
    let script = format!(
        "echo $FLOTILLA_ATTEMPT >> {}; echo 'no data' >&2; exit 3",
        attempts.display()
    );
    let crash = one_trial_sweep(&cluster, "crash", &script, "[retries]\nmax_retries = 2\n");
    // Sleeps past its timeout in two processes of its group.
    let hang = one_trial_sweep(
        &cluster,
        "hang",
        "sleep 617 & sleep 618; echo '@flotilla step=0 loss=1'",
        "timeout = \"2s\"\n[retries]\nmax_retries = 0\n",
    );
    cluster.flotilla_ok(&["sweep", "submit", &crash, "--watch"]);
    cluster.flotilla_ok(&["sweep", "submit", &hang, "--watch"]);

    let crashed = only_trial(&cluster, "s1");
    assert_eq!(crashed["state"], "failed", "{crashed:#}");
    assert_eq!(crashed["failures"], 3, "{crashed:#}");
    let tried = std::fs::read_to_string(&attempts).expect("attempts");
    assert_eq!(
        tried.lines().collect::<Vec<_>>(),
        vec!["0", "1", "2"],
        "exactly three attempts"
    );
    let message = crashed["message"].as_str().unwrap_or_default();
    assert!(message.contains("exited with code 3"), "{crashed:#}");

    let hung = only_trial(&cluster, "s2");
    assert_eq!(hung["state"], "failed", "{hung:#}");
    assert!(
        hung["message"]
            .as_str()
            .is_some_and(|message| message.contains("exceeded the trial timeout")),
        "recorded as timed out: {hung:#}"
    );
    wait_until(
        "the timed-out trial's process group to be gone",
        Duration::from_secs(10),
        || processes_with("sleep\u{0}617").is_empty() && processes_with("sleep\u{0}618").is_empty(),
    );
}

#[test]
fn a_trial_that_kills_its_agent_fails_after_max_reschedules_and_the_agent_is_cordoned() {
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator_with(0, &["--cordon-after-losses", "2"], &[]);
    let names = ["agent-0", "agent-1", "agent-2"];
    for name in names {
        cluster.start_agent(name, 1);
    }
    cluster.wait_for_agents(3, Duration::from_secs(60));
    // The trial's parent is its agent: SIGKILL it, every time.
    let poison = one_trial_sweep(
        &cluster,
        "poison",
        "kill -9 $PPID; sleep 30",
        "[retries]\nmax_retries = 5\nmax_reschedules = 2\n",
    );
    cluster.flotilla_ok(&["sweep", "submit", &poison]);
    // Killed agents come back, as a supervisor (systemd) would bring them.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let state = cluster.sweep_state("s1");
        if state["state"] == "Completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sweep did not end: {state:#}"
        );
        for index in 0..cluster.agents.len() {
            let exited = cluster.agents[index]
                .process
                .as_mut()
                .is_some_and(|process| !process.is_running());
            if exited {
                let agent = cluster.agents.remove(index);
                cluster.start_agent(&agent.name, 1);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let trial = only_trial(&cluster, "s1");
    assert_eq!(trial["state"], "failed", "{trial:#}");
    assert_eq!(trial["failures"], 0, "losses spend no retry: {trial:#}");
    let message = trial["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("lost 3 times") && message.contains("max_reschedules = 2"),
        "{message}"
    );
    let lost_on: Vec<String> = names
        .iter()
        .filter(|name| message.contains(*name))
        .map(|name| name.to_string())
        .collect();
    assert!(
        !lost_on.is_empty(),
        "the message names the agents: {message}"
    );

    // Every agent that lost it twice was cordoned (the agents list shows it draining).
    let twice: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| message.matches(name).count() >= 2)
        .collect();
    wait_until("the agents to be back", Duration::from_secs(30), || {
        let listed = cluster.flotilla_ok(&["cluster", "agents"]);
        names.iter().all(|name| {
            listed
                .lines()
                .any(|line| line.contains(name) && !line.contains("disconnected"))
        })
    });
    let listed = cluster.flotilla_ok(&["cluster", "agents"]);
    eprintln!("{message}\n{listed}");
    for name in &twice {
        let line = listed
            .lines()
            .find(|line| line.contains(name))
            .unwrap_or_default();
        assert!(line.contains("draining"), "{name} is cordoned: {listed}");
    }
    if !twice.is_empty() {
        let log = cluster.log("coordinator");
        assert!(log.contains("cordoned automatically"), "{log}");
    }
}

/// One sweep's actor fails (a fault injected in test builds): that sweep alone is stopped and
/// marked failed with the reason, the other sweep completes, and after the coordinator is
/// restarted on its state the failed sweep stays failed instead of failing again.
#[cfg(feature = "fault-injection")]
#[test]
fn a_sweep_whose_actor_fails_fails_alone_and_stays_failed() {
    let mut cluster = Cluster::standalone();
    cluster.start_coordinator_with(0, &[], &[("FLOTILLA_FAULT_FAIL_SWEEP", "doomed")]);
    cluster.start_agent("agent-0", 2);
    cluster.start_agent("agent-1", 2);
    cluster.wait_for_agents(2, Duration::from_secs(60));
    let doomed = cluster.write_sweep("doomed", 12, 2, "0.3");
    let healthy = cluster.write_sweep("healthy", 12, 2, "0.3");
    cluster.flotilla_ok(&["sweep", "submit", doomed.to_str().expect("utf-8")]);
    cluster.flotilla_ok(&["sweep", "submit", healthy.to_str().expect("utf-8")]);

    wait_until("the doomed sweep to fail", Duration::from_secs(60), || {
        cluster.sweep_state("s1")["state"] == "Failed"
    });
    let status = cluster.flotilla_ok(&["sweep", "status", "s1"]);
    assert!(
        status.contains("its actor failed") && status.contains("injected fault"),
        "{status}"
    );
    // The other sweep goes on under the same leader, to the end.
    let results = wait_completed_cli(&cluster, "s2");
    assert_all_succeeded_once(&results, 12);
    let failed = cluster.sweep_state("s1");
    assert_eq!(failed["counts"]["running"], 0, "{failed:#}");
    let log = cluster.log("coordinator");
    assert!(
        !log.contains("stopping so a restart resumes"),
        "the leader must not stop for one sweep: {log}"
    );

    // A restart reads the failed sweep back as failed; it does not fail again.
    cluster.terminate_coordinator(0);
    cluster.start_coordinator_with(0, &[], &[("FLOTILLA_FAULT_FAIL_SWEEP", "doomed")]);
    cluster.wait_for_agents(2, Duration::from_secs(60));
    let again = cluster.sweep_state("s1");
    assert_eq!(again["state"], "Failed", "{again:#}");
    assert!(
        again["message"]
            .as_str()
            .is_some_and(|message| message.contains("injected fault")),
        "{again:#}"
    );
    assert_eq!(cluster.sweep_state("s2")["state"], "Completed");
}

#[cfg(feature = "fault-injection")]
fn wait_completed_cli(cluster: &Cluster, sweep: &str) -> Value {
    let mut last = Value::Null;
    wait_until(
        &format!("{sweep} to complete"),
        Duration::from_secs(120),
        || {
            last = cluster.expect_results(sweep);
            last["sweep"]["state"] == "Completed"
        },
    );
    last
}
