//! The bucketing rule: which requests read from the new tables.
//!
//! Applications split reads by hashing a routing key (a user or account id)
//! together with the migration's salt: `h = fmix64(fnv1a64(salt ":" key))`
//! over the UTF-8 bytes, `bucket = h mod 10000`, and the request reads from
//! `new` iff `bucket < read_new_percent * 100`. The rule is deterministic and
//! sticky (a key always lands in the same bucket), monotonic (raising the
//! percentage only moves keys from old to new), and salted per migration so
//! two migrations do not split the same keys the same way. Both halves are a
//! few lines of 64-bit arithmetic with no tables, so every client language can
//! reimplement them; the finalizer makes every input bit affect every output
//! bit before the remainder is taken. [`TEST_VECTORS`] are the values every
//! implementation must reproduce. `docs/traffic.md` describes the published
//! JSON, the client rules and example clients.

use std::fmt;

/// The name of the hash, published in the traffic JSON as `bucketing.hash`.
pub const HASH_NAME: &str = "fnv1a64-fmix64";

/// The number of buckets; each percentage point of the split is 100 buckets.
pub const BUCKETS: u64 = 10_000;

/// Buckets per percentage point of `read.new`.
const BUCKETS_PER_PERCENT: u64 = BUCKETS / 100;

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The byte between the salt and the key.
const SEPARATOR: u8 = b':';

/// Known `(salt, key, bucket)` triples that every implementation of the rule
/// (this one and the client examples in `docs/traffic.md`) must reproduce.
pub const TEST_VECTORS: &[(&str, &str, u64)] = &[
    ("billing_v2", "user-1", 7911),
    ("billing_v2", "user-2", 676),
    ("billing_v2", "user-42", 2870),
    ("billing_v2", "acct:9001", 6819),
    ("billing_v2", "", 8663),
    ("billing_v2", "Zoë", 5070),
    ("billing_v2", "0123456789abcdefghijklmnopqrstuvwxyzABCD", 7027),
    ("billing_v2", "550e8400-e29b-41d4-a716-446655440000", 6117),
    ("billing_v2", "user-1000000", 8699),
    ("walshift", "user-1", 4252),
    ("walshift", "user-42", 5608),
    ("demo", "user-1", 9626),
    ("demo", "order:77", 3091),
];

/// Which tables a request reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The source tables, complete and correct until the write cutover.
    Old,
    /// The target (shadow) tables that walshift keeps in sync.
    New,
}

impl Side {
    /// The lowercase name used in the traffic JSON: `"old"` or `"new"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::New => "new",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The 64-bit hash of `key` under `salt`: FNV-1a over `salt`, `:` and `key`
/// (UTF-8 bytes), then the MurmurHash3 `fmix64` finalizer.
pub fn hash(salt: &str, key: &str) -> u64 {
    let bytes = salt.bytes().chain([SEPARATOR]).chain(key.bytes());
    fmix64(fnv1a64(bytes))
}

/// The bucket of `key` under `salt`, in `0..BUCKETS`.
pub fn bucket(salt: &str, key: &str) -> u64 {
    hash(salt, key) % BUCKETS
}

/// The side `key` reads from when `read_new_percent` % of reads go to the new
/// tables: [`Side::New`] iff its bucket is below `read_new_percent * 100`.
/// Percentages above 100 count as 100.
pub fn side(salt: &str, key: &str, read_new_percent: u8) -> Side {
    let threshold = u64::from(read_new_percent.min(100)) * BUCKETS_PER_PERCENT;
    if bucket(salt, key) < threshold { Side::New } else { Side::Old }
}

/// FNV-1a, 64 bits, with wrapping multiplication.
fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(FNV_OFFSET_BASIS, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// The MurmurHash3 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vectors_match() {
        for &(salt, key, expected) in TEST_VECTORS {
            assert_eq!(bucket(salt, key), expected, "salt {salt:?}, key {key:?}");
        }
    }

    #[test]
    fn test_vectors_cover_the_documented_cases() {
        assert!(TEST_VECTORS.len() >= 12);
        assert!(TEST_VECTORS.iter().any(|&(_, key, _)| key.is_empty()));
        assert!(TEST_VECTORS.iter().any(|&(_, key, _)| !key.is_ascii()));
        assert!(TEST_VECTORS.iter().any(|&(_, key, _)| key.len() == 40));
        for salt in ["billing_v2", "walshift", "demo"] {
            assert!(TEST_VECTORS.iter().any(|&(s, _, _)| s == salt), "no vector for {salt}");
        }
    }

    #[test]
    fn fnv1a64_matches_published_values() {
        // From the FNV reference test suite (draft-eastlake-fnv, test_fnv.c).
        assert_eq!(fnv1a64(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(*b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn hash_is_fnv_of_salt_colon_key_then_fmix() {
        assert_eq!(hash("billing_v2", "user-1"), fmix64(fnv1a64(*b"billing_v2:user-1")));
        assert_eq!(hash("", ""), fmix64(fnv1a64(*b":")));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(hash("ab", "c"), hash("a", "bc"));
    }

    #[test]
    fn fmix64_known_values() {
        assert_eq!(fmix64(0), 0);
        assert_ne!(fmix64(1), 1);
    }

    #[test]
    fn side_names() {
        assert_eq!(Side::Old.as_str(), "old");
        assert_eq!(Side::New.as_str(), "new");
        assert_eq!(Side::New.to_string(), "new");
        assert_eq!(format!("{}", Side::Old), "old");
    }

    #[test]
    fn raising_the_percentage_only_moves_keys_to_new() {
        for i in 0..20_000 {
            let key = format!("user-{i}");
            let mut previous = side("billing_v2", &key, 0);
            for p in 1..=100 {
                let current = side("billing_v2", &key, p);
                assert!(
                    previous == Side::Old || current == Side::New,
                    "{key} moved back to old at {p} %"
                );
                previous = current;
            }
        }
    }

    #[test]
    fn zero_is_all_old_and_hundred_is_all_new() {
        for i in 0..20_000 {
            let key = format!("acct:{i}");
            assert_eq!(side("billing_v2", &key, 0), Side::Old, "{key}");
            assert_eq!(side("billing_v2", &key, 100), Side::New, "{key}");
            assert_eq!(side("billing_v2", &key, u8::MAX), Side::New, "{key}");
        }
    }

    #[test]
    fn side_follows_the_bucket_threshold() {
        // ("billing_v2", "user-2") is in bucket 676: new from 7 % on.
        assert_eq!(side("billing_v2", "user-2", 6), Side::Old);
        assert_eq!(side("billing_v2", "user-2", 7), Side::New);
    }

    #[test]
    fn split_is_within_one_point_of_the_percentage() {
        const KEYS: usize = 100_000;
        for p in [10u8, 50, 90] {
            let count = (0..KEYS)
                .filter(|i| side("billing_v2", &format!("user-{i}"), p) == Side::New)
                .count();
            let expected = KEYS * usize::from(p) / 100;
            let tolerance = KEYS / 100;
            assert!(
                count.abs_diff(expected) <= tolerance,
                "{count} of {KEYS} keys read new at {p} %, expected {expected} ± {tolerance}"
            );
        }
    }
}
