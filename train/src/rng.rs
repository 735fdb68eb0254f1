//! Counter-based random streams.
//!
//! Nothing in training draws from a generator that carries state from one batch to the next:
//! every random choice (initial weights, each epoch's data order, each batch's augmentation,
//! dropout and masks) comes from its own ChaCha8 stream keyed by `(seed, purpose, a, b)`,
//! e.g. `(seed, Dropout, epoch, batch)`. The "RNG state" of a checkpoint is therefore the
//! seed plus the position (phase, epoch, next batch): a resumed run draws exactly the numbers
//! the uninterrupted run would have drawn, on any machine, whatever else runs in the process.
//! burn's backend generators are never used (they are global to the process and shared by
//! concurrent trials).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    Init = 1,
    Shuffle = 2,
    Augment = 3,
    Dropout = 4,
    Mask = 5,
    Data = 6,
    Split = 7,
}

/// The stream for `(seed, purpose, a, b)`.
pub fn stream(seed: u64, purpose: Stream, a: u64, b: u64) -> ChaCha8Rng {
    let mut state = seed ^ 0x6a09_e667_f3bc_c908;
    let mut key = [0u8; 32];
    let words = [purpose as u64, a, b, 0x9e37_79b9_7f4a_7c15];
    for (chunk, word) in key.chunks_exact_mut(8).zip(words) {
        state = splitmix(state ^ word);
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let draw = |seed, purpose, a, b| stream(seed, purpose, a, b).random::<u64>();
        assert_eq!(
            draw(1, Stream::Dropout, 3, 4),
            draw(1, Stream::Dropout, 3, 4)
        );
        assert_ne!(
            draw(1, Stream::Dropout, 3, 4),
            draw(1, Stream::Dropout, 4, 3)
        );
        assert_ne!(
            draw(1, Stream::Dropout, 3, 4),
            draw(2, Stream::Dropout, 3, 4)
        );
        assert_ne!(draw(1, Stream::Dropout, 3, 4), draw(1, Stream::Mask, 3, 4));
    }
}
