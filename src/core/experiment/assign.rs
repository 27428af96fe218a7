//! Deterministic experiment assignment, compatible with GrowthBook SDK hashing v2
//! (SPEC §8, Assignment), so SDKs and Sextant agree on who sees which variant.

/// FNV-1a offset basis, 32-bit.
const FNV_OFFSET_BASIS: u32 = 0x811C_9DC5;
/// FNV prime, 32-bit.
const FNV_PRIME: u32 = 0x0100_0193;

/// 32-bit FNV-1a over `bytes` (callers pass UTF-8):
///
/// `h = 0x811C9DC5; for each byte b: h = (h ^ b) × 0x01000193 mod 2³²`.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    fnv1a32_continue(FNV_OFFSET_BASIS, bytes)
}

/// Feeds more bytes into a running FNV-1a state, so `seed + id` can be hashed
/// without building the concatenated string.
fn fnv1a32_continue(state: u32, bytes: &[u8]) -> u32 {
    bytes.iter().fold(state, |h, &b| (h ^ u32::from(b)).wrapping_mul(FNV_PRIME))
}

/// GrowthBook hashing v2: a bucket in `[0, 1)` with 4 decimal digits.
///
/// `n = fnv1a32(decimal(fnv1a32(seed + id)))`, `bucket = (n mod 10000) / 10000`,
/// where `decimal` writes the first hash as a base-10 string without padding.
/// This must stay exactly GrowthBook's v2 formula: any change reassigns users.
pub fn hash_bucket(seed: &str, id: &str) -> f64 {
    let first = fnv1a32_continue(fnv1a32(seed.as_bytes()), id.as_bytes());
    // A u32 has at most 10 decimal digits; a stack buffer keeps this allocation-free
    // because assignment runs once per Assign call or generated exposure.
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut rest = first;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let n = fnv1a32(&digits[start..]);
    f64::from(n % 10_000) / 10_000.0
}

/// The variant whose range holds `bucket`, or `None` when the bucket falls in no
/// range (the user is not in the experiment).
///
/// Variant `i` covers `[start_i, start_i + coverage × weight_i)` with
/// `start_i = Σ_{j<i} weight_j`: coverage shrinks each range from its start
/// instead of shifting later ranges, so lowering coverage never moves a user
/// from one variant to another. `coverage` is clamped to `[0, 1]` as GrowthBook
/// does. Weights are expected to sum to 1; that is validated where experiments
/// are created, not here.
pub fn choose_variant(bucket: f64, weights: &[f64], coverage: f64) -> Option<usize> {
    let coverage = coverage.clamp(0.0, 1.0);
    let mut start = 0.0;
    for (i, &weight) in weights.iter().enumerate() {
        let end = start + coverage * weight;
        if bucket >= start && bucket < end {
            return Some(i);
        }
        start += weight;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_known_values() {
        // Cross-checked with fnv1a32() from shared/tools/gen_events.py (python3).
        assert_eq!(fnv1a32(b""), 2_166_136_261);
        assert_eq!(fnv1a32(b"a"), 3_826_002_220);
        assert_eq!(fnv1a32(b"foobar"), 3_214_735_720);
        assert_eq!(fnv1a32("é".as_bytes()), 513_665_217);
    }

    #[test]
    fn hash_bucket_spec_examples() {
        assert_eq!(hash_bucket("", "a"), 0.0216);
        assert_eq!(hash_bucket("", "b"), 0.9054);
    }

    #[test]
    fn hash_bucket_matches_python_reference() {
        // Expected values computed with bucket() from shared/tools/gen_events.py (python3).
        assert_eq!(hash_bucket("checkout_v2", "u42_0"), 0.4112);
        assert_eq!(hash_bucket("checkout_v2", "u42_1"), 0.181);
        assert_eq!(hash_bucket("checkout_v2", "u42_999"), 0.9496);
        assert_eq!(hash_bucket("exp-1", "user-123"), 0.1914);
        assert_eq!(hash_bucket("", "é"), 0.6427);
        assert_eq!(hash_bucket("seed", ""), 0.4286);
    }

    #[test]
    fn hash_bucket_hashes_the_concatenation() {
        // Only seed + id matters, not where the boundary between them lies.
        assert_eq!(hash_bucket("ab", "c"), hash_bucket("a", "bc"));
        assert_eq!(hash_bucket("", "abc"), hash_bucket("abc", ""));
    }

    #[test]
    fn hash_bucket_stays_in_unit_interval() {
        for i in 0..10_000 {
            let b = hash_bucket("exp", &format!("user{i}"));
            assert!((0.0..1.0).contains(&b), "bucket {b} out of range");
        }
    }

    #[test]
    fn choose_variant_spec_example() {
        // weights (0.5, 0.5), coverage 0.8 → [0, 0.4) and [0.5, 0.9)
        let weights = [0.5, 0.5];
        let cases = [
            (0.0, Some(0)),
            (0.3999, Some(0)),
            (0.4, None),
            (0.45, None),
            (0.5, Some(1)),
            (0.8999, Some(1)),
            (0.9, None),
        ];
        for (bucket, expected) in cases {
            assert_eq!(choose_variant(bucket, &weights, 0.8), expected, "bucket {bucket}");
        }
    }

    #[test]
    fn choose_variant_full_coverage_covers_everything() {
        let weights = [0.2, 0.3, 0.5];
        assert_eq!(choose_variant(0.0, &weights, 1.0), Some(0));
        assert_eq!(choose_variant(0.1999, &weights, 1.0), Some(0));
        assert_eq!(choose_variant(0.2, &weights, 1.0), Some(1));
        assert_eq!(choose_variant(0.4999, &weights, 1.0), Some(1));
        assert_eq!(choose_variant(0.5, &weights, 1.0), Some(2));
        assert_eq!(choose_variant(0.9999, &weights, 1.0), Some(2));
    }

    #[test]
    fn choose_variant_edge_cases() {
        assert_eq!(choose_variant(0.0, &[0.5, 0.5], 0.0), None);
        assert_eq!(choose_variant(0.3, &[], 1.0), None);
        // Coverage outside [0, 1] is clamped, like GrowthBook's SDKs.
        assert_eq!(choose_variant(0.9999, &[0.5, 0.5], 2.0), Some(1));
        assert_eq!(choose_variant(0.0, &[0.5, 0.5], -1.0), None);
    }
}
