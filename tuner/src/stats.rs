//! The normal distribution in log space, and log expected improvement.
//!
//! Expected improvement underflows to exactly zero a few standard deviations away from the
//! incumbent, which leaves an optimizer on a flat surface. Following Ament et al., *Unexpected
//! Improvements to Expected Improvement for Bayesian Optimization* (NeurIPS 2023), everything
//! here is computed in log space with `erfcx` (the scaled complementary error function) in the
//! tails, so the acquisition and its gradient stay finite and informative down to `z ≈ -1e8`.

use std::f64::consts::{PI, SQRT_2};

/// `ln(2π) / 2`.
const HALF_LN_2PI: f64 = 0.918_938_533_204_672_7;

/// `exp(x²) · erfc(x)`, accurate for every `x` (the asymptotic series where `erfc` underflows).
pub fn erfcx(x: f64) -> f64 {
    if x < 0.0 {
        // erfc(-y) = 2 - erfc(y); only used for small |x| here, where exp(x²) is tame.
        return 2.0 * (x * x).exp() - erfcx(-x);
    }
    if x < 25.0 {
        return (x * x).exp() * libm::erfc(x);
    }
    // 1/(x√π) · (1 - 1/(2x²) + 3/(4x⁴) - 15/(8x⁶) + 105/(16x⁸)); the next term is < 1e-13.
    let inv2 = 1.0 / (x * x);
    let series =
        1.0 - 0.5 * inv2 + 0.75 * inv2 * inv2 - 1.875 * inv2.powi(3) + 6.5625 * inv2.powi(4);
    series / (x * PI.sqrt())
}

/// `ln φ(z)` for the standard normal density.
pub fn log_pdf(z: f64) -> f64 {
    -0.5 * z * z - HALF_LN_2PI
}

/// `Φ(z)`, the standard normal distribution function.
pub fn cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / SQRT_2)
}

/// `ln Φ(z)`, finite for every finite `z`.
pub fn log_cdf(z: f64) -> f64 {
    if z > -1.0 {
        // Φ(z) ≥ 0.158: the direct form is exact enough, and ln_1p keeps precision near 1.
        (-0.5 * libm::erfc(z / SQRT_2)).ln_1p()
    } else {
        (0.5 * erfcx(-z / SQRT_2)).ln() - 0.5 * z * z
    }
}

/// `ln(1 - exp(a))` for `a < 0`, without cancellation.
fn log1mexp(a: f64) -> f64 {
    if a > -std::f64::consts::LN_2 {
        (-a.exp_m1()).ln()
    } else {
        (-a.exp()).ln_1p()
    }
}

/// `ln h(z)` with `h(z) = φ(z) + z Φ(z)`: expected improvement of a unit normal over `-z`.
pub fn log_h(z: f64) -> f64 {
    if z > -1.0 {
        return (z.mul_add(cdf(z), log_pdf(z).exp())).ln();
    }
    if z > -1.0 / f64::EPSILON.sqrt() {
        // h(z) = φ(z) (1 - |z| √(π/2) erfcx(-z/√2)) for z < 0.
        let half_ln_pi_over_2 = 0.5 * (PI / 2.0).ln();
        let a = (erfcx(-z / SQRT_2) * z.abs()).ln() + half_ln_pi_over_2;
        return -0.5 * z * z - HALF_LN_2PI + log1mexp(a);
    }
    // Asymptotically h(z) ≈ φ(z) / z².
    -0.5 * z * z - HALF_LN_2PI - 2.0 * z.abs().ln()
}

/// `Φ(z) / h(z)`: the derivative of `ln h` at `z`.
pub fn dlog_h(z: f64) -> f64 {
    (log_cdf(z) - log_h(z)).exp()
}

/// `φ(z) / Φ(z)`: the derivative of `ln Φ` at `z` (the inverse Mills ratio).
pub fn dlog_cdf(z: f64) -> f64 {
    (log_pdf(z) - log_cdf(z)).exp()
}

/// Log expected improvement below `best` (minimization) of a normal `N(mean, sd²)`, with its
/// derivatives with respect to `mean` and `sd`.
pub fn log_ei(mean: f64, sd: f64, best: f64) -> (f64, f64, f64) {
    let z = (best - mean) / sd;
    let value = sd.ln() + log_h(z);
    let ratio = dlog_h(z);
    (value, -ratio / sd, (1.0 - ratio * z) / sd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values printed to 17 significant digits, more than an f64 holds.
    #[allow(clippy::excessive_precision)]
    /// `ln h(z)` computed with mpmath at 60 significant digits
    /// (`mp.log(mp.npdf(z) + z * mp.ncdf(z))`), printed to 17.
    const LOG_H_REFERENCE: &[(f64, f64)] = &[
        (8.0, 2.079_441_541_679_835_9),
        (2.0, 0.697_383_545_788_228_31),
        (0.5, -0.359_827_683_745_063_82),
        (0.0, -0.918_938_533_204_672_74),
        (-0.5, -1.620_516_264_387_319_9),
        (-0.999, -2.483_217_115_447_585_4),
        (-1.0, -2.485_121_025_712_641_3),
        (-1.001, -2.487_025_657_955_389_2),
        (-2.0, -4.768_783_523_917_114_2),
        (-5.0, -16.744_301_162_660_99),
        (-10.0, -55.553_122_036_122_356),
        (-25.0, -319.861_463_581_495_95),
        (-40.0, -808.298_568_356_619_96),
        (-100.0, -5_010.129_578_800_249_8),
        (-1000.0, -500_014.734_452_091_16),
        (-1e5, -5_000_000_023.944_789_5),
        (-1e9, -5.000_000_000_000_000_4e17),
    ];

    #[allow(clippy::excessive_precision)]
    /// `ln Φ(z)` from mpmath (`mp.log(mp.ncdf(z))`).
    const LOG_CDF_REFERENCE: &[(f64, f64)] = &[
        (3.0, -0.001_350_809_964_748_193_8),
        (0.0, -std::f64::consts::LN_2),
        (-1.0, -1.841_021_645_009_263_5),
        (-3.0, -6.607_726_221_510_349_5),
        (-10.0, -53.231_285_150_512_471),
        (-40.0, -804.608_442_013_753_79),
        (-300.0, -45_006.622_732_118_663),
    ];

    fn assert_close(name: &str, z: f64, got: f64, want: f64) {
        let error = (got - want).abs() / want.abs().max(1.0);
        assert!(
            error < 1e-12,
            "{name}({z}) = {got}, reference {want}, error {error:e}"
        );
    }

    #[test]
    fn log_h_matches_a_high_precision_reference() {
        for &(z, want) in LOG_H_REFERENCE {
            assert_close("log_h", z, log_h(z), want);
        }
    }

    #[test]
    fn log_cdf_matches_a_high_precision_reference() {
        for &(z, want) in LOG_CDF_REFERENCE {
            assert_close("log_cdf", z, log_cdf(z), want);
        }
    }

    #[test]
    fn log_h_is_smooth_and_increasing_across_its_branches() {
        let mut previous = f64::NEG_INFINITY;
        let mut z = -200.0;
        while z < 10.0 {
            let value = log_h(z);
            assert!(value.is_finite() && value > previous, "ln h({z}) = {value}");
            // The derivative Φ/h agrees with a central difference.
            let step = 1e-5 * z.abs().max(1.0);
            let numeric = (log_h(z + step) - log_h(z - step)) / (2.0 * step);
            let error = (numeric - dlog_h(z)).abs() / dlog_h(z).max(1.0);
            assert!(error < 1e-5, "d ln h({z}): {numeric} vs {}", dlog_h(z));
            previous = value;
            z += 0.37;
        }
    }

    #[test]
    fn log_ei_gradients_match_differences() {
        for &(mean, sd, best) in &[(0.3, 0.2, 0.1), (0.0, 1.0, 0.5), (5.0, 0.1, -1.0)] {
            let (value, d_mean, d_sd) = log_ei(mean, sd, best);
            let step = 1e-6;
            let numeric_mean =
                (log_ei(mean + step, sd, best).0 - log_ei(mean - step, sd, best).0) / (2.0 * step);
            let numeric_sd =
                (log_ei(mean, sd + step, best).0 - log_ei(mean, sd - step, best).0) / (2.0 * step);
            assert!(value.is_finite());
            assert!((numeric_mean - d_mean).abs() < 1e-4 * d_mean.abs().max(1.0));
            assert!((numeric_sd - d_sd).abs() < 1e-4 * d_sd.abs().max(1.0));
        }
    }
}
