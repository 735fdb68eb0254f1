//! Sweep reports: what an engineer reads to judge a sweep.
//!
//! A [`Report`] holds a sweep's detail (summary, spec, learning curves) and its trials, and
//! renders Markdown (plots as SVG files beside it) or one self-contained HTML page (plots
//! inline). Sections: the winner, phase winners, feasibility against each constraint,
//! the winner's per-class metrics, parameter importance, every trial ranked, and the plots
//! of [`plots`].

pub mod plots;

use std::collections::{BTreeMap, BTreeSet};

use flotilla_protocol::ParamValue;
use flotilla_protocol::messages::{
    PhaseSummary, SweepDetail, SweepSummary, TrialRecord, TrialState,
};
use flotilla_protocol::spec::{Direction, ParamSpec, SweepSpec};

pub use plots::Plot;

/// Text made safe for HTML and SVG.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Text made safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// Trials best first: succeeded and feasible by objective, then succeeded but infeasible,
/// then the rest by number.
pub fn ranked(direction: Direction, trials: &[TrialRecord]) -> Vec<&TrialRecord> {
    let mut ranked: Vec<&TrialRecord> = trials.iter().collect();
    let key = |trial: &TrialRecord| match (
        trial.state == TrialState::Succeeded,
        trial.feasible,
        trial.objective,
    ) {
        (true, true, Some(value)) => (0, direction.loss(value)),
        (true, _, Some(value)) => (1, direction.loss(value)),
        _ => (2, 0.0),
    };
    ranked.sort_by(|left, right| {
        let (left_rank, left_value) = key(left);
        let (right_rank, right_value) = key(right);
        left_rank
            .cmp(&right_rank)
            .then(left_value.total_cmp(&right_value))
            .then(left.id.number.cmp(&right.id.number))
    });
    ranked
}

/// The winner of each phase, looked up among `trials`.
pub fn phase_winners<'a>(
    summary: &'a SweepSummary,
    trials: &'a [TrialRecord],
) -> impl Iterator<Item = (&'a PhaseSummary, Option<&'a TrialRecord>)> {
    summary.phases.iter().map(move |phase| {
        let winner = phase
            .winner
            .and_then(|number| trials.iter().find(|trial| trial.id.number == number));
        (phase, winner)
    })
}

/// The name of the phase a trial belongs to (its index when the summary has no such phase).
pub fn phase_name(summary: &SweepSummary, trial: &TrialRecord) -> String {
    summary
        .phases
        .get(trial.phase as usize)
        .map_or_else(|| trial.phase.to_string(), |phase| phase.name.clone())
}

/// A parameter value as a key (its exact text).
pub fn param_key(value: &ParamValue) -> String {
    value.exact()
}

fn param_spec<'a>(spec: &'a SweepSpec, name: &str) -> Option<&'a ParamSpec> {
    spec.space
        .get(name)
        .or_else(|| spec.phases.iter().find_map(|phase| phase.space.get(name)))
}

/// Every parameter the spec or the trials name, in order.
pub fn parameter_names<'a>(spec: &'a SweepSpec, trials: &'a [TrialRecord]) -> Vec<&'a String> {
    let mut names: BTreeSet<&String> = spec.space.keys().collect();
    for phase in &spec.phases {
        names.extend(phase.space.keys());
    }
    for trial in trials {
        names.extend(trial.params.keys());
    }
    names.into_iter().collect()
}

/// Where each value of a parameter sits on a [0, 1] axis: numbers by value (log-scaled when
/// the space is), anything else by its place among the sorted distinct values.
pub fn numeric_axis(spec: &SweepSpec, name: &str, trials: &[TrialRecord]) -> BTreeMap<String, f64> {
    let values: Vec<&ParamValue> = trials
        .iter()
        .filter_map(|trial| trial.params.get(name))
        .collect();
    let log = param_spec(spec, name).is_some_and(|spec| spec.log);
    let numbers: Option<Vec<f64>> = values
        .iter()
        .map(|value| {
            value.as_f64().map(|number| {
                if log && number > 0.0 {
                    number.ln()
                } else {
                    number
                }
            })
        })
        .collect();
    let mut axis = BTreeMap::new();
    match numbers {
        Some(numbers) if !numbers.is_empty() => {
            let low = numbers.iter().copied().fold(f64::INFINITY, f64::min);
            let high = numbers.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            for (value, number) in values.iter().zip(numbers) {
                let position = if high > low {
                    (number - low) / (high - low)
                } else {
                    0.5
                };
                axis.insert(param_key(value), position);
            }
        }
        _ => {
            let distinct: BTreeSet<String> = values.iter().map(|value| param_key(value)).collect();
            let count = distinct.len();
            for (index, key) in distinct.into_iter().enumerate() {
                let position = if count > 1 {
                    index as f64 / (count - 1) as f64
                } else {
                    0.5
                };
                axis.insert(key, position);
            }
        }
    }
    axis
}

/// Each parameter's correlation ratio η² with the objective over succeeded trials: the share
/// of the objective's variance explained by grouping trials on that parameter alone
/// (distinct values, or five quantile bins of a numeric parameter with more). It ignores
/// interactions between parameters. Largest first; empty with fewer than four trials.
pub fn importance(spec: &SweepSpec, trials: &[TrialRecord]) -> Vec<(String, f64)> {
    let scored: Vec<&TrialRecord> = trials
        .iter()
        .filter(|trial| trial.state == TrialState::Succeeded)
        .filter(|trial| trial.objective.is_some_and(f64::is_finite))
        .collect();
    if scored.len() < 4 {
        return Vec::new();
    }
    let mut result = Vec::new();
    for name in parameter_names(spec, trials) {
        let pairs: Vec<(&ParamValue, f64)> = scored
            .iter()
            .filter_map(|trial| Some((trial.params.get(name)?, trial.objective?)))
            .collect();
        if pairs.len() < 4 {
            continue;
        }
        let groups = group(&pairs);
        if groups.len() < 2 {
            continue;
        }
        let all: Vec<f64> = pairs.iter().map(|(_, y)| *y).collect();
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        let total: f64 = all.iter().map(|y| (y - mean).powi(2)).sum();
        if total <= 0.0 {
            continue;
        }
        let between: f64 = groups
            .iter()
            .map(|ys| {
                let group_mean = ys.iter().sum::<f64>() / ys.len() as f64;
                ys.len() as f64 * (group_mean - mean).powi(2)
            })
            .sum();
        result.push((name.clone(), (between / total).clamp(0.0, 1.0)));
    }
    result.sort_by(|left, right| right.1.total_cmp(&left.1).then(left.0.cmp(&right.0)));
    result
}

/// Objective values grouped by parameter value, or by quantile bin for many numbers.
fn group(pairs: &[(&ParamValue, f64)]) -> Vec<Vec<f64>> {
    const BINS: usize = 5;
    let distinct: BTreeSet<String> = pairs.iter().map(|(value, _)| param_key(value)).collect();
    let numeric: Option<Vec<(f64, f64)>> = pairs
        .iter()
        .map(|(value, y)| value.as_f64().map(|x| (x, *y)))
        .collect();
    match numeric {
        Some(mut numeric) if distinct.len() > BINS => {
            numeric.sort_by(|left, right| left.0.total_cmp(&right.0));
            let size = numeric.len().div_ceil(BINS);
            numeric
                .chunks(size)
                .map(|chunk| chunk.iter().map(|(_, y)| *y).collect())
                .collect()
        }
        _ => {
            let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for (value, y) in pairs {
                groups.entry(param_key(value)).or_default().push(*y);
            }
            groups.into_values().collect()
        }
    }
}

/// The winner's per-class metrics: names like `class_<label>_<metric>`, by label then metric.
pub fn per_class(metrics: &BTreeMap<String, f64>) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut classes: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (name, value) in metrics {
        if let Some(rest) = name.strip_prefix("class_")
            && let Some((label, metric)) = rest.split_once('_')
        {
            classes
                .entry(label.to_string())
                .or_default()
                .insert(metric.to_string(), *value);
        }
    }
    classes
}

fn format_value(value: Option<f64>) -> String {
    value.map_or("-".into(), |value| {
        if value.abs() >= 1e5 || (value != 0.0 && value.abs() < 1e-3) {
            format!("{value:.4e}")
        } else {
            format!("{value:.5}")
        }
    })
}

fn format_params(params: &BTreeMap<String, ParamValue>) -> String {
    params
        .iter()
        .map(|(name, value)| format!("{name}={}", value.exact()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plots' ids, in report order.
pub const PLOTS: [&str; 5] = ["history", "parallel", "importance", "curves", "front"];

/// A sweep's report.
pub struct Report<'a> {
    pub detail: &'a SweepDetail,
    pub trials: &'a [TrialRecord],
}

/// One table: a header and rows of plain text.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn markdown(&self) -> String {
        let mut out = format!(
            "| {} |\n|{}\n",
            self.header
                .iter()
                .map(|text| cell(text))
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(self.header.len())
        );
        for row in &self.rows {
            out.push_str(&format!(
                "| {} |\n",
                row.iter()
                    .map(|text| cell(text))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
        out
    }

    fn html(&self, class: &str) -> String {
        let mut out = format!("<table class=\"{class}\"><thead><tr>");
        for text in &self.header {
            out.push_str(&format!("<th>{}</th>", escape(text)));
        }
        out.push_str("</tr></thead><tbody>");
        for row in &self.rows {
            out.push_str("<tr>");
            for text in row {
                out.push_str(&format!("<td>{}</td>", escape(text)));
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
        out
    }
}

/// A section: a title, paragraphs, and an optional table.
struct Section {
    title: String,
    lines: Vec<String>,
    table: Option<(&'static str, Table)>,
}

impl Report<'_> {
    fn spec(&self) -> &SweepSpec {
        &self.detail.spec
    }

    fn best(&self) -> Option<&TrialRecord> {
        ranked(self.detail.summary.direction, self.trials)
            .into_iter()
            .next()
            .filter(|trial| {
                trial.state == TrialState::Succeeded && trial.feasible && trial.objective.is_some()
            })
    }

    /// The plots, in report order (the Pareto front only for a multi-objective sweep).
    pub fn plots(&self) -> Vec<Plot> {
        PLOTS.iter().filter_map(|id| self.plot(id)).collect()
    }

    /// One plot by id (one of [`PLOTS`]), drawn alone.
    pub fn plot(&self, id: &str) -> Option<Plot> {
        let summary = &self.detail.summary;
        Some(match id {
            "history" => plots::optimization_history(
                &summary.objective_metric,
                summary.direction,
                self.trials,
            ),
            "parallel" => plots::parallel_coordinates(self.spec(), self.trials),
            "importance" => plots::parameter_importance(&importance(self.spec(), self.trials)),
            "curves" => plots::learning_curves(
                &self.detail.curves,
                self.best().map(|trial| trial.id.number),
            ),
            "front" => plots::pareto_front(self.spec(), self.trials)?,
            _ => return None,
        })
    }

    fn sections(&self) -> Vec<Section> {
        let summary = &self.detail.summary;
        let spec = self.spec();
        let mut sections = Vec::new();
        let counts = &summary.counts;
        let direction = match summary.direction {
            Direction::Minimize => "minimize",
            Direction::Maximize => "maximize",
        };
        let mut overview = vec![
            format!(
                "State: {:?}. Objective: {direction} {}.",
                summary.state, summary.objective_metric
            ),
            format!(
                "Trials: {} of at most {} — {} succeeded, {} stopped, {} failed, {} running, {} pending, {} paused.",
                self.trials.len(),
                summary.max_trials,
                counts.succeeded,
                counts.stopped,
                counts.failed,
                counts.running,
                counts.pending,
                counts.paused
            ),
        ];
        if let Some(finished) = summary.finished_ms {
            overview.push(format!(
                "Ran for {:.1} s.",
                finished.saturating_sub(summary.created_ms) as f64 / 1000.0
            ));
        }
        match self.best() {
            Some(best) => overview.push(format!(
                "Winner: trial {} with {} = {} ({}).",
                best.id,
                summary.objective_metric,
                format_value(best.objective),
                format_params(&best.params)
            )),
            None => overview.push("No feasible trial succeeded.".into()),
        }
        sections.push(Section {
            title: format!("Sweep report: {} ({})", summary.name, summary.id),
            lines: overview,
            table: None,
        });

        if spec.objective.is_multi() {
            let header: Vec<String> = std::iter::once("trial".to_string())
                .chain(spec.objective.goals().map(|(metric, direction)| {
                    let word = match direction {
                        Direction::Minimize => "min",
                        Direction::Maximize => "max",
                    };
                    format!("{metric} ({word})")
                }))
                .chain(std::iter::once("params".to_string()))
                .collect();
            let rows = spec
                .objective
                .front(self.trials)
                .into_iter()
                .map(|trial| {
                    let values = spec
                        .objective
                        .values(trial.objective, &trial.metrics)
                        .unwrap_or_default();
                    std::iter::once(trial.id.to_string())
                        .chain(values.into_iter().map(|value| format_value(Some(value))))
                        .chain(std::iter::once(format_params(&trial.params)))
                        .collect()
                })
                .collect();
            sections.push(Section {
                title: "Pareto front".into(),
                lines: vec![format!(
                    "The sweep trades {} objectives: these feasible trials are each beaten by no other in every objective. The winner above is the best by the first, {}.",
                    spec.objective.goals().count(),
                    spec.objective.metric
                )],
                table: Some(("front", Table { header, rows })),
            });
        }

        if summary.phases.len() > 1 {
            let rows = phase_winners(summary, self.trials)
                .map(|(phase, winner)| {
                    vec![
                        phase.name.clone(),
                        format!("{}/{}", phase.trials, phase.max_trials),
                        winner.map_or("-".into(), |trial| trial.id.to_string()),
                        format_value(winner.and_then(|trial| trial.objective)),
                        winner.map_or(String::new(), |trial| format_params(&trial.params)),
                    ]
                })
                .collect();
            sections.push(Section {
                title: "Phase winners".into(),
                lines: vec![
                    "Each phase's best feasible trial; its parameters are fixed for the phases after it.".into(),
                ],
                table: Some((
                    "phases",
                    Table {
                        header: ["phase", "trials", "winner", &summary.objective_metric, "params"]
                            .map(String::from)
                            .to_vec(),
                        rows,
                    },
                )),
            });
        }

        if !spec.constraints.is_empty() {
            let finished: Vec<&TrialRecord> = self
                .trials
                .iter()
                .filter(|trial| trial.state == TrialState::Succeeded)
                .collect();
            let rows = spec
                .constraints
                .iter()
                .map(|constraint| {
                    let reported: Vec<f64> = finished
                        .iter()
                        .filter_map(|trial| trial.metrics.get(&constraint.metric).copied())
                        .collect();
                    let met = reported
                        .iter()
                        .filter(|value| constraint.holds(**value))
                        .count();
                    let best_value = reported.iter().copied().fold(None::<f64>, |best, value| {
                        Some(best.map_or(value, |best| {
                            if constraint.holds(value) && !constraint.holds(best) {
                                value
                            } else {
                                best
                            }
                        }))
                    });
                    vec![
                        constraint.to_string(),
                        format!("{met} of {}", finished.len()),
                        format_value(best_value),
                    ]
                })
                .collect();
            let feasible = finished.iter().filter(|trial| trial.feasible).count();
            sections.push(Section {
                title: "Feasibility".into(),
                lines: vec![format!(
                    "{feasible} of {} succeeded trials meet every constraint.",
                    finished.len()
                )],
                table: Some((
                    "constraints",
                    Table {
                        header: ["constraint", "met by", "example value"]
                            .map(String::from)
                            .to_vec(),
                        rows,
                    },
                )),
            });
        }

        if let Some(best) = self.best() {
            let classes = per_class(&best.metrics);
            if !classes.is_empty() {
                let metrics: BTreeSet<&String> =
                    classes.values().flat_map(|values| values.keys()).collect();
                let mut header = vec!["class".to_string()];
                header.extend(metrics.iter().map(|name| name.to_string()));
                let rows = classes
                    .iter()
                    .map(|(label, values)| {
                        let mut row = vec![label.clone()];
                        row.extend(
                            metrics
                                .iter()
                                .map(|name| format_value(values.get(*name).copied())),
                        );
                        row
                    })
                    .collect();
                sections.push(Section {
                    title: format!("Per-class metrics of the winner ({})", best.id),
                    lines: Vec::new(),
                    table: Some(("per-class", Table { header, rows })),
                });
            }
        }

        let importance = importance(spec, self.trials);
        if !importance.is_empty() {
            sections.push(Section {
                title: "Parameter importance".into(),
                lines: vec![
                    "η²: the share of the objective's variance explained by each parameter on its own (grouped by value, or in five quantile bins). Interactions are not counted.".into(),
                ],
                table: Some((
                    "importance",
                    Table {
                        header: vec!["parameter".into(), "η²".into()],
                        rows: importance
                            .iter()
                            .map(|(name, share)| vec![name.clone(), format!("{share:.3}")])
                            .collect(),
                    },
                )),
            });
        }

        let phased = summary.phases.len() > 1;
        let mut header = vec!["rank".to_string(), "trial".into()];
        if phased {
            header.push("phase".into());
        }
        header.extend([
            summary.objective_metric.clone(),
            "feasible".into(),
            "state".into(),
        ]);
        header.extend(spec.constraints.iter().map(|c| c.metric.clone()));
        header.extend(["params".into(), "time (s)".into(), "note".into()]);
        let rows = ranked(summary.direction, self.trials)
            .into_iter()
            .enumerate()
            .map(|(rank, trial)| {
                let mut row = vec![(rank + 1).to_string(), trial.id.to_string()];
                if phased {
                    row.push(phase_name(summary, trial));
                }
                row.extend([
                    format_value(trial.objective),
                    if trial.feasible { "yes" } else { "no" }.into(),
                    trial.state.name().into(),
                ]);
                row.extend(spec.constraints.iter().map(|constraint| {
                    match trial.metrics.get(&constraint.metric) {
                        Some(value) => format!(
                            "{} {}",
                            format_value(Some(*value)),
                            if constraint.holds(*value) {
                                "✓"
                            } else {
                                "✗"
                            }
                        ),
                        None => "-".into(),
                    }
                }));
                row.extend([
                    format_params(&trial.params),
                    trial
                        .duration_ms
                        .map_or("-".into(), |ms| format!("{:.1}", ms as f64 / 1000.0)),
                    trial.message.clone().unwrap_or_default(),
                ]);
                row
            })
            .collect();
        sections.push(Section {
            title: "Trials, best first".into(),
            lines: Vec::new(),
            table: Some(("trials", Table { header, rows })),
        });
        sections
    }

    /// Markdown; plots are linked as `<plot_dir>/<id>.svg` (write them with [`Report::plots`]).
    pub fn markdown(&self, plot_dir: &str) -> String {
        let mut out = String::new();
        for (index, section) in self.sections().into_iter().enumerate() {
            let level = if index == 0 { "#" } else { "##" };
            out.push_str(&format!("{level} {}\n\n", section.title));
            for line in &section.lines {
                out.push_str(&format!("{line}\n\n"));
            }
            if let Some((_, table)) = &section.table {
                out.push_str(&table.markdown());
                out.push('\n');
            }
        }
        out.push_str("## Plots\n\n");
        for plot in self.plots() {
            out.push_str(&format!(
                "![{}]({plot_dir}/{}.svg)\n\n",
                plot.title, plot.id
            ));
        }
        out
    }

    /// One self-contained HTML page with the plots inline.
    pub fn html(&self) -> String {
        let summary = &self.detail.summary;
        let mut out = format!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
            escape(&format!("Sweep report: {} ({})", summary.name, summary.id))
        );
        let sections = self.sections();
        let mut sections = sections.into_iter();
        if let Some(first) = sections.next() {
            out.push_str(&section_html(&first, "h1"));
        }
        out.push_str("<h2>Plots</h2><div class=\"plots\">");
        for plot in self.plots() {
            out.push_str(&format!(
                "<figure id=\"plot-{}\">{}<figcaption>{}</figcaption></figure>",
                plot.id,
                plot.svg,
                escape(&plot.title)
            ));
        }
        out.push_str("</div>");
        for section in sections {
            out.push_str(&section_html(&section, "h2"));
        }
        out.push_str("</body></html>\n");
        out
    }
}

fn section_html(section: &Section, heading: &str) -> String {
    let mut out = format!("<{heading}>{}</{heading}>", escape(&section.title));
    for line in &section.lines {
        out.push_str(&format!("<p>{}</p>", escape(line)));
    }
    if let Some((class, table)) = &section.table {
        out.push_str(&table.html(class));
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#202124}\
table{border-collapse:collapse;margin:1em 0;font-size:13px}\
th,td{border:1px solid #dadce0;padding:4px 8px;text-align:left}\
th{background:#f1f3f4}figure{display:inline-block;margin:0 1em 1em 0}\
figcaption{font-size:12px;color:#5f6368}";

#[cfg(test)]
mod tests;
