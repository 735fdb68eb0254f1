//! On-the-fly augmentation and pre-training masks, computed on the host per batch from the
//! batch's own random stream.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::data::normal;

/// Knots of the random speed curve per series.
const WARP_KNOTS: usize = 4;

/// Time warping (Um et al., 2017): each series is resampled along a smoothly distorted time
/// axis. A speed curve through `WARP_KNOTS + 2` knots drawn from N(1, σ) (clamped positive)
/// is interpolated over the steps and integrated into a monotone warped time in
/// `[0, seq_len − 1]`; every feature is read there by linear interpolation. σ = 0 leaves the
/// series unchanged.
pub fn time_warp(
    series: &mut [f32],
    seq_len: usize,
    features: usize,
    sigma: f64,
    rng: &mut ChaCha8Rng,
) {
    if sigma <= 0.0 || seq_len < 3 {
        return;
    }
    let knots: Vec<f64> = (0..WARP_KNOTS + 2)
        .map(|_| (1.0 + sigma * f64::from(normal(rng))).max(0.05))
        .collect();
    // Speed at each step, by linear interpolation between evenly spaced knots.
    let speed: Vec<f64> = (0..seq_len)
        .map(|step| {
            let position = step as f64 / (seq_len - 1) as f64 * (knots.len() - 1) as f64;
            let left = (position.floor() as usize).min(knots.len() - 2);
            let fraction = position - left as f64;
            knots[left] * (1.0 - fraction) + knots[left + 1] * fraction
        })
        .collect();
    let mut warped = vec![0.0; seq_len];
    for step in 1..seq_len {
        warped[step] = warped[step - 1] + speed[step];
    }
    let scale = (seq_len - 1) as f64 / warped[seq_len - 1];
    let original = series.to_vec();
    for (step, time) in warped.iter().enumerate() {
        let time = (time * scale).clamp(0.0, (seq_len - 1) as f64);
        let left = (time.floor() as usize).min(seq_len - 2);
        let fraction = (time - left as f64) as f32;
        for feature in 0..features {
            let a = original[left * features + feature];
            let b = original[(left + 1) * features + feature];
            series[step * features + feature] = a + (b - a) * fraction;
        }
    }
}

/// Which time steps of each series are hidden in masked pre-training: each step with
/// probability `ratio`, and at least one per series. Returns `[sample][step]` as 1.0 (masked)
/// or 0.0.
pub fn step_mask(samples: usize, seq_len: usize, ratio: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut mask = vec![0f32; samples * seq_len];
    for row in mask.chunks_exact_mut(seq_len) {
        let mut any = false;
        for value in row.iter_mut() {
            if rng.random_bool(ratio) {
                *value = 1.0;
                any = true;
            }
        }
        if !any {
            row[rng.random_range(0..seq_len)] = 1.0;
        }
    }
    mask
}

/// An inverted-dropout mask: each entry kept with probability `1 − p` and scaled by
/// `1 / (1 − p)`.
pub fn dropout_mask(len: usize, p: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    (0..len)
        .map(|_| if rng.random_bool(keep) { scale } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Stream, stream};

    #[test]
    fn time_warp_keeps_endpoints_and_range_and_is_seeded() {
        let (seq_len, features) = (32, 2);
        let original: Vec<f32> = (0..seq_len * features)
            .map(|i| (i / features) as f32)
            .collect();
        let mut a = original.clone();
        let mut b = original.clone();
        time_warp(
            &mut a,
            seq_len,
            features,
            0.2,
            &mut stream(1, Stream::Augment, 0, 0),
        );
        time_warp(
            &mut b,
            seq_len,
            features,
            0.2,
            &mut stream(1, Stream::Augment, 0, 0),
        );
        assert_eq!(a, b);
        assert_ne!(a, original);
        // A ramp stays a monotone ramp from 0 to seq_len - 1.
        assert_eq!(a[0], 0.0);
        assert!((a[(seq_len - 1) * features] - (seq_len - 1) as f32).abs() < 1e-4);
        for step in 1..seq_len {
            assert!(a[step * features] >= a[(step - 1) * features]);
        }
        let mut unchanged = original.clone();
        time_warp(
            &mut unchanged,
            seq_len,
            features,
            0.0,
            &mut stream(1, Stream::Augment, 0, 0),
        );
        assert_eq!(unchanged, original);
    }

    #[test]
    fn every_series_gets_at_least_one_masked_step() {
        let mask = step_mask(50, 10, 0.01, &mut stream(3, Stream::Mask, 0, 0));
        for row in mask.chunks_exact(10) {
            assert!(row.iter().sum::<f32>() >= 1.0);
        }
    }
}
