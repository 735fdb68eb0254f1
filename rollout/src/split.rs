//! How the router splits requests between the baseline and the canary.
//!
//! A request with a key (a user or session id) goes to the canary when the key's hash falls
//! below the canary's weight: the same key always gets the same version at a given weight,
//! and a key that reached the canary stays there as the weight grows (1% → 10% → 50%), so
//! a user never flips back and forth during a rollout. A request without a key is split by a
//! uniform draw the caller supplies.

use serde::{Deserialize, Serialize};

/// Which version serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Baseline,
    Canary,
}

/// The canary's share of traffic, in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Split {
    canary_weight: f64,
}

impl Split {
    /// Everything to the baseline: before a rollout and after a rollback.
    pub const BASELINE_ONLY: Split = Split { canary_weight: 0.0 };
    /// Everything to the canary: after a promotion.
    pub const CANARY_ONLY: Split = Split { canary_weight: 1.0 };

    /// A weight outside [0, 1] (or NaN) is clamped into it (NaN: baseline only).
    pub fn new(canary_weight: f64) -> Split {
        let canary_weight = if canary_weight.is_nan() {
            0.0
        } else {
            canary_weight.clamp(0.0, 1.0)
        };
        Split { canary_weight }
    }

    pub fn canary_weight(&self) -> f64 {
        self.canary_weight
    }

    /// The side for a request: by its key when it has one, else by `uniform` (a draw in
    /// [0, 1) the caller makes).
    pub fn route(&self, key: Option<&str>, uniform: f64) -> Side {
        let point = match key {
            Some(key) => key_point(key),
            None => uniform,
        };
        if point < self.canary_weight {
            Side::Canary
        } else {
            Side::Baseline
        }
    }
}

/// A key's fixed point in [0, 1): FNV-1a over its bytes, finished with a 64-bit mixer so
/// that similar keys (user-1, user-2…) spread evenly.
fn key_point(key: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    // The top 53 bits as a fraction: exactly representable, below 1.
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> impl Iterator<Item = String> {
        (0..20_000).map(|n| format!("user-{n}"))
    }

    #[test]
    fn keyed_requests_follow_the_weight() {
        for weight in [0.01, 0.10, 0.50] {
            let split = Split::new(weight);
            let canary = keys()
                .filter(|key| split.route(Some(key), 0.0) == Side::Canary)
                .count();
            let share = canary as f64 / 20_000.0;
            // Binomial standard deviation at n = 20,000 is at most 0.0036; allow 4 of them.
            assert!(
                (share - weight).abs() < 0.015,
                "weight {weight}: {share} of keys on the canary"
            );
        }
    }

    #[test]
    fn a_key_keeps_its_side_and_never_leaves_the_canary_as_the_weight_grows() {
        let stages = [0.01, 0.10, 0.50, 1.0].map(Split::new);
        for key in keys() {
            let sides: Vec<Side> = stages.iter().map(|s| s.route(Some(&key), 0.9)).collect();
            assert_eq!(sides, stages.map(|s| s.route(Some(&key), 0.1)).to_vec());
            if let Some(first) = sides.iter().position(|side| *side == Side::Canary) {
                assert!(
                    sides[first..].iter().all(|side| *side == Side::Canary),
                    "{key}: {sides:?}"
                );
            }
            assert_eq!(sides[3], Side::Canary, "at 100% every key is on the canary");
        }
    }

    #[test]
    fn unkeyed_requests_use_the_draw_and_the_ends_are_absolute() {
        let split = Split::new(0.1);
        assert_eq!(split.route(None, 0.05), Side::Canary);
        assert_eq!(split.route(None, 0.15), Side::Baseline);
        for key in keys().take(1000) {
            assert_eq!(Split::BASELINE_ONLY.route(Some(&key), 0.0), Side::Baseline);
            assert_eq!(Split::CANARY_ONLY.route(Some(&key), 0.99), Side::Canary);
        }
        assert_eq!(Split::new(f64::NAN), Split::BASELINE_ONLY);
        assert_eq!(Split::new(7.0), Split::CANARY_ONLY);
    }
}
