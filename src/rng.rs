//! Every random stream of a run, named in one place. A stream is a ChaCha12 `StdRng`
//! seeded from the run's seed and a few words mixed with SplitMix64, so draws depend only on
//! (seed, position, purpose): never on thread scheduling, on how the work is split, or on
//! where a resumed run started. StdRng is reproducible for a given version of `rand`.
//!
//! Two families, with the words each mixes:
//! - training steps (`step_rng`): (seed, step, micro-batch, purpose), purposes below;
//! - images of a training step (`image_rng`): (seed, step, the image's place in the step's
//!   global batch, purpose), so that how the ranks split a batch (`dist`) changes no draw;
//! - data samples (`sample_rng`): (seed, epoch, sample index, stream), streams below.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// SplitMix64's finaliser of x + the golden-ratio increment.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Purposes of the per-step streams of `sop train`.
/// The anchor permutations of the prototype tasks.
pub const STEP_DRAWS: u64 = 1;
/// Per image (`image_rng`): drop-path masks of the student on the global crops, and on the
/// local crops.
pub const IMAGE_DROP_PATH_GLOBAL: u64 = 2;
pub const IMAGE_DROP_PATH_LOCAL: u64 = 5;
/// Per image (`image_rng`): the patch row it leaves in the patch bank.
pub const IMAGE_BANK_PATCH: u64 = 3;
/// Initial weights and banks (step 0).
pub const STEP_INIT: u64 = 4;
/// The kept anchors of tasks with support embeddings (101 rather than 5: the value runs
/// have always used, so their draws stay the same).
pub const STEP_KEEP: u64 = 101;

/// The seed of (seed, a, b, c): z ← splitmix64(z + v·0xD1B5…) for each word v.
pub fn stream_seed(seed: u64, a: u64, b: u64, c: u64) -> u64 {
    let mut z = seed;
    for v in [a, b, c] {
        z = splitmix64(z.wrapping_add(v.wrapping_mul(0xD1B5_4A32_D192_ED03)));
    }
    z
}

/// The stream of one purpose in one micro-batch of one step.
pub fn step_rng(seed: u64, step: usize, micro: usize, purpose: u64) -> StdRng {
    StdRng::seed_from_u64(stream_seed(seed, step as u64, micro as u64, purpose))
}

/// The stream of one purpose for the image at `place` of one step's global batch
/// (`dist::layout::Shard::image_place`). The third word's top bit keeps these streams apart
/// from `step_rng`'s.
pub fn image_rng(seed: u64, step: usize, place: u64, purpose: u64) -> StdRng {
    StdRng::seed_from_u64(stream_seed(seed, step as u64, place, purpose | 1 << 63))
}

/// Streams of one data sample: view `v`'s crop and colour draws use `VIEW + v`, its mask
/// `MASK + v`; the epoch's shuffle uses `SHUFFLE` with index 0, `sop preview` `PREVIEW`.
pub const STREAM_VIEW: u64 = 0;
pub const STREAM_MASK: u64 = 1 << 20;
pub const STREAM_SHUFFLE: u64 = 1 << 21;
pub const STREAM_PREVIEW: u64 = 1 << 22;

/// The stream of (seed, epoch, sample index, stream): h ← splitmix64(h ^ w) for each word,
/// from h = splitmix64(seed), so neighbouring indices give unrelated streams.
pub fn sample_rng(seed: u64, epoch: u64, index: u64, stream: u64) -> StdRng {
    let mut h = splitmix64(seed);
    for w in [epoch, index, stream] {
        h = splitmix64(h ^ w);
    }
    StdRng::seed_from_u64(h)
}
