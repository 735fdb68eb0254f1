//! Sweep specs in code.

use std::time::Duration;

use flotilla_protocol::ParamValue;
use flotilla_protocol::spec::{
    AlgorithmName, AlgorithmSpec, Budget, Constraint, Direction, Goal, Objective, ParamSpec,
    PhaseSpec, Resources, RetryPolicy, Scheduling, SpecError, SweepSpec, TrialSpec,
};

/// Builds a [`SweepSpec`]; [`SweepBuilder::build`] validates it like a sweep file.
pub struct SweepBuilder {
    spec: SweepSpec,
    constraint_errors: Vec<String>,
}

impl SweepBuilder {
    pub fn new(name: impl Into<String>) -> SweepBuilder {
        SweepBuilder {
            spec: SweepSpec {
                name: name.into(),
                objective: Objective::new(String::new(), Direction::Minimize),
                constraints: Vec::new(),
                space: Default::default(),
                algorithm: AlgorithmSpec::default(),
                budget: Budget {
                    max_trials: 10,
                    max_parallel: 4,
                    max_duration: None,
                },
                trial: TrialSpec::default(),
                resources: Resources::default(),
                retries: RetryPolicy::default(),
                early_stopping: None,
                phases: Vec::new(),
                serving: None,
                warm_start: Vec::new(),
                scheduling: Scheduling::default(),
            },
            constraint_errors: Vec::new(),
        }
    }

    /// The primary objective: `metric`, minimized (replaces an earlier primary objective and
    /// keeps further ones).
    pub fn minimize(mut self, metric: impl Into<String>) -> Self {
        self.spec.objective.metric = metric.into();
        self.spec.objective.direction = Direction::Minimize;
        self
    }

    /// The primary objective: `metric`, maximized.
    pub fn maximize(mut self, metric: impl Into<String>) -> Self {
        self.spec.objective.metric = metric.into();
        self.spec.objective.direction = Direction::Maximize;
        self
    }

    /// A further objective of a multi-objective sweep: the sampler searches the Pareto front
    /// of the primary objective and every one added here.
    pub fn also(mut self, metric: impl Into<String>, direction: Direction) -> Self {
        self.spec.objective.also.push(Goal {
            metric: metric.into(),
            direction,
        });
        self
    }

    /// A constraint written like in sweep files: `"class_1_accuracy >= 0.30"`.
    pub fn constraint(mut self, text: &str) -> Self {
        match text.parse::<Constraint>() {
            Ok(constraint) => self.spec.constraints.push(constraint),
            Err(error) => self.constraint_errors.push(error),
        }
        self
    }

    pub fn param(mut self, name: impl Into<String>, param: ParamSpec) -> Self {
        self.spec.space.insert(name.into(), param);
        self
    }

    pub fn float(self, name: impl Into<String>, low: f64, high: f64) -> Self {
        self.param(name, ParamSpec::float(low, high))
    }

    pub fn log_float(self, name: impl Into<String>, low: f64, high: f64) -> Self {
        self.param(name, ParamSpec::log_float(low, high))
    }

    pub fn int(self, name: impl Into<String>, low: i64, high: i64) -> Self {
        self.param(name, ParamSpec::int(low, high))
    }

    pub fn categorical(
        self,
        name: impl Into<String>,
        choices: impl IntoIterator<Item = ParamValue>,
    ) -> Self {
        self.param(name, ParamSpec::categorical(choices))
    }

    pub fn algorithm(mut self, algorithm: AlgorithmName) -> Self {
        self.spec.algorithm.name = algorithm;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.spec.algorithm.seed = Some(seed);
        self
    }

    pub fn max_trials(mut self, trials: u32) -> Self {
        self.spec.budget.max_trials = trials;
        self
    }

    pub fn max_parallel(mut self, parallel: u32) -> Self {
        self.spec.budget.max_parallel = parallel;
        self
    }

    pub fn max_duration(mut self, duration: Duration) -> Self {
        self.spec.budget.max_duration = Some(duration);
        self
    }

    /// A command trial: `program` with `args` (which may hold `{param}` placeholders).
    pub fn command<I, S>(mut self, program: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.spec.trial.command = Some(program.into());
        self.spec.trial.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// How the sweep's models are served (`[serving]`): a registered version of a trial's
    /// checkpoint runs `spec.command` on the agents that serve it (see docs/trials.md).
    pub fn serving(mut self, spec: flotilla_protocol::spec::ServingSpec) -> Self {
        self.spec.serving = Some(spec);
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.trial.env.insert(name.into(), value.into());
        self
    }

    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.spec.trial.workdir = Some(dir.into());
        self
    }

    /// The metrics the trial reports.
    pub fn metrics<I, S>(mut self, metrics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.spec.trial.metrics = metrics.into_iter().map(Into::into).collect();
        self
    }

    pub fn trial_timeout(mut self, timeout: Duration) -> Self {
        self.spec.trial.timeout = Some(timeout);
        self
    }

    pub fn slots(mut self, slots: u32) -> Self {
        self.spec.resources.slots = slots;
        self
    }

    /// The sweep's weight when sweeps share the cluster (`[scheduling] share`, default 1).
    pub fn share(mut self, share: f64) -> Self {
        self.spec.scheduling.share = share;
        self
    }

    /// The team the sweep counts for (`[scheduling] team`): a team's sweeps divide the
    /// team's share between them.
    pub fn team(mut self, team: impl Into<String>) -> Self {
        self.spec.scheduling.team = Some(team.into());
        self
    }

    pub fn max_retries(mut self, retries: u32) -> Self {
        self.spec.retries.max_retries = retries;
        self
    }

    /// `[retries] max_reschedules`: re-runs after the trial's agent was lost while running
    /// it, before the trial is failed.
    pub fn max_reschedules(mut self, reschedules: u32) -> Self {
        self.spec.retries.max_reschedules = reschedules;
        self
    }

    /// Appends a phase. A phased sweep searches nothing at the top level and sets
    /// `max_trials` per phase, so the first phase clears the builder's default budget.
    pub fn phase(mut self, phase: PhaseSpec) -> Self {
        if self.spec.phases.is_empty() {
            self.spec.budget.max_trials = 0;
        }
        self.spec.phases.push(phase);
        self
    }

    pub fn build(self) -> Result<SweepSpec, SpecError> {
        let origin = format!("sweep '{}'", self.spec.name);
        if let Some(error) = self.constraint_errors.into_iter().next() {
            return Err(SpecError::Syntax {
                origin,
                message: error,
            });
        }
        self.spec
            .validate()
            .map_err(|problems| SpecError::Invalid { origin, problems })?;
        Ok(self.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_makes_a_valid_spec_and_reports_problems() {
        let spec = SweepBuilder::new("b")
            .maximize("accuracy")
            .log_float("lr", 1e-4, 1e-1)
            .int("layers", 1, 3)
            .categorical(
                "opt",
                [
                    ParamValue::Str("adam".into()),
                    ParamValue::Str("sgd".into()),
                ],
            )
            .constraint("accuracy >= 0.5")
            .command("true", Vec::<String>::new())
            .metrics(["accuracy"])
            .max_trials(5)
            .build()
            .expect("valid");
        assert_eq!(spec.space.len(), 3);
        let error = SweepBuilder::new("bad")
            .minimize("loss")
            .command("true", ["x"])
            .metrics(["loss"])
            .max_trials(0)
            .build();
        let message = error.expect_err("invalid").to_string();
        assert!(
            message.contains("space") && message.contains("budget.max_trials"),
            "{message}"
        );
        assert!(
            SweepBuilder::new("c")
                .constraint("nonsense")
                .build()
                .is_err()
        );
    }
}
