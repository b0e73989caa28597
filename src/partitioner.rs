//! Kafka's default partitioner: murmur2 of the key bytes, made positive, modulo the number
//! of partitions. Bit-for-bit the same as Java Kafka's `Utils.murmur2` / `Utils.toPositive`,
//! so a key lands on the partition a Kafka producer would pick.

/// Java Kafka's `Utils.murmur2` (MurmurHash2, seed `0x9747b28c`), returning the Java `int`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    // Java's switch falls through from case 3 to case 1; bytes are sign-agnostic `& 0xff`.
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Java Kafka's `Utils.toPositive`: clears the sign bit (not `abs`).
pub fn to_positive(hash: i32) -> u32 {
    (hash & 0x7fff_ffff) as u32
}

/// The partition Kafka's default partitioner assigns to a (non-null) key.
///
/// # Panics
/// If `num_partitions` is zero.
pub fn partition_for_key(key: &[u8], num_partitions: u32) -> u32 {
    assert!(num_partitions > 0, "num_partitions must be positive");
    to_positive(murmur2(key)) % num_partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2` plus the length-boundary cases other
    /// Kafka clients copied from it (remainders 0..3).
    #[test]
    fn matches_kafka_vectors() {
        let cases: &[(&str, i32)] = &[
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
            ("string-f-24-chars-length", 124_730_809),
            ("string-fo-25-chars-length", 1_269_511_650),
            ("string-foo-26-chars-length", 119_165_628),
            ("string-last-27-chars-length", 1_089_971_754),
        ];
        for (input, want) in cases {
            assert_eq!(murmur2(input.as_bytes()), *want, "murmur2({input:?})");
        }
    }

    #[test]
    fn to_positive_clears_sign_bit_only() {
        assert_eq!(to_positive(-1), 0x7fff_ffff);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(5), 5);
        assert_eq!(
            to_positive(-973_932_308),
            (-973_932_308i32 & 0x7fff_ffff) as u32
        );
    }

    #[test]
    fn partition_is_positive_hash_mod_n() {
        // -973932308 & 0x7fffffff = 1173551340 = 7 * 167650191 + 3
        let h = to_positive(murmur2(b"21"));
        assert_eq!(h, 1_173_551_340);
        assert_eq!(partition_for_key(b"21", 3), 1_173_551_340 % 3);
        assert_eq!(partition_for_key(b"21", 7), 3);
        for n in 1..20 {
            assert!(partition_for_key(b"foobar", n) < n);
        }
    }
}
