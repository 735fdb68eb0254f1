//! The report's plots as standalone SVG: optimization history, parallel coordinates,
//! parameter importance, learning curves and (for a multi-objective sweep) the Pareto front.
//!
//! Every mark that stands for a trial carries `data-trial="N"` (bars carry `data-param`), so
//! tools and tests can read a plot's structure without rendering it.

use std::collections::BTreeMap;

use flotilla_protocol::messages::{LearningCurve, TrialRecord, TrialState};
use flotilla_protocol::spec::{Direction, SweepSpec};

use crate::{escape, numeric_axis};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 48.0;

/// A plot: its id (`history`, `parallel`, `importance`, `curves`, `front`), title and SVG text.
#[derive(Debug, Clone)]
pub struct Plot {
    pub id: &'static str,
    pub title: String,
    pub svg: String,
}

/// Linear map from a data range onto a pixel range; a degenerate range maps to the middle.
#[derive(Clone, Copy)]
struct Scale {
    low: f64,
    high: f64,
    from: f64,
    to: f64,
}

impl Scale {
    fn new((low, high): (f64, f64), from: f64, to: f64) -> Scale {
        Scale {
            low,
            high,
            from,
            to,
        }
    }

    fn at(&self, value: f64) -> f64 {
        if (self.high - self.low).abs() < f64::EPSILON {
            return (self.from + self.to) / 2.0;
        }
        self.from + (value - self.low) / (self.high - self.low) * (self.to - self.from)
    }
}

fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|value| value.is_finite())
        .fold(None, |range, value| match range {
            None => Some((value, value)),
            Some((low, high)) => Some((f64::min(low, value), f64::max(high, value))),
        })
}

/// A short label for an axis tick.
pub fn tick_label(value: f64) -> String {
    let magnitude = value.abs();
    if value == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&magnitude) {
        format!("{value:.2e}")
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else {
        let decimals = if magnitude >= 10.0 { 1 } else { 3 };
        let text = format!("{value:.decimals$}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn open(id: &str, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" class=\"flotilla-plot\" data-plot=\"{id}\" font-family=\"sans-serif\" font-size=\"11\">\
<title>{}</title><rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#ffffff\"/>\
<text x=\"{LEFT}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        escape(title),
        escape(title)
    )
}

/// Tick positions over `[low, high]` at a round step (1, 2 or 5 times a power of ten) giving
/// about five ticks; with `integer` (trial numbers, steps) the step is a whole number, so no
/// tick falls between two trials.
pub fn ticks(low: f64, high: f64, integer: bool) -> Vec<f64> {
    if !(low.is_finite() && high.is_finite()) {
        return Vec::new();
    }
    if high - low <= f64::EPSILON * high.abs().max(1.0) {
        return vec![low];
    }
    let raw = (high - low) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude);
    if integer {
        step = step.max(1.0).round();
    }
    // Tick k is k·step, computed as k / (1/step) for a step below 1 so that 0.82 is 0.82
    // and not 41 × 0.02 = 0.8200000000000001.
    let inverse = (1.0 / step).round();
    let at = |k: f64| if step < 1.0 { k / inverse } else { k * step };
    let mut values = Vec::new();
    let mut k = (low / step - 1e-9).ceil();
    while at(k) <= high + step * 1e-9 && values.len() < 12 {
        values.push(at(k));
        k += 1.0;
    }
    values
}

/// Axes with round ticks and their labels; `x_integer` for an axis of trial numbers or steps.
fn axes(out: &mut String, x: Scale, y: Scale, x_label: &str, y_label: &str, x_integer: bool) {
    let y0 = HEIGHT - BOTTOM;
    frame(out);
    for xv in ticks(x.low, x.high, x_integer) {
        let px = x.at(xv);
        out.push_str(&format!(
            "<text class=\"tick x\" x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
<line x1=\"{px:.1}\" y1=\"{y0}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#444\"/>",
            y0 + 16.0,
            escape(&tick_label(xv)),
            y0 + 4.0,
        ));
    }
    y_ticks(out, y);
    titles(out, x_label, y_label);
}

/// The two axis lines.
fn frame(out: &mut String) {
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
    out.push_str(&format!(
        "<g stroke=\"#444\"><line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\"/><line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\"/></g>"
    ));
}

/// Round ticks, their labels and grid lines on the y axis.
fn y_ticks(out: &mut String, y: Scale) {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    for yv in ticks(y.low, y.high, false) {
        let py = y.at(yv);
        out.push_str(&format!(
            "<text class=\"tick y\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
<line x1=\"{x0}\" y1=\"{py:.1}\" x2=\"{x1}\" y2=\"{py:.1}\" stroke=\"#eee\"/>",
            x0 - 6.0,
            py + 4.0,
            escape(&tick_label(yv)),
        ));
    }
}

/// The axes' titles: below the x axis, and up the y axis.
fn titles(out: &mut String, x_label: &str, y_label: &str) {
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
    out.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
<text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        (x0 + x1) / 2.0,
        HEIGHT - 8.0,
        escape(x_label),
        (y0 + y1) / 2.0,
        escape(y_label)
    ));
}

fn empty(id: &'static str, title: String, why: &str) -> Plot {
    let mut svg = open(id, &title);
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#888\">{}</text></svg>",
        WIDTH / 2.0,
        HEIGHT / 2.0,
        escape(why)
    ));
    Plot { id, title, svg }
}

/// Blue (best) to yellow (worst) by rank in `0..=1`.
fn color(rank: f64) -> String {
    let rank = rank.clamp(0.0, 1.0);
    let (r, g, b) = (
        30.0 + rank * (240.0 - 30.0),
        80.0 + rank * (200.0 - 80.0),
        180.0 + rank * (40.0 - 180.0),
    );
    format!("#{:02x}{:02x}{:02x}", r as u8, g as u8, b as u8)
}

/// Trials with an objective, in trial-number order.
fn scored(trials: &[TrialRecord]) -> Vec<(&TrialRecord, f64)> {
    let mut scored: Vec<(&TrialRecord, f64)> = trials
        .iter()
        .filter_map(|trial| trial.objective.map(|value| (trial, value)))
        .filter(|(_, value)| value.is_finite())
        .collect();
    scored.sort_by_key(|(trial, _)| trial.id.number);
    scored
}

/// Each trial's objective by trial number, and the best feasible value so far.
pub fn optimization_history(metric: &str, direction: Direction, trials: &[TrialRecord]) -> Plot {
    let title = format!("Optimization history: {metric} by trial");
    let points = scored(trials);
    let Some(y_range) = range(points.iter().map(|(_, value)| *value)) else {
        return empty("history", title, "no trial has reported the objective yet");
    };
    let x_range =
        range(points.iter().map(|(trial, _)| f64::from(trial.id.number))).unwrap_or((0.0, 1.0));
    let x = Scale::new(x_range, LEFT + 8.0, WIDTH - RIGHT - 8.0);
    let y = Scale::new(y_range, HEIGHT - BOTTOM - 8.0, TOP + 8.0);
    let mut svg = open("history", &title);
    axes(&mut svg, x, y, "trial", metric, true);
    let mut best: Option<f64> = None;
    let mut path = Vec::new();
    for (trial, value) in &points {
        if trial.feasible
            && trial.state == TrialState::Succeeded
            && best.is_none_or(|incumbent| direction.is_better(*value, incumbent))
        {
            best = Some(*value);
        }
        if let Some(best) = best {
            path.push(format!(
                "{:.1},{:.1}",
                x.at(f64::from(trial.id.number)),
                y.at(best)
            ));
        }
    }
    if !path.is_empty() {
        svg.push_str(&format!(
            "<polyline class=\"best-so-far\" fill=\"none\" stroke=\"#e8710a\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        ));
    }
    for (trial, value) in &points {
        let (fill, stroke) = if trial.feasible {
            ("#1a73e8", "#1a73e8")
        } else {
            ("none", "#999")
        };
        svg.push_str(&format!(
            "<circle data-trial=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{fill}\" stroke=\"{stroke}\"><title>{} {metric}={}</title></circle>",
            trial.id.number,
            x.at(f64::from(trial.id.number)),
            y.at(*value),
            trial.id,
            tick_label(*value)
        ));
    }
    svg.push_str("</svg>");
    Plot {
        id: "history",
        title,
        svg,
    }
}

/// A multi-objective sweep's trade-off: every succeeded trial by its first two objectives,
/// the Pareto front (over all objectives) filled (and, with two objectives, joined by its
/// staircase), the rest hollow (grey where infeasible). `None` for a single-objective sweep.
pub fn pareto_front(spec: &SweepSpec, trials: &[TrialRecord]) -> Option<Plot> {
    let objective = &spec.objective;
    let mut goals = objective.goals();
    let ((x_metric, x_direction), (y_metric, y_direction)) = (goals.next()?, goals.next()?);
    let title = format!(
        "Pareto front: {x_metric} ({}) against {y_metric} ({})",
        direction_word(x_direction),
        direction_word(y_direction)
    );
    let points: Vec<(&TrialRecord, f64, f64)> = trials
        .iter()
        .filter(|trial| trial.state == TrialState::Succeeded)
        .filter_map(|trial| {
            let values = objective.values(trial.objective, &trial.metrics)?;
            Some((trial, values[0], values[1]))
        })
        .collect();
    let (Some(x_range), Some(y_range)) = (
        range(points.iter().map(|(_, x, _)| *x)),
        range(points.iter().map(|(_, _, y)| *y)),
    ) else {
        return Some(empty(
            "front",
            title,
            "no trial has reported every objective yet",
        ));
    };
    let front: Vec<u32> = objective
        .front(trials)
        .iter()
        .map(|trial| trial.id.number)
        .collect();
    let x = Scale::new(x_range, LEFT + 8.0, WIDTH - RIGHT - 8.0);
    let y = Scale::new(y_range, HEIGHT - BOTTOM - 8.0, TOP + 8.0);
    let mut svg = open("front", &title);
    axes(&mut svg, x, y, x_metric, y_metric, false);
    // The staircase through the front's points in the first two objectives: sorted from
    // best to worst in the first, each step holding the second's value until the next.
    let mut stairs: Vec<(f64, f64)> = points
        .iter()
        .filter(|(trial, _, _)| front.contains(&trial.id.number))
        .map(|(_, px, py)| (*px, *py))
        .collect();
    stairs.sort_by(|a, b| x_direction.loss(a.0).total_cmp(&x_direction.loss(b.0)));
    let mut path = Vec::new();
    for (index, (px, py)) in stairs.iter().enumerate() {
        if index > 0 {
            path.push(format!("{:.1},{:.1}", x.at(*px), y.at(stairs[index - 1].1)));
        }
        path.push(format!("{:.1},{:.1}", x.at(*px), y.at(*py)));
    }
    // With more objectives the front, projected on two of them, is no staircase.
    if path.len() > 1 && objective.also.len() == 1 {
        svg.push_str(&format!(
            "<polyline class=\"front\" fill=\"none\" stroke=\"#e8710a\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        ));
    }
    for (trial, px, py) in &points {
        let on_front = front.contains(&trial.id.number);
        let (fill, stroke, radius) = match (on_front, trial.feasible) {
            (true, _) => ("#e8710a", "#e8710a", 4.5),
            (false, true) => ("none", "#1a73e8", 3.5),
            (false, false) => ("none", "#999", 3.5),
        };
        svg.push_str(&format!(
            "<circle data-trial=\"{}\" data-front=\"{on_front}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"{radius}\" fill=\"{fill}\" stroke=\"{stroke}\"><title>{} {x_metric}={} {y_metric}={}</title></circle>",
            trial.id.number,
            x.at(*px),
            y.at(*py),
            trial.id,
            tick_label(*px),
            tick_label(*py)
        ));
    }
    svg.push_str("</svg>");
    Some(Plot {
        id: "front",
        title,
        svg,
    })
}

fn direction_word(direction: Direction) -> &'static str {
    match direction {
        Direction::Minimize => "lower is better",
        Direction::Maximize => "higher is better",
    }
}

/// One vertical axis per parameter and one for the objective; a line per trial, coloured
/// from best (blue) to worst (yellow).
pub fn parallel_coordinates(spec: &SweepSpec, trials: &[TrialRecord]) -> Plot {
    let metric = &spec.objective.metric;
    let title = format!("Parallel coordinates: parameters and {metric}");
    let points = scored(trials);
    let names: Vec<&String> = crate::parameter_names(spec, trials);
    if points.is_empty() || names.is_empty() {
        return empty("parallel", title, "no trial has reported the objective yet");
    }
    let axes_count = names.len() + 1;
    let step = (WIDTH - LEFT - RIGHT) / (axes_count.max(2) - 1) as f64;
    let axis_x = |index: usize| LEFT + step * index as f64;
    let (top, bottom) = (TOP + 16.0, HEIGHT - BOTTOM);
    let mut svg = open("parallel", &title);
    // Each parameter's axis maps its values onto [0, 1].
    let mappers: Vec<BTreeMap<String, f64>> = names
        .iter()
        .map(|name| numeric_axis(spec, name, trials))
        .collect();
    for (index, name) in names
        .iter()
        .map(|name| name.as_str())
        .chain([metric.as_str()])
        .enumerate()
    {
        let px = axis_x(index);
        svg.push_str(&format!(
            "<line x1=\"{px:.1}\" y1=\"{top}\" x2=\"{px:.1}\" y2=\"{bottom}\" stroke=\"#444\"/>\
<text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\" class=\"axis-name\">{}</text>",
            bottom + 18.0,
            escape(name)
        ));
    }
    let objective = range(points.iter().map(|(_, value)| *value)).unwrap_or((0.0, 1.0));
    // Values along each axis: a parameter's values where it has few (every choice), its
    // lowest, middle and highest where it has many; round ticks on the objective's axis.
    let value_label = |px: f64, py: f64, text: &str| {
        format!(
            "<text class=\"axis-value\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" paint-order=\"stroke\" stroke=\"#fff\" stroke-width=\"3\">{}</text>",
            px + 4.0,
            py + 3.5,
            escape(text)
        )
    };
    for (index, mapper) in mappers.iter().enumerate() {
        let mut marks: Vec<(&String, f64)> = mapper.iter().map(|(key, at)| (key, *at)).collect();
        marks.sort_by(|a, b| a.1.total_cmp(&b.1));
        if marks.len() > 6 {
            let middle = marks
                .iter()
                .min_by(|a, b| (a.1 - 0.5).abs().total_cmp(&(b.1 - 0.5).abs()))
                .copied();
            let (first, last) = (marks[0], marks[marks.len() - 1]);
            marks = [Some(first), middle, Some(last)]
                .into_iter()
                .flatten()
                .collect();
        }
        for (key, at) in marks {
            let text = key.parse::<f64>().map_or(key.clone(), tick_label);
            svg.push_str(&value_label(
                axis_x(index),
                bottom - at * (bottom - top),
                &text,
            ));
        }
    }
    let objective_scale = Scale::new(objective, bottom, top);
    for value in ticks(objective.0, objective.1, false) {
        svg.push_str(&value_label(
            axis_x(names.len()),
            objective_scale.at(value),
            &tick_label(value),
        ));
    }
    let mut order: Vec<f64> = points
        .iter()
        .map(|(_, value)| spec.objective.direction.loss(*value))
        .collect();
    order.sort_by(f64::total_cmp);
    for (trial, value) in &points {
        let mut coordinates = Vec::new();
        for (index, (name, mapper)) in names.iter().zip(&mappers).enumerate() {
            let Some(position) = trial
                .params
                .get(name.as_str())
                .and_then(|value| mapper.get(&crate::param_key(value)))
            else {
                continue;
            };
            coordinates.push(format!(
                "{:.1},{:.1}",
                axis_x(index),
                bottom - position * (bottom - top)
            ));
        }
        coordinates.push(format!(
            "{:.1},{:.1}",
            axis_x(names.len()),
            objective_scale.at(*value)
        ));
        let loss = spec.objective.direction.loss(*value);
        let rank =
            order.partition_point(|other| *other < loss) as f64 / (order.len().max(2) - 1) as f64;
        svg.push_str(&format!(
            "<polyline data-trial=\"{}\" fill=\"none\" stroke=\"{}\" stroke-opacity=\"0.7\" points=\"{}\"><title>{}</title></polyline>",
            trial.id.number,
            color(rank),
            coordinates.join(" "),
            trial.id
        ));
    }
    svg.push_str("</svg>");
    Plot {
        id: "parallel",
        title,
        svg,
    }
}

/// One bar per parameter: the share of the objective's variance it explains on its own.
pub fn parameter_importance(importance: &[(String, f64)]) -> Plot {
    let title = "Parameter importance (share of variance explained, η²)".to_string();
    if importance.is_empty() {
        return empty(
            "importance",
            title,
            "needs at least four trials with the objective and a varied parameter",
        );
    }
    let mut svg = open("importance", &title);
    let band = (HEIGHT - TOP - BOTTOM) / importance.len() as f64;
    let bar = (band * 0.7).min(28.0);
    let left = 170.0;
    let scale = Scale::new((0.0, 1.0), left, WIDTH - RIGHT - 48.0);
    for (index, (name, share)) in importance.iter().enumerate() {
        let y = TOP + 8.0 + band * index as f64;
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
<rect data-param=\"{}\" x=\"{left}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bar:.1}\" fill=\"#1a73e8\"/>\
<text x=\"{:.1}\" y=\"{:.1}\">{:.0}%</text>",
            left - 8.0,
            y + bar / 2.0 + 4.0,
            escape(name),
            escape(name),
            scale.at(*share) - left,
            scale.at(*share) + 6.0,
            y + bar / 2.0 + 4.0,
            share * 100.0
        ));
    }
    svg.push_str("</svg>");
    Plot {
        id: "importance",
        title,
        svg,
    }
}

/// The objective by step for each trial that reported one; the best trial drawn on top.
pub fn learning_curves(curves: &[LearningCurve], best: Option<u32>) -> Plot {
    let metric = curves
        .first()
        .map_or("objective", |curve| curve.metric.as_str());
    let title = format!("Learning curves: {metric} by step");
    let points = || curves.iter().flat_map(|curve| curve.points.iter());
    let (Some(x_range), Some(y_range)) = (
        range(points().map(|(step, _)| *step as f64)),
        range(points().map(|(_, value)| *value)),
    ) else {
        return empty(
            "curves",
            title,
            "no learning curve recorded (curves are kept while a leader holds the sweep)",
        );
    };
    let x = Scale::new(x_range, LEFT + 8.0, WIDTH - RIGHT - 8.0);
    let y = Scale::new(y_range, HEIGHT - BOTTOM - 8.0, TOP + 8.0);
    let mut svg = open("curves", &title);
    axes(&mut svg, x, y, "step", metric, true);
    // One entry per trial, its stretches in order (several when it paused at ASHA rungs).
    let mut trials: Vec<(u32, Vec<&LearningCurve>)> = Vec::new();
    for curve in curves {
        match trials.iter_mut().find(|(trial, _)| *trial == curve.trial) {
            Some((_, stretches)) => stretches.push(curve),
            None => trials.push((curve.trial, vec![curve])),
        }
    }
    trials.sort_by_key(|(trial, _)| Some(*trial) == best);
    let mut paused = false;
    for (trial, stretches) in trials {
        let highlighted = Some(trial) == best;
        let (stroke, width, opacity) = if highlighted {
            ("#e8710a", 2.5, 1.0)
        } else {
            ("#1a73e8", 1.0, 0.45)
        };
        let at = |(step, value): &(u64, f64)| (x.at(*step as f64), y.at(*value));
        for (index, curve) in stretches.iter().enumerate() {
            let coordinates: Vec<String> = curve
                .points
                .iter()
                .map(|point| {
                    let (cx, cy) = at(point);
                    format!("{cx:.1},{cy:.1}")
                })
                .collect();
            svg.push_str(&format!(
                "<polyline data-trial=\"{trial}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"{width}\" stroke-opacity=\"{opacity}\" points=\"{}\"><title>trial {trial}</title></polyline>",
                coordinates.join(" "),
            ));
            // A single point draws no line: mark it.
            if let [point] = curve.points.as_slice() {
                let (cx, cy) = at(point);
                svg.push_str(&format!(
                    "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"3\" fill=\"{stroke}\" fill-opacity=\"{opacity}\"/>"
                ));
            }
            // Where the trial paused: an open marker, and a dashed line to where its promoted
            // attempt resumed.
            let (Some(end), Some(next)) = (
                curve.points.last(),
                stretches
                    .get(index + 1)
                    .and_then(|next| next.points.first()),
            ) else {
                continue;
            };
            paused = true;
            let ((x1, y1), (x2, y2)) = (at(end), at(next));
            svg.push_str(&format!(
                "<line class=\"resume\" x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{stroke}\" stroke-width=\"{width}\" stroke-opacity=\"{opacity}\" stroke-dasharray=\"3 3\"/>"
            ));
            svg.push_str(&format!(
                "<circle class=\"pause\" data-trial=\"{trial}\" cx=\"{x1:.1}\" cy=\"{y1:.1}\" r=\"4\" fill=\"#ffffff\" stroke=\"{stroke}\" stroke-width=\"1.5\" stroke-opacity=\"{opacity}\"><title>trial {trial} paused at step {} (ASHA rung {}); promoted, it resumed from its checkpoint at step {}</title></circle>",
                end.0,
                index + 1,
                next.0
            ));
        }
    }
    if paused {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5f6368\">○ paused at an ASHA rung · dashed: resumed from its checkpoint</text>",
            WIDTH - RIGHT,
            TOP - 6.0
        ));
    }
    svg.push_str("</svg>");
    Plot {
        id: "curves",
        title,
        svg,
    }
}

/// A benchmark's growth curve: one or more series of `y_label` values measured at each of
/// `xs` (the sizes tried: stored trials, agents, sweeps), drawn evenly spaced and labelled
/// with their values, since the sizes span orders of magnitude.
pub fn growth_curve(
    title: &str,
    x_label: &str,
    y_label: &str,
    xs: &[String],
    series: &[(&str, Vec<f64>)],
) -> Plot {
    const COLORS: [&str; 4] = ["#1f5fb4", "#d9711c", "#2e9b4f", "#9b2e8a"];
    if xs.is_empty() || series.is_empty() {
        return empty("growth", title.to_string(), "no measurements");
    }
    let mut svg = open("growth", title);
    let high = range(series.iter().flat_map(|(_, ys)| ys.iter().copied()))
        .map_or(1.0, |(_, high)| high.max(f64::MIN_POSITIVE));
    let x = Scale::new(
        (0.0, (xs.len() - 1) as f64),
        LEFT + 24.0,
        WIDTH - RIGHT - 24.0,
    );
    let y = Scale::new((0.0, high * 1.1), HEIGHT - BOTTOM, TOP);
    let y0 = HEIGHT - BOTTOM;
    frame(&mut svg);
    for (index, label) in xs.iter().enumerate() {
        let px = x.at(index as f64);
        svg.push_str(&format!(
            "<text class=\"tick x\" x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            y0 + 16.0,
            escape(label)
        ));
    }
    y_ticks(&mut svg, y);
    titles(&mut svg, x_label, y_label);
    for (index, (name, ys)) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let points: Vec<(f64, f64)> = ys
            .iter()
            .enumerate()
            .filter(|(_, value)| value.is_finite())
            .map(|(at, value)| (x.at(at as f64), y.at(*value)))
            .collect();
        let path: Vec<String> = points
            .iter()
            .map(|(px, py)| format!("{px:.1},{py:.1}"))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        ));
        for ((px, py), value) in points.iter().zip(ys.iter().filter(|v| v.is_finite())) {
            svg.push_str(&format!(
                "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3.5\" fill=\"{color}\" data-series=\"{}\" data-value=\"{value}\"/>",
                escape(name)
            ));
        }
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/>\
<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            WIDTH - RIGHT - 190.0,
            TOP + 4.0 + 16.0 * index as f64,
            WIDTH - RIGHT - 174.0,
            TOP + 13.0 + 16.0 * index as f64,
            escape(name)
        ));
    }
    svg.push_str("</svg>");
    Plot {
        id: "growth",
        title: title.to_string(),
        svg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_whole_on_integer_axes() {
        assert_eq!(ticks(0.0, 23.0, true), vec![0.0, 5.0, 10.0, 15.0, 20.0]);
        // Four trials: whole steps, not 0.75, 1.5, 2.25.
        assert_eq!(ticks(0.0, 3.0, true), vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(ticks(1.0, 2.0, true), vec![1.0, 2.0]);
        assert_eq!(ticks(0.81, 0.885, false), vec![0.82, 0.84, 0.86, 0.88]);
        assert_eq!(ticks(-3.0, 0.0, false), vec![-3.0, -2.0, -1.0, 0.0]);
        assert_eq!(ticks(0.5, 0.5, true), vec![0.5]);
        assert!(ticks(f64::NAN, 1.0, false).is_empty());
        for (low, high) in [(1e-6, 3e-5), (12.0, 9876.0), (-0.2, 0.1)] {
            let values = ticks(low, high, false);
            assert!(
                (2..=12).contains(&values.len()),
                "{low}..{high}: {values:?}"
            );
            assert!(
                values
                    .iter()
                    .all(|v| *v >= low - 1e-12 && *v <= high + 1e-12)
            );
        }
    }

    #[test]
    fn ticks_read_well() {
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(94.3621), "94.4");
        assert_eq!(tick_label(1234.5), "1234");
        assert_eq!(tick_label(1e-6), "1.00e-6");
    }

    #[test]
    fn a_trial_that_paused_shows_where_it_paused_and_resumed() {
        let stretch = |points: &[(u64, f64)]| LearningCurve {
            trial: 3,
            metric: "accuracy".into(),
            points: points.to_vec(),
        };
        let curves = [
            stretch(&[(1, 0.5), (2, 0.6)]),
            stretch(&[(3, 0.7), (6, 0.8)]),
            LearningCurve {
                trial: 4,
                metric: "accuracy".into(),
                points: vec![(1, 0.4), (2, 0.45)],
            },
        ];
        let plot = learning_curves(&curves, Some(3));
        assert_eq!(plot.svg.matches("<polyline data-trial=\"3\"").count(), 2);
        assert_eq!(plot.svg.matches("class=\"pause\"").count(), 1);
        assert_eq!(plot.svg.matches("class=\"resume\"").count(), 1);
        assert!(plot.svg.contains("trial 3 paused at step 2 (ASHA rung 1)"));
        assert!(plot.svg.contains("resumed from its checkpoint at step 3"));
        // The best trial is drawn last (on top), after the other one.
        let other = plot.svg.find("data-trial=\"4\"").expect("trial 4");
        let best = plot.svg.find("data-trial=\"3\"").expect("trial 3");
        assert!(other < best);

        let unpaused = learning_curves(&curves[2..], None);
        assert!(!unpaused.svg.contains("class=\"pause\""));
        assert!(!unpaused.svg.contains("paused at an ASHA rung"));
    }

    #[test]
    fn a_flat_range_maps_to_the_middle() {
        let scale = Scale::new((2.0, 2.0), 0.0, 100.0);
        assert_eq!(scale.at(2.0), 50.0);
    }

    #[test]
    fn a_growth_curve_marks_every_measurement_of_every_series() {
        let xs: Vec<String> = ["0", "10k", "100k"].map(String::from).to_vec();
        let plot = growth_curve(
            "Takeover",
            "stored trials",
            "seconds",
            &xs,
            &[
                ("p50", vec![2.1, 2.2, f64::NAN]),
                ("p99", vec![2.5, 2.6, 2.9]),
            ],
        );
        assert_eq!(plot.svg.matches("data-series=\"p50\"").count(), 2);
        assert_eq!(plot.svg.matches("data-series=\"p99\"").count(), 3);
        assert!(plot.svg.contains(">100k</text>"));
        assert!(
            growth_curve("t", "x", "y", &[], &[])
                .svg
                .contains("no measurements")
        );
    }
}
