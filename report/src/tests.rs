use super::*;
use flotilla_protocol::messages::{
    LearningCurve, PhaseSummary, SweepState, SweepSummary, TrialCounts,
};
use flotilla_protocol::{SweepId, TrialId};

const SPEC: &str = r#"
name = "report-test"
constraints = ["class_1_accuracy >= 0.30"]

[objective]
metric = "accuracy"
direction = "maximize"

[space.learning_rate]
type = "float"
low = 0.0005
high = 0.02
log = true

[space.hidden_size]
type = "categorical"
choices = [16, 32, 64]

[budget]
max_trials = 12

[trial]
command = "true"
metrics = ["accuracy", "class_1_accuracy", "class_0_accuracy"]
"#;

fn trial(number: u32, rate: f64, hidden: i64) -> TrialRecord {
    // Accuracy depends on the hidden size only; the minority class fails for size 16.
    let accuracy = 0.5 + hidden as f64 / 200.0 + number as f64 * 1e-4;
    let minority = if hidden == 16 { 0.1 } else { 0.5 };
    let mut metrics = BTreeMap::new();
    metrics.insert("accuracy".to_string(), accuracy);
    metrics.insert("class_0_accuracy".to_string(), 0.9);
    metrics.insert("class_1_accuracy".to_string(), minority);
    let mut params = BTreeMap::new();
    params.insert("learning_rate".to_string(), ParamValue::Float(rate));
    params.insert("hidden_size".to_string(), ParamValue::Int(hidden));
    TrialRecord {
        id: TrialId {
            sweep: SweepId(9),
            number,
        },
        attempt: 0,
        params,
        state: TrialState::Succeeded,
        feasible: minority >= 0.3,
        objective: Some(accuracy),
        metrics,
        agent: None,
        failures: 0,
        started_ms: None,
        finished_ms: None,
        duration_ms: Some(1500),
        message: None,
        dispatch_latency_us: None,
        checkpoint: None,
        phase: 0,
        rungs: Vec::new(),
        reschedules: 0,
        lost_on: Vec::new(),
        seq: 0,
    }
}

fn fixture() -> (SweepDetail, Vec<TrialRecord>) {
    let spec = SweepSpec::from_toml(SPEC, "report-test.toml").expect("a valid spec");
    let mut trials: Vec<TrialRecord> = (0..12)
        .map(|number| {
            trial(
                number,
                0.001 * f64::from(number + 1),
                [16, 32, 64][number as usize % 3],
            )
        })
        .collect();
    trials[11].state = TrialState::Failed;
    trials[11].objective = None;
    trials[11].message = Some("exit status 1 | crashed".into());
    let curves = (0..11)
        .map(|number| LearningCurve {
            trial: number,
            metric: "accuracy".into(),
            points: (1..=4).map(|step| (step, 0.1 * step as f64)).collect(),
        })
        .collect();
    let summary = SweepSummary {
        id: SweepId(9),
        name: "report-test".into(),
        state: SweepState::Completed,
        objective_metric: "accuracy".into(),
        direction: Direction::Maximize,
        max_trials: 12,
        counts: TrialCounts {
            succeeded: 11,
            failed: 1,
            ..TrialCounts::default()
        },
        best: None,
        created_ms: 1_000,
        finished_ms: Some(61_000),
        phases: vec![PhaseSummary {
            name: "main".into(),
            max_trials: 12,
            trials: 12,
            done: true,
            winner: Some(11),
        }],
        message: None,
    };
    (
        SweepDetail {
            summary,
            spec,
            curves,
        },
        trials,
    )
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn the_html_report_has_every_trial_and_every_plot() {
    let (detail, trials) = fixture();
    let report = Report {
        detail: &detail,
        trials: &trials,
    };
    let html = report.html();
    // Every trial is a row of the ranked table.
    let table = &html[html
        .find("<table class=\"trials\">")
        .expect("the trials table")..];
    let table = &table[..table.find("</table>").expect("the table ends")];
    assert_eq!(count(table, "<tr>"), 1 + trials.len());
    for trial in &trials {
        assert!(
            table.contains(&format!("<td>{}</td>", trial.id)),
            "{}",
            trial.id
        );
    }
    // The winner is the most accurate feasible trial (size 64, newest): trial 8.
    assert!(html.contains("Winner: trial s9-t8"), "{html}");
    let first_row = &table[table.find("<tbody>").expect("a body")..];
    assert!(first_row.starts_with("<tbody><tr><td>1</td><td>s9-t8</td>"));
    // Four inline SVG plots, each with a mark per trial that has data.
    for id in ["history", "parallel", "importance", "curves"] {
        assert!(
            html.contains(&format!("data-plot=\"{id}\"")),
            "no {id} plot"
        );
    }
    let plot = |id: &str| {
        let start = html.find(&format!("data-plot=\"{id}\"")).expect("the plot");
        let end = start + html[start..].find("</svg>").expect("the plot ends");
        html[start..end].to_string()
    };
    assert_eq!(count(&plot("history"), "<circle data-trial="), 11);
    assert_eq!(count(&plot("parallel"), "<polyline data-trial="), 11);
    assert_eq!(count(&plot("curves"), "<polyline data-trial="), 11);
    assert!(plot("importance").contains("data-param=\"hidden_size\""));
    // Trial numbers (0..10) and steps (1..4) are ticked at whole numbers only.
    let tick_labels = |svg: &str, class: &str| -> Vec<String> {
        svg.split(&format!("class=\"{class}\""))
            .skip(1)
            .filter_map(|rest| rest.split('>').nth(1)?.split('<').next())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        tick_labels(&plot("history"), "tick x"),
        ["0", "2", "4", "6", "8", "10"]
    );
    assert_eq!(tick_labels(&plot("curves"), "tick x"), ["1", "2", "3", "4"]);
    // Parallel coordinates carry values: each hidden size, the learning rate's lowest,
    // middle and highest values, round values of the objective.
    let values = tick_labels(&plot("parallel"), "axis-value");
    // (log scale: its middle is about 0.003).
    for expected in ["16", "32", "64", "0.001", "0.003", "0.012", "0.6"] {
        assert!(
            values.iter().any(|v| v == expected),
            "{expected} not in {values:?}"
        );
    }
    // Feasibility and per-class metrics.
    assert!(
        html.contains("class_1_accuracy &gt;= 0.3"),
        "constraint shown"
    );
    assert!(html.contains("7 of 11 succeeded trials meet every constraint"));
    assert!(html.contains("Per-class metrics of the winner (s9-t8)"));
    // Text from trials is escaped.
    assert!(html.contains("exit status 1 | crashed"));
    assert!(!html.contains("<script"));
}

#[test]
fn the_markdown_report_links_the_plots_and_lists_every_trial() {
    let (detail, trials) = fixture();
    let report = Report {
        detail: &detail,
        trials: &trials,
    };
    let markdown = report.markdown("report-plots");
    for id in ["history", "parallel", "importance", "curves"] {
        assert!(markdown.contains(&format!("(report-plots/{id}.svg)")));
    }
    for trial in &trials {
        assert!(markdown.contains(&format!("| {} |", trial.id)));
    }
    // A pipe in a message does not break the table.
    assert!(markdown.contains("exit status 1 \\| crashed"));
}

#[test]
fn importance_finds_the_parameter_that_matters() {
    let (detail, trials) = fixture();
    let importance = importance(&detail.spec, &trials);
    assert_eq!(importance[0].0, "hidden_size");
    assert!(importance[0].1 > 0.95, "{importance:?}");
    let rate = importance
        .iter()
        .find(|(name, _)| name == "learning_rate")
        .expect("learning_rate scored");
    assert!(rate.1 < importance[0].1);
}

#[test]
fn a_sweep_without_results_still_renders() {
    let (detail, mut trials) = fixture();
    for trial in &mut trials {
        trial.state = TrialState::Pending;
        trial.objective = None;
    }
    let detail = SweepDetail {
        curves: Vec::new(),
        ..detail
    };
    let report = Report {
        detail: &detail,
        trials: &trials,
    };
    let html = report.html();
    assert!(html.contains("No feasible trial succeeded."));
    assert_eq!(count(&html, "<svg"), 4);
}

#[test]
fn per_class_metrics_are_grouped_by_label() {
    let mut metrics = BTreeMap::new();
    metrics.insert("class_1_accuracy".to_string(), 0.5);
    metrics.insert("class_1_recall".to_string(), 0.4);
    metrics.insert("class_0_accuracy".to_string(), 0.9);
    metrics.insert("loss".to_string(), 0.2);
    let classes = per_class(&metrics);
    assert_eq!(classes.len(), 2);
    assert_eq!(classes["1"]["recall"], 0.4);
}

/// A sweep that trades accuracy against latency: the report names the front in a table and
/// draws it, front trials marked, over every succeeded trial; a single-objective sweep has no
/// front plot.
#[test]
fn a_multi_objective_report_draws_and_lists_the_pareto_front() {
    let (mut detail, mut trials) = fixture();
    assert!(
        Report {
            detail: &detail,
            trials: &trials,
        }
        .plot("front")
        .is_none()
    );
    detail.spec.trial.metrics.push("latency_ms".into());
    detail
        .spec
        .objective
        .also
        .push(flotilla_protocol::spec::Goal {
            metric: "latency_ms".into(),
            direction: Direction::Minimize,
        });
    // Latency grows with the hidden size: 16 is fast, 64 accurate. Among feasible trials
    // (sizes 32 and 64) the newest of each size is on the front, since accuracy rises with
    // the trial number and latency does not.
    for trial in &mut trials {
        let hidden = trial.params["hidden_size"].as_f64().expect("size");
        trial.metrics.insert("latency_ms".into(), hidden);
    }
    let report = Report {
        detail: &detail,
        trials: &trials,
    };
    let plot = report.plot("front").expect("a front plot").svg;
    assert_eq!(count(&plot, "<circle data-trial="), 11);
    assert_eq!(count(&plot, "data-front=\"true\""), 2);
    assert!(plot.contains("<circle data-trial=\"8\" data-front=\"true\""));
    assert!(plot.contains("<circle data-trial=\"10\" data-front=\"true\""));
    let html = report.html();
    assert!(html.contains("data-plot=\"front\""));
    assert!(html.contains("Pareto front"));
    let table = &html[html
        .find("<table class=\"front\">")
        .expect("the front table")..];
    let table = &table[..table.find("</table>").expect("the table ends")];
    assert_eq!(count(table, "<tr>"), 1 + 2);
    assert!(table.contains("latency_ms (min)"));
}
