//! Array helpers over page numbers, for a guest's first-touch bookkeeping.
//!
//! A guest that maps anonymous pages before a batch runs (prefaulting) first
//! asks which addresses fall on pages it does not know to be mapped. It keeps
//! the pages it knows in a direct-mapped cache of page numbers (slot = page
//! number modulo the cache's power-of-two length); [`cache_misses`] answers
//! for a whole batch in one pass.

use crate::error::{Error, Result};

/// Indices (into `vas`) of the addresses whose page number (`va >> shift`)
/// the direct-mapped `cache` does not hold, in order, appended to `out`.
///
/// `cache.len()` must be a power of two (or zero: then every address
/// misses).
pub fn cache_misses(vas: &[u64], shift: u32, cache: &[u64], out: &mut Vec<u32>) -> Result<()> {
    if shift >= 64 {
        return Err(Error::Config(format!(
            "page shift must be below 64, got {shift}"
        )));
    }
    if !cache.is_empty() && !cache.len().is_power_of_two() {
        return Err(Error::Config(format!(
            "the page cache's length must be a power of two, got {}",
            cache.len()
        )));
    }
    if u32::try_from(vas.len()).is_err() {
        return Err(Error::Config(format!(
            "at most 2^32 addresses per call, got {}",
            vas.len()
        )));
    }
    if cache.is_empty() {
        out.extend(0..vas.len() as u32);
        return Ok(());
    }
    let mask = cache.len() as u64 - 1;
    // Branch-free: every index is written at the next free place, which
    // advances only on a miss (pages alternate too irregularly to predict).
    out.reserve(vas.len());
    let spare = out.spare_capacity_mut();
    let mut k = 0;
    for (i, &va) in vas.iter().enumerate() {
        let page = va >> shift;
        let miss = cache[(page & mask) as usize] != page;
        spare[k].write(i as u32);
        k += miss as usize;
    }
    let len = out.len() + k;
    // SAFETY: the first `k` places of the spare capacity were written above
    // (a place is written before `k` moves past it), and `len` is within
    // the capacity reserved for `vas.len()` more.
    unsafe { out.set_len(len) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The misses are exactly the addresses whose page is not in its slot.
        #[test]
        fn misses_are_the_pages_not_in_their_slot(
            vas in prop::collection::vec(0u64..1 << 20, 0..300),
            known in prop::collection::vec(0u64..256, 0..40),
            bits in 0u32..6,
        ) {
            let mut cache = vec![u64::MAX; 1 << bits];
            for page in known {
                let slot = (page as usize) & ((1 << bits) - 1);
                cache[slot] = page;
            }
            let mut got = Vec::new();
            cache_misses(&vas, 12, &cache, &mut got).unwrap();
            let want: Vec<u32> = vas
                .iter()
                .enumerate()
                .filter(|&(_, &va)| cache[((va >> 12) as usize) & ((1 << bits) - 1)] != va >> 12)
                .map(|(i, _)| i as u32)
                .collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_bad_cache_or_shift_is_named() {
        let mut out = Vec::new();
        let err = cache_misses(&[1], 12, &[0; 3], &mut out).unwrap_err();
        assert!(err.to_string().contains("power of two, got 3"), "{err}");
        let err = cache_misses(&[1], 64, &[0; 4], &mut out).unwrap_err();
        assert!(err.to_string().contains("got 64"), "{err}");
        cache_misses(&[5, 6], 12, &[], &mut out).unwrap();
        assert_eq!(out, vec![0, 1]);
    }
}
