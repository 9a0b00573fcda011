//! The seeded generator of the random replacement policy.

/// Marsaglia's xorshift64 (13, 7, 17), seeded through splitmix64.
///
/// It *defines* the random policy (which way a seeded "random" TLB evicts),
/// so it is the exact generator of Python's `XorShift64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator whose state is splitmix64 of `seed` (never zero).
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let state = z ^ (z >> 31);
        XorShift64 {
            state: if state == 0 { 1 } else { state },
        }
    }

    /// The current state.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The next 64-bit value.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::XorShift64;

    #[test]
    fn splitmix_seeding_and_xorshift_steps() {
        // splitmix64(0) is the well-known first output 0xE220A8397B1DCDAF.
        assert_eq!(XorShift64::new(0).state(), 0xE220_A839_7B1D_CDAF);
        let mut rng = XorShift64::new(123);
        let mut x = rng.state();
        for _ in 0..100 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            assert_eq!(rng.next(), x);
        }
        assert_ne!(XorShift64::new(0).state(), XorShift64::new(1).state());
    }
}
