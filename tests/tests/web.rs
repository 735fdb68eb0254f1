//! The coordinator's live web view in headless Chromium (Debian's `chromium`), against a
//! running cluster: the page loads, runs its JavaScript against the API, and shows the
//! sweep's trials (sortable), its plots and the agents. A screenshot is kept as an artifact.
//! The coordinator runs with `--http-tokens`, as a deployment that exposes the view should:
//! the page gets its token from `?token=`, and without one shows a form instead of data.

use std::time::Duration;

use flotilla_harness::{Cluster, chromium, flotilla_bin, http_get_with, wait_until};

/// A token with `scope` added to the token file at `path`.
fn create_token(path: &std::path::Path, name: &str, scope: &str) -> String {
    let output = std::process::Command::new(flotilla_bin())
        .args(["certs", "token", "create", name, "--scope", scope, "--file"])
        .arg(path)
        .output()
        .expect("run certs token create");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The page's DOM after its scripts ran.
fn rendered(url: &str) -> String {
    let output = chromium(&["--virtual-time-budget=8000", "--dump-dom", url]);
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The trial ids of the trials table's rows, top to bottom.
fn trial_rows(dom: &str) -> Vec<String> {
    let Some(start) = dom.find("id=\"trials\"") else {
        return Vec::new();
    };
    dom[start..]
        .split("<tr data-trial=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_web_view_shows_the_sweeps_trials_plots_and_agents_in_chromium() {
    let mut cluster = Cluster::new(1, 1, Duration::from_secs(2));
    let tokens = cluster.path("http-tokens");
    let token = create_token(&tokens, "viewer", "read");
    let feedback_only = create_token(&tokens, "labeller", "feedback");
    cluster.coordinator_args = vec!["--http-tokens".into(), tokens.display().to_string()];
    cluster.start_coordinator(0);
    cluster.wait_for_leader(0, Duration::from_secs(30));
    let tokens_arg = tokens.display().to_string();
    for name in ["a0", "a1"] {
        cluster.start_agent_with(name, 2, &["--http-tokens", &tokens_arg]);
    }
    cluster.wait_for_agents(2, Duration::from_secs(30));
    let file = cluster.write_logged_sweep("viewed", 10, 4, "0.1");
    let sweep = cluster.submit(&file);
    wait_until("the sweep to complete", Duration::from_secs(60), || {
        cluster
            .progress(&sweep)
            .is_some_and(|(state, _)| state == "Completed")
    });
    let web = cluster.coordinators[0].metrics.clone();
    let http_get = |path: &str| http_get_with(&web, path, Some(&token));
    let (status, _) = http_get_with(&web, "/", None).expect("the page");
    assert_eq!(status, 200, "the page itself holds no data and is open");

    // Without a token (or with one of another scope) the data and metrics are refused, and
    // the page asks for a token; probes stay open.
    for path in ["/api/sweeps", "/api/agents", "/metrics"] {
        let (status, body) = http_get_with(&web, path, None).expect("a refusal");
        assert_eq!(status, 401, "{path}: {body}");
        assert!(
            body.contains("needs a bearer token with the read scope"),
            "{body}"
        );
        let (status, body) = http_get_with(&web, path, Some(&feedback_only)).expect("a refusal");
        assert_eq!(status, 403, "{path}: {body}");
        let (status, body) = http_get_with(&web, path, Some("flt_guessed")).expect("a refusal");
        assert_eq!(status, 401, "{path}: {body}");
    }
    let (status, metrics) = http_get("/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("flotilla_"), "{metrics}");
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(http_get_with(&web, probe, None).expect("a probe").0, 200);
    }
    // Agents started with --http-tokens gate their /metrics the same way.
    let agent = cluster.agents[0].metrics.clone();
    let (status, body) = http_get_with(&agent, "/metrics", None).expect("a refusal");
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_get_with(&agent, "/metrics", Some(&token)).expect("metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("flotilla_agent_"), "{body}");
    assert_eq!(
        http_get_with(&agent, "/healthz", None).expect("a probe").0,
        200
    );
    let locked = rendered(&format!("http://{web}/"));
    assert!(locked.contains("id=\"token-form\""), "{locked}");
    assert!(!locked.contains("data-sweep="), "{locked}");

    // Home, with the token: the sweep and both agents.
    let home = rendered(&format!("http://{web}/?token={token}"));
    assert!(
        home.contains("data-ready=\"1\""),
        "the page did not load: {home}"
    );
    assert!(home.contains(&format!("data-sweep=\"{sweep}\"")), "{home}");
    for agent in ["a0", "a1"] {
        assert!(home.contains(&format!("data-agent=\"{agent}\"")), "{home}");
    }

    // The sweep: every trial is a row, ranked by the objective (minimized) by default.
    let page = rendered(&format!("http://{web}/?token={token}#/sweep/{sweep}"));
    assert!(page.contains("id=\"sweep-title\""), "{page}");
    let rows = trial_rows(&page);
    assert_eq!(rows.len(), 10, "{page}");
    let results = cluster.results(&sweep).expect("results");
    let mut expected: Vec<(f64, String)> = results["trials"]
        .as_array()
        .expect("trials")
        .iter()
        .map(|trial| {
            (
                trial["objective"].as_f64().expect("an objective"),
                trial["id"].as_str().expect("an id").to_string(),
            )
        })
        .collect();
    expected.sort_by(|left, right| left.0.total_cmp(&right.0));
    assert_eq!(
        rows,
        expected.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
    );
    let mut drawn = std::collections::BTreeMap::new();
    for plot in ["history", "parallel", "importance", "curves"] {
        assert!(
            page.contains(&format!("data-plot=\"{plot}\"")),
            "no {plot} plot"
        );
        let (status, svg) =
            http_get(&format!("/api/sweeps/{sweep}/plots/{plot}.svg")).expect("a plot");
        assert_eq!(status, 200);
        assert!(svg.starts_with("<svg"), "{svg}");
        drawn.insert(plot, svg);
    }

    // The plots the page shows (as images of these SVGs, in the screenshot below): trial
    // numbers ticked at whole numbers only, and values on the parallel coordinates' axes.
    let history = &drawn["history"];
    let trial_ticks: Vec<&str> = history
        .split("class=\"tick x\"")
        .skip(1)
        .filter_map(|rest| rest.split('>').nth(1)?.split('<').next())
        .collect();
    assert!(
        trial_ticks.len() >= 2 && trial_ticks.iter().all(|tick| tick.parse::<u32>().is_ok()),
        "{trial_ticks:?}"
    );
    let parallel = &drawn["parallel"];
    assert!(
        parallel.matches("class=\"axis-value\"").count() >= 4,
        "{parallel}"
    );

    let (status, body) =
        http_get(&format!("/api/sweeps/{sweep}/plots/nope.svg")).expect("an unknown plot");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("history, parallel, importance, curves"),
        "{body}"
    );

    // The Markdown report from the CLI: every trial, and the four plots as SVG files.
    let markdown = cluster.path("viewed-report.md");
    cluster.flotilla_ok(&[
        "sweep",
        "report",
        &sweep,
        "--format",
        "md",
        "--out",
        markdown.to_str().expect("UTF-8"),
    ]);
    let text = std::fs::read_to_string(&markdown).expect("the Markdown report");
    for id in &rows {
        assert!(text.contains(&format!("| {id} |")), "{id} missing");
    }
    for plot in ["history", "parallel", "importance", "curves"] {
        assert!(text.contains(&format!("(viewed-report-plots/{plot}.svg)")));
        let svg = std::fs::read_to_string(cluster.path(&format!("viewed-report-plots/{plot}.svg")))
            .expect("a plot file");
        assert!(svg.starts_with("<svg"));
    }

    // Sorted by another column (the same sort a click on its header applies).
    let by_number = trial_rows(&rendered(&format!(
        "http://{web}/?token={token}#/sweep/{sweep}?sort=number&desc=1"
    )));
    let mut numbers: Vec<u32> = by_number
        .iter()
        .map(|id| {
            id.rsplit("-t")
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a number")
        })
        .collect();
    assert_eq!(numbers.len(), 10);
    let descending = numbers.clone();
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(descending, numbers);

    // A screenshot of the sweep page, kept as an artifact.
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).expect("an artifact directory");
    let shot = artifacts.join("web-view.png");
    let _ = std::fs::remove_file(&shot);
    let output = chromium(&[
        "--virtual-time-budget=8000",
        "--window-size=1400,1500",
        &format!("--screenshot={}", shot.display()),
        &format!("http://{web}/?token={token}#/sweep/{sweep}"),
    ]);
    assert!(output.status.success());
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(png.len() > 20_000, "a blank page? {} bytes", png.len());
    println!("web view screenshot: {}", shot.display());
}
