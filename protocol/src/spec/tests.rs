use std::time::Duration;

use super::*;
use crate::ParamValue;
use crate::messages::{TrialRecord, TrialState};

const GOOD: &str = r#"
name = "quick"
constraints = ["accuracy >= 0.3"]

[objective]
metric = "loss"
direction = "minimize"

[space.x]
type = "float"
low = -5.0
high = 5.0

[space.lr]
type = "float"
low = 1e-4
high = 1e-1
log = true

[space.layers]
type = "int"
low = 1
high = 4

[space.opt]
type = "categorical"
choices = ["adam", "sgd"]

[budget]
max_trials = 10
max_parallel = 2
max_duration = "10m"

[trial]
command = "python3"
args = ["train.py", "--x={x}"]
metrics = ["loss", "accuracy"]
"#;

fn problems_of(text: &str) -> Vec<FieldProblem> {
    match SweepSpec::from_toml(text, "test.toml") {
        Err(SpecError::Invalid { problems, .. }) => problems,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

#[test]
fn scheduling_share_and_team_are_read_and_checked() {
    let spec = SweepSpec::from_toml(GOOD, "test.toml").expect("valid");
    assert_eq!(spec.scheduling, Scheduling::default());
    assert_eq!(spec.scheduling.share, 1.0);
    let text = format!("{GOOD}\n[scheduling]\nshare = 2.5\nteam = \"vision\"\n");
    let spec = SweepSpec::from_toml(&text, "test.toml").expect("valid");
    assert_eq!(spec.scheduling.share, 2.5);
    assert_eq!(spec.scheduling.team.as_deref(), Some("vision"));
    let back = SweepSpec::from_toml(&spec.to_toml(), "round trip").expect("valid");
    assert_eq!(back, spec);
    for (section, path) in [
        ("share = 0", "scheduling.share"),
        ("share = -1.0", "scheduling.share"),
        ("share = 1e9", "scheduling.share"),
        ("share = nan", "scheduling.share"),
        ("team = \"\"", "scheduling.team"),
        ("team = \"a team\"", "scheduling.team"),
    ] {
        let problems = problems_of(&format!("{GOOD}\n[scheduling]\n{section}\n"));
        assert!(
            problems.iter().any(|p| p.path == path),
            "{section}: {problems:?}"
        );
    }
    let error = SweepSpec::from_toml(&format!("{GOOD}\n[scheduling]\npriority = 3\n"), "t")
        .expect_err("unknown field");
    assert!(error.to_string().contains("priority"), "{error}");
}

#[test]
fn several_objectives_are_read_checked_and_give_a_front() {
    let text = GOOD.replace(
        "direction = \"minimize\"\n",
        "direction = \"minimize\"\n[[objective.also]]\nmetric = \"accuracy\"\ndirection = \"maximize\"\n",
    );
    let spec = SweepSpec::from_toml(&text, "test.toml").expect("valid");
    assert!(spec.objective.is_multi());
    assert_eq!(
        spec.objective.goals().collect::<Vec<_>>(),
        vec![
            ("loss", Direction::Minimize),
            ("accuracy", Direction::Maximize)
        ]
    );
    // Unknown, malformed and repeated metrics are named by their place.
    let bad = GOOD.replace(
        "direction = \"minimize\"\n",
        "direction = \"minimize\"\nalso = [{ metric = \"latency\", direction = \"minimize\" }, { metric = \"loss\", direction = \"maximize\" }, { metric = \"no good\", direction = \"minimize\" }]\n",
    );
    let problems = problems_of(&bad);
    let of = |path: &str| {
        problems
            .iter()
            .find(|problem| problem.path == path)
            .map(|problem| problem.message.clone())
            .unwrap_or_else(|| panic!("no problem at {path}: {problems:?}"))
    };
    assert!(of("objective.also[0].metric").contains("'latency' is not among the trial's metrics"));
    assert!(of("objective.also[1].metric").contains("already an objective"));
    assert!(of("objective.also[2].metric").contains("not a metric name"));
    let typo = GOOD.replace(
        "direction = \"minimize\"\n",
        "direction = \"minimize\"\nalso = [{ metric = \"accuracy\", direction = \"up\" }]\n",
    );
    let error = SweepSpec::from_toml(&typo, "test.toml").expect_err("a bad direction");
    assert!(error.to_string().contains("up"), "{error}");

    // The front: trials 0 (best loss) and 2 (best accuracy) trade off; 1 is dominated by
    // 0, 3 failed, 4 is infeasible, 5 never reported accuracy, 6 ties 0 exactly.
    let trial =
        |number: u32, state: TrialState, loss: f64, accuracy: Option<f64>, feasible| TrialRecord {
            state,
            objective: Some(loss),
            feasible,
            metrics: accuracy
                .map(|accuracy| ("accuracy".to_string(), accuracy))
                .into_iter()
                .collect(),
            ..TrialRecord::pending(
                crate::TrialId {
                    sweep: crate::SweepId(1),
                    number,
                },
                BTreeMap::new(),
                0,
            )
        };
    let trials = vec![
        trial(0, TrialState::Succeeded, 0.1, Some(0.8), true),
        trial(1, TrialState::Succeeded, 0.2, Some(0.7), true),
        trial(2, TrialState::Succeeded, 0.3, Some(0.9), true),
        trial(3, TrialState::Failed, 0.0, Some(1.0), true),
        trial(4, TrialState::Succeeded, 0.0, Some(1.0), false),
        trial(5, TrialState::Succeeded, 0.0, None, true),
        trial(6, TrialState::Succeeded, 0.1, Some(0.8), true),
    ];
    let front: Vec<u32> = spec
        .objective
        .front(&trials)
        .iter()
        .map(|trial| trial.id.number)
        .collect();
    assert_eq!(front, vec![0, 2, 6]);
    // One objective: the trials tied for the best.
    let single = Objective::new("loss", Direction::Minimize);
    let best: Vec<u32> = single.front(&trials).iter().map(|t| t.id.number).collect();
    assert_eq!(best, vec![5]);
}

const PHASED: &str = r#"
name = "phased"

[objective]
metric = "loss"
direction = "minimize"

[budget]
max_parallel = 3

[trial]
command = "python3"
args = ["train.py", "--x={x}", "--lr={lr}"]
metrics = ["loss"]

[[phases]]
name = "coarse"
max_trials = 4
[phases.space.x]
type = "float"
low = -5.0
high = 5.0

[[phases]]
name = "fine"
max_trials = 6
max_parallel = 2
[phases.algorithm]
name = "tpe"
[phases.space.lr]
type = "float"
low = 1e-4
high = 1e-1
log = true
"#;

const CONDITIONAL: &str = r#"
name = "conditional"
warm_start = ["s3", "last-weeks-sweep"]

[objective]
metric = "loss"
direction = "minimize"

[space.optimizer]
type = "categorical"
choices = ["sgd", "adam", "rmsprop"]

[space.momentum]
type = "float"
low = 0.0
high = 0.99
when = { optimizer = "sgd" }

[space.beta2]
type = "float"
low = 0.9
high = 0.9999
when = { optimizer = ["adam", "rmsprop"] }

[budget]
max_trials = 10
max_parallel = 2

[trial]
command = "python3"
args = ["train.py"]
metrics = ["loss"]
"#;

#[test]
fn conditions_and_warm_starts_parse_and_round_trip() {
    let spec = SweepSpec::from_toml(CONDITIONAL, "conditional.toml").expect("valid");
    assert_eq!(
        spec.space["momentum"].when,
        Some(When::new("optimizer", [ParamValue::Str("sgd".into())]))
    );
    assert_eq!(
        spec.space["beta2"].when,
        Some(When::new(
            "optimizer",
            [
                ParamValue::Str("adam".into()),
                ParamValue::Str("rmsprop".into())
            ]
        ))
    );
    assert_eq!(spec.warm_start, ["s3", "last-weeks-sweep"]);
    assert!(spec.is_conditional("momentum") && !spec.is_conditional("optimizer"));
    let again = SweepSpec::from_toml(&spec.to_toml(), "again").expect("round trip");
    assert_eq!(again, spec);
    let wire = crate::codec::encode(&spec).expect("encode");
    assert_eq!(
        crate::codec::decode::<SweepSpec>(&wire).expect("decode"),
        spec
    );
}

#[test]
fn bad_conditions_are_named_with_their_parameter() {
    let problems = problems_of(
        &CONDITIONAL
            .replace(
                "when = { optimizer = \"sgd\" }",
                "when = { optimiser = \"sgd\" }",
            )
            .replace(
                "when = { optimizer = [\"adam\", \"rmsprop\"] }",
                "when = { optimizer = [\"adam\", \"adamw\"] }",
            )
            .replace(
                "args = [\"train.py\"]",
                "args = [\"train.py\", \"--beta2={beta2}\"]",
            ),
    );
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|p| p.starts_with("space.momentum.when: unknown parameter 'optimiser' (this space has: beta2, momentum, optimizer)")),
        "{text:?}"
    );
    assert!(
        text.contains(
            &"space.beta2.when: \"adamw\" is not a choice of 'optimizer' (\"sgd\", \"adam\", \"rmsprop\")"
                .to_string()
        ),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|p| p
                .starts_with("trial.args[1]: placeholder {beta2} names a conditional parameter")),
        "{text:?}"
    );

    let cycle = CONDITIONAL.replace(
        "[space.optimizer]\ntype = \"categorical\"\n",
        "[space.optimizer]\ntype = \"categorical\"\nwhen = { flavour = \"x\" }\n",
    ) + "\n[space.flavour]\ntype = \"categorical\"\nchoices = [\"x\", \"y\"]\nwhen = { optimizer = \"sgd\" }\n";
    let text: Vec<String> = problems_of(&cycle)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        text.contains(
            &"space: conditions (`when`) form a cycle: flavour -> optimizer -> flavour".to_string()
        ),
        "{text:?}"
    );

    let numeric = CONDITIONAL.replace("when = { optimizer = \"sgd\" }", "when = { beta2 = 0.95 }");
    let text: Vec<String> = problems_of(&numeric)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        text.iter()
            .any(|p| p.starts_with("space.momentum.when: 'beta2' is not categorical")),
        "{text:?}"
    );

    let two = CONDITIONAL.replace(
        "when = { optimizer = \"sgd\" }",
        "when = { optimizer = \"sgd\", beta2 = 0.95 }",
    );
    let Err(SpecError::Syntax { message, .. }) = SweepSpec::from_toml(&two, "two.toml") else {
        panic!("two parameters in one condition must be refused");
    };
    assert!(
        message.contains("`when` may name one parameter"),
        "{message}"
    );

    let grid = CONDITIONAL.replace("[budget]", "[algorithm]\nname = \"grid\"\n\n[budget]");
    let text: Vec<String> = problems_of(&grid).iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|p| p.starts_with("warm_start: a grid enumerates its points")),
        "{text:?}"
    );
}

#[test]
fn phases_parse_inherit_the_sweep_and_round_trip() {
    let spec = SweepSpec::from_toml(PHASED, "phased.toml").expect("valid");
    let phases = spec.phases();
    assert_eq!(phases.len(), 2);
    assert_eq!(
        (phases[0].name, phases[0].max_trials, phases[0].max_parallel),
        ("coarse", 4, 3)
    );
    assert_eq!(phases[0].algorithm.name, AlgorithmName::Bayesian);
    assert_eq!(
        (phases[1].name, phases[1].max_trials, phases[1].max_parallel),
        ("fine", 6, 2)
    );
    assert_eq!(phases[1].algorithm.name, AlgorithmName::Tpe);
    assert!(spec.is_searched("lr") && spec.is_searched("x") && !spec.is_searched("y"));
    let again = SweepSpec::from_toml(&spec.to_toml(), "again").expect("round trip");
    assert_eq!(again, spec);
    // Without phases the sweep is its own single phase.
    let single = SweepSpec::from_toml(GOOD, "good.toml").expect("valid");
    let phases = single.phases();
    assert_eq!(
        (phases.len(), phases[0].name, phases[0].max_trials),
        (1, "quick", 10)
    );
}

#[test]
fn phase_problems_name_the_phase() {
    let broken = PHASED
        .replace("name = \"fine\"", "name = \"coarse\"")
        .replace("max_trials = 6", "max_trials = 0")
        .replace("[budget]\n", "[budget]\nmax_trials = 5\n")
        .replace("--lr={lr}", "--y={y}")
        .replace("low = 1e-4", "low = -1.0");
    let problems = problems_of(&broken);
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for path in [
        "phases[1].name",
        "phases[1].max_trials",
        "budget.max_trials",
        "trial.args[2]",
        "phases[1].space.lr.low",
    ] {
        assert!(paths.contains(&path), "{path} missing from {problems:?}");
    }
    let both = format!("{PHASED}\n[space.z]\ntype = \"float\"\nlow = 0.0\nhigh = 1.0\n");
    let problems = problems_of(&both);
    assert!(
        problems
            .iter()
            .any(|p| p.path == "space" && p.message.contains("phases[N].space")),
        "{problems:?}"
    );
    let empty = PHASED.replace(
        "[phases.space.x]\ntype = \"float\"\nlow = -5.0\nhigh = 5.0\n",
        "",
    );
    let problems = problems_of(&empty);
    assert!(
        problems.iter().any(|p| p.path == "phases[0].space"),
        "{problems:?}"
    );
}

#[test]
fn asha_promotion_needs_epochs_and_whole_rungs() {
    let command = format!(
        "{GOOD}\n[early_stopping]\nrule = \"asha\"\nresource = \"loss\"\nmin_resource = 1.5\nmax_resource = 9\npromotion = true\n"
    );
    let problems = problems_of(&command);
    for path in ["early_stopping.resource", "early_stopping.min_resource"] {
        assert!(
            problems.iter().any(|p| p.path == path),
            "{path} missing from {problems:?}"
        );
    }
    // A command trial may pause at rungs too: it is told its epochs and checkpoints.
    let command = format!(
        "{}\n[early_stopping]\nrule = \"asha\"\nresource = \"epoch\"\nmin_resource = 1\nmax_resource = 9\npromotion = true\n",
        GOOD.replace(
            "metrics = [\"loss\", \"accuracy\"]",
            "metrics = [\"loss\", \"accuracy\", \"epoch\"]"
        )
    );
    let spec = SweepSpec::from_toml(&command, "command.toml").expect("valid");
    assert!(spec.early_stopping.as_ref().is_some_and(|s| s.promotion));
    let trainer = r#"
name = "promoted"
[objective]
metric = "val_loss"
direction = "minimize"
[space.learning_rate]
type = "float"
low = 0.0001
high = 0.1
log = true
[budget]
max_trials = 9
[trial]
trainer = "mlp_regressor"
[trial.settings]
epochs = 5
[early_stopping]
rule = "asha"
resource = "epoch"
min_resource = 1
max_resource = 9
promotion = true
"#;
    let problems = problems_of(trainer);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].path, "trial.settings.epochs");
    let fixed = trainer.replace("epochs = 5", "epochs = 9");
    let spec = SweepSpec::from_toml(&fixed, "fixed.toml").expect("valid");
    assert!(spec.early_stopping.as_ref().is_some_and(|s| s.promotion));
    let median = fixed.replace("rule = \"asha\"", "rule = \"median\"");
    assert!(
        problems_of(&median)
            .iter()
            .any(|p| p.path == "early_stopping.promotion")
    );
}

#[test]
fn early_stopping_is_checked() {
    let asha = format!(
        "{GOOD}\n[early_stopping]\nrule = \"asha\"\nresource = \"epochs\"\nmin_resource = 0\nreduction_factor = 1.0\n"
    );
    let problems = problems_of(&asha);
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for path in [
        "early_stopping.resource",
        "early_stopping.min_resource",
        "early_stopping.max_resource",
        "early_stopping.reduction_factor",
    ] {
        assert!(paths.contains(&path), "{path} missing from {problems:?}");
    }
    let good = format!(
        "{GOOD}\n[early_stopping]\nrule = \"median\"\nresource = \"loss\"\nmin_resource = 2\n"
    );
    let spec = SweepSpec::from_toml(&good, "test.toml").expect("valid");
    let stopping = spec.early_stopping.clone().expect("early stopping");
    assert_eq!(
        (stopping.rule, stopping.min_trials),
        (StoppingRule::Median, 5)
    );
    let again = SweepSpec::from_toml(&spec.to_toml(), "again").expect("round trip");
    assert_eq!(again, spec);

    // Hyperband needs what ASHA needs, and stops trials in flight (no promotion form).
    let hyperband = format!(
        "{GOOD}\n[early_stopping]\nrule = \"hyperband\"\nresource = \"loss\"\nmin_resource = 1\npromotion = true\n"
    );
    let problems = problems_of(&hyperband);
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(
        paths.contains(&"early_stopping.max_resource"),
        "{problems:?}"
    );
    assert!(paths.contains(&"early_stopping.promotion"), "{problems:?}");
    let good = format!(
        "{GOOD}\n[early_stopping]\nrule = \"hyperband\"\nresource = \"loss\"\nmin_resource = 1\nmax_resource = 27\n"
    );
    let spec = SweepSpec::from_toml(&good, "test.toml").expect("valid");
    assert_eq!(
        spec.early_stopping.as_ref().map(|stopping| stopping.rule),
        Some(StoppingRule::Hyperband)
    );
    let again = SweepSpec::from_toml(&spec.to_toml(), "again").expect("round trip");
    assert_eq!(again, spec);
}

#[test]
fn a_good_file_parses_with_defaults() {
    let spec = SweepSpec::from_toml(GOOD, "test.toml").expect("valid");
    assert_eq!(spec.space.len(), 4);
    assert_eq!(spec.constraints[0].op, ConstraintOp::AtLeast);
    assert_eq!(spec.budget.max_duration, Some(Duration::from_secs(600)));
    assert_eq!(spec.resources, Resources::default());
    assert_eq!(spec.retries.max_retries, 2);
    assert_eq!(spec.retries.max_reschedules, 10);
    let unbounded = format!("{GOOD}\n[retries]\nmax_reschedules = 1001\n");
    assert!(
        problems_of(&unbounded)
            .iter()
            .any(|problem| problem.path == "retries.max_reschedules")
    );
    assert_eq!(spec.algorithm.name, AlgorithmName::Bayesian);
    let again = SweepSpec::from_toml(&spec.to_toml(), "again").expect("round trip");
    assert_eq!(again, spec);
}

#[test]
fn unknown_field_is_named_with_its_line() {
    let text = GOOD.replace("max_parallel = 2", "max_paralel = 2");
    let error = SweepSpec::from_toml(&text, "test.toml").expect_err("unknown field");
    let message = error.to_string();
    assert!(message.contains("max_paralel"), "{message}");
    assert!(message.contains("line"), "{message}");
}

#[test]
fn bad_range_names_the_field() {
    let text = GOOD.replace("low = -5.0", "low = 7.0");
    let problems = problems_of(&text);
    assert!(
        problems
            .iter()
            .any(|p| p.path == "space.x.high" && p.message.contains("greater than low")),
        "{problems:?}"
    );
}

#[test]
fn unknown_constraint_metric_names_the_constraint() {
    let text = GOOD.replace("accuracy >= 0.3", "class_1_accuracy >= 0.3");
    let problems = problems_of(&text);
    assert!(
        problems
            .iter()
            .any(|p| p.path == "constraints[0]" && p.message.contains("class_1_accuracy")),
        "{problems:?}"
    );
}

#[test]
fn empty_space_is_refused_and_all_problems_are_reported() {
    let start = GOOD.find("[space.x]").expect("has space");
    let end = GOOD.find("[budget]").expect("has budget");
    let text = format!("{}[space]\n{}", &GOOD[..start], &GOOD[end..])
        .replace("max_trials = 10", "max_trials = 0")
        .replace("--x={x}", "--x={y}");
    let problems = problems_of(&text);
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"space"), "{paths:?}");
    assert!(paths.contains(&"budget.max_trials"), "{paths:?}");
    assert!(paths.contains(&"trial.args[1]"), "{paths:?}");
}

#[test]
fn log_range_needs_positive_low_and_constraints_parse_strictly() {
    let text = GOOD.replace("low = 1e-4", "low = 0.0");
    assert!(problems_of(&text).iter().any(|p| p.path == "space.lr.low"));
    assert!("accuracy => 3".parse::<Constraint>().is_err());
    assert!(">= 3".parse::<Constraint>().is_err());
    assert!("acc >= high".parse::<Constraint>().is_err());
    let parsed: Constraint = "class_1_accuracy >= 0.30".parse().expect("parses");
    assert!(parsed.holds(0.3) && !parsed.holds(0.29));
}

const LSTM: &str = r#"
name = "lstm"
constraints = ["class_1_accuracy >= 0.30"]

[objective]
metric = "accuracy"
direction = "maximize"

[space.learning_rate]
type = "float"
low = 1e-4
high = 1e-2
log = true

[space.hidden_size]
type = "categorical"
choices = [64, 128]

[budget]
max_trials = 4

[trial]
trainer = "lstm_classifier"
settings = { epochs = 3, time_warp_sigma = 0.15 }
"#;

#[test]
fn trainer_trials_are_checked_against_the_trainer() {
    let spec = SweepSpec::from_toml(LSTM, "lstm.toml").expect("valid LSTM sweep");
    assert!(
        spec.reported_metrics()
            .contains(&"class_1_accuracy".to_string())
    );

    let bad = LSTM
        .replace(
            "[space.hidden_size]\ntype = \"categorical\"\nchoices = [64, 128]",
            "[space.hidden_size]\ntype = \"float\"\nlow = 8.0\nhigh = 64.0",
        )
        .replace("time_warp_sigma = 0.15", "time_warp_sigma = 3.0, hiden = 4")
        .replace("class_1_accuracy >= 0.30", "class_2_accuracy >= 0.30")
        .replace("low = 1e-4", "low = 1e-9");
    let problems = problems_of(&bad);
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "space.hidden_size",
        "space.learning_rate",
        "trial.settings.time_warp_sigma",
        "trial.settings.hiden",
        "constraints[0]",
    ] {
        assert!(
            paths.contains(&expected),
            "no problem at {expected}: {problems:?}"
        );
    }
    let unknown = problems
        .iter()
        .find(|p| p.path == "trial.settings.hiden")
        .expect("hiden");
    assert!(
        unknown.message.contains("no hyperparameter 'hiden'"),
        "{unknown:?}"
    );

    let unknown_trainer = problems_of(&LSTM.replace("lstm_classifier", "transformer"));
    assert!(
        unknown_trainer.iter().any(|p| p.path == "trial.trainer"
            && p.message.contains("known: lstm_classifier, mlp_regressor")),
        "{unknown_trainer:?}"
    );
}

#[test]
fn placeholders_are_substituted() {
    let mut params = BTreeMap::new();
    params.insert("x".to_string(), ParamValue::Float(0.5));
    params.insert("opt".to_string(), ParamValue::Str("adam".into()));
    assert_eq!(substitute("--x={x} --o={opt}", &params), "--x=0.5 --o=adam");
    assert_eq!(placeholders("{a}-{b}"), vec!["a", "b"]);
}

#[test]
fn a_serving_table_is_read_with_its_defaults_and_checked() {
    let text = format!(
        "{GOOD}\n[serving]\ncommand = \"python3\"\nargs = [\"serve.py\"]\nenv = {{ API_KEY = \"s3cret\" }}\n"
    );
    let spec = SweepSpec::from_toml(&text, "test.toml").expect("valid");
    let serving = spec.serving.clone().expect("a serving table");
    assert_eq!(serving.health, "/healthz");
    assert_eq!(serving.ready_timeout, Duration::from_secs(60));
    assert_eq!(serving.replicas, 1);
    assert_eq!(
        spec.redacted().serving.expect("kept").env["API_KEY"],
        REDACTED
    );

    let bad = format!(
        "{GOOD}\n[serving]\ncommand = \" \"\nhealth = \"healthz\"\nready_timeout = \"0s\"\nreplicas = 0\nslots = 5000\ngpus = 65\nenv = {{ FLOTILLA_SERVE_PORT = \"1\" }}\n"
    );
    let paths: Vec<String> = problems_of(&bad).into_iter().map(|p| p.path).collect();
    for path in [
        "serving.command",
        "serving.health",
        "serving.ready_timeout",
        "serving.replicas",
        "serving.slots",
        "serving.gpus",
        "serving.env.FLOTILLA_SERVE_PORT",
    ] {
        assert!(paths.iter().any(|p| p == path), "{path} in {paths:?}");
    }

    // Built-in trainers' models are served by the agents themselves.
    let builtin = GOOD
        .replace(
            "command = \"python3\"\nargs = [\"train.py\", \"--x={x}\"]\nmetrics = [\"loss\", \"accuracy\"]",
            "trainer = \"lstm_classifier\"",
        );
    let builtin = format!("{builtin}\n[serving]\ncommand = \"python3\"\n");
    let problems = problems_of(&builtin);
    assert!(
        problems
            .iter()
            .any(|p| p.path == "serving" && p.message.contains("command trial")),
        "{problems:?}"
    );
    let unknown = format!("{GOOD}\n[serving]\ncommand = \"x\"\nport = 80\n");
    assert!(SweepSpec::from_toml(&unknown, "test.toml").is_err());
}
