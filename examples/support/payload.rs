//! The one payload generator of the examples and tests: deterministic bytes, so a corrupted,
//! truncated or reordered transfer is caught by comparing with a second call.

/// `len` pseudo-random bytes (xorshift), the same for the same `seed`.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
