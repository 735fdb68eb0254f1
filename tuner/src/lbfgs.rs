//! Projected L-BFGS: minimizes a smooth function with its gradient inside a box.
//!
//! Used for the GP's hyperparameters (log length scales, signal and noise) and for refining
//! the acquisition function over the continuous coordinates. The direction comes from the
//! usual two-loop recursion over the last few steps; each step is projected onto the box and
//! accepted by a backtracking Armijo search. Coordinates pinned at a bound with the gradient
//! pushing outwards are held fixed for the direction, which is what keeps the method stable
//! at the bounds (the "projected" part).

/// Settings of one minimization.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_iterations: usize,
    /// Stop when the projected gradient's largest component is below this.
    pub gradient_tolerance: f64,
    /// Stop when an iteration improves the value by less than this, relatively.
    pub value_tolerance: f64,
    pub memory: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_iterations: 60,
            gradient_tolerance: 1e-6,
            value_tolerance: 1e-9,
            memory: 8,
        }
    }
}

/// What a minimization ended with.
#[derive(Debug, Clone)]
pub struct Minimum {
    pub x: Vec<f64>,
    pub value: f64,
    pub evaluations: usize,
}

/// Minimizes `objective` (which writes the gradient into its second argument and returns the
/// value) from `start` inside `[lower, upper]`. A non-finite value counts as +∞: the line
/// search backs away from it.
pub fn minimize(
    mut objective: impl FnMut(&[f64], &mut [f64]) -> f64,
    start: &[f64],
    lower: &[f64],
    upper: &[f64],
    settings: Settings,
) -> Minimum {
    let n = start.len();
    let project = |x: &mut [f64]| {
        for i in 0..n {
            x[i] = x[i].clamp(lower[i], upper[i]);
        }
    };
    let mut x = start.to_vec();
    project(&mut x);
    let mut gradient = vec![0.0; n];
    let mut value = finite_or_inf(objective(&x, &mut gradient));
    let mut evaluations = 1;
    if !value.is_finite() || gradient.iter().any(|g| !g.is_finite()) {
        return Minimum {
            x,
            value,
            evaluations,
        };
    }
    let mut steps: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::new();
    let mut candidate = vec![0.0; n];
    let mut candidate_gradient = vec![0.0; n];
    for _ in 0..settings.max_iterations {
        // Coordinates at a bound with the gradient pointing out of the box are held.
        let free: Vec<bool> = (0..n)
            .map(|i| {
                !((x[i] <= lower[i] && gradient[i] > 0.0)
                    || (x[i] >= upper[i] && gradient[i] < 0.0))
            })
            .collect();
        let projected_gradient = (0..n)
            .filter(|&i| free[i])
            .map(|i| gradient[i].abs())
            .fold(0.0, f64::max);
        if projected_gradient < settings.gradient_tolerance {
            break;
        }
        let mut direction = two_loop(&gradient, &steps, &free);
        let slope: f64 = (0..n).map(|i| direction[i] * gradient[i]).sum();
        if slope.is_nan() || slope >= 0.0 {
            steps.clear();
            direction = (0..n)
                .map(|i| if free[i] { -gradient[i] } else { 0.0 })
                .collect();
        }
        // First iteration without curvature information: a step of unit length.
        let mut step = if steps.is_empty() {
            1.0 / direction
                .iter()
                .map(|d| d.abs())
                .fold(1e-12, f64::max)
                .max(1.0)
        } else {
            1.0
        };
        let mut accepted = None;
        for _ in 0..30 {
            for i in 0..n {
                candidate[i] = (x[i] + step * direction[i]).clamp(lower[i], upper[i]);
            }
            let candidate_value = finite_or_inf(objective(&candidate, &mut candidate_gradient));
            evaluations += 1;
            // Armijo on the projected step: sufficient decrease along what was really taken.
            let taken: f64 = (0..n).map(|i| gradient[i] * (candidate[i] - x[i])).sum();
            if candidate_value.is_finite()
                && candidate_gradient.iter().all(|g| g.is_finite())
                && candidate_value <= value + 1e-4 * taken.min(0.0)
                && candidate_value < value
            {
                accepted = Some(candidate_value);
                break;
            }
            step *= 0.5;
        }
        let Some(candidate_value) = accepted else {
            break;
        };
        let s: Vec<f64> = (0..n).map(|i| candidate[i] - x[i]).collect();
        let y: Vec<f64> = (0..n)
            .map(|i| candidate_gradient[i] - gradient[i])
            .collect();
        let curvature: f64 = s.iter().zip(&y).map(|(a, b)| a * b).sum();
        let improvement = value - candidate_value;
        let previous = value;
        x.copy_from_slice(&candidate);
        gradient.copy_from_slice(&candidate_gradient);
        value = candidate_value;
        if curvature > 1e-12 {
            steps.push((s, y, 1.0 / curvature));
            if steps.len() > settings.memory {
                steps.remove(0);
            }
        }
        if improvement <= settings.value_tolerance * previous.abs().max(1.0) {
            break;
        }
    }
    Minimum {
        x,
        value,
        evaluations,
    }
}

fn finite_or_inf(value: f64) -> f64 {
    if value.is_nan() { f64::INFINITY } else { value }
}

/// `-H g` by the two-loop recursion, restricted to the free coordinates.
fn two_loop(gradient: &[f64], steps: &[(Vec<f64>, Vec<f64>, f64)], free: &[bool]) -> Vec<f64> {
    let n = gradient.len();
    let mut q: Vec<f64> = (0..n)
        .map(|i| if free[i] { gradient[i] } else { 0.0 })
        .collect();
    let mut alphas = vec![0.0; steps.len()];
    for (k, (s, y, rho)) in steps.iter().enumerate().rev() {
        let alpha = rho * dot_free(s, &q, free);
        alphas[k] = alpha;
        for i in 0..n {
            if free[i] {
                q[i] -= alpha * y[i];
            }
        }
    }
    if let Some((s, y, _)) = steps.last() {
        let gamma = dot_free(s, y, free) / dot_free(y, y, free).max(1e-300);
        if gamma.is_finite() && gamma > 0.0 {
            q.iter_mut().for_each(|v| *v *= gamma);
        }
    }
    for (k, (s, y, rho)) in steps.iter().enumerate() {
        let beta = rho * dot_free(y, &q, free);
        for i in 0..n {
            if free[i] {
                q[i] += s[i] * (alphas[k] - beta);
            }
        }
    }
    q.iter().map(|v| -v).collect()
}

fn dot_free(a: &[f64], b: &[f64], free: &[bool]) -> f64 {
    (0..a.len()).filter(|&i| free[i]).map(|i| a[i] * b[i]).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_minimum_of_rosenbrock() {
        let rosenbrock = |x: &[f64], g: &mut [f64]| {
            let (a, b) = (x[0], x[1]);
            g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            g[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        };
        let settings = Settings {
            max_iterations: 500,
            ..Settings::default()
        };
        let minimum = minimize(
            rosenbrock,
            &[-1.2, 1.0],
            &[-5.0, -5.0],
            &[5.0, 5.0],
            settings,
        );
        assert!((minimum.x[0] - 1.0).abs() < 1e-4, "{minimum:?}");
        assert!((minimum.x[1] - 1.0).abs() < 1e-4, "{minimum:?}");
    }

    #[test]
    fn stops_at_an_active_bound() {
        // Minimum of (x - 2)² + (y + 1)² in [0, 1]²: (1, 0).
        let bowl = |x: &[f64], g: &mut [f64]| {
            g[0] = 2.0 * (x[0] - 2.0);
            g[1] = 2.0 * (x[1] + 1.0);
            (x[0] - 2.0).powi(2) + (x[1] + 1.0).powi(2)
        };
        let minimum = minimize(
            bowl,
            &[0.5, 0.5],
            &[0.0, 0.0],
            &[1.0, 1.0],
            Settings::default(),
        );
        assert_eq!(minimum.x, vec![1.0, 0.0]);
        assert_eq!(minimum.value, 2.0);
    }

    #[test]
    fn a_nan_region_is_avoided_not_entered() {
        let guarded = |x: &[f64], g: &mut [f64]| {
            g[0] = 2.0 * (x[0] - 3.0);
            if x[0] > 2.0 {
                f64::NAN
            } else {
                (x[0] - 3.0).powi(2)
            }
        };
        let minimum = minimize(guarded, &[0.0], &[-10.0], &[10.0], Settings::default());
        assert!(
            minimum.value.is_finite() && minimum.x[0] <= 2.0,
            "{minimum:?}"
        );
    }
}
