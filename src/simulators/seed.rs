//! The deterministic generator both simulators seed their data with.
//!
//! Invariant: the same seed gives the same sequence on every platform, so a
//! seeded space or drive is reproducible from its config.

/// splitmix64: a tiny deterministic generator, enough for reproducible seeds.
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
