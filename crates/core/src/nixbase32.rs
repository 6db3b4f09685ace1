//! Nix's base-32 encoding: a custom alphabet (no `e o t u`) and, unlike
//! RFC 4648, the bytes are read from the *end* of the digest, so the output
//! is not a prefix-stable encoding. Used in store path hash parts and in
//! `sha256:<nix32>` hashes.

use thiserror::Error;

const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "invalid nixbase32 character {char:?} at position {pos} (allowed: 0-9 a-z without e, o, t, u)"
    )]
    InvalidChar { char: char, pos: usize },
    #[error("nixbase32 string has length {got}, expected {expected} for {bytes} bytes")]
    BadLength {
        got: usize,
        expected: usize,
        bytes: usize,
    },
    #[error("nixbase32 string has non-zero padding bits; it does not encode {bytes} bytes")]
    NonZeroPadding { bytes: usize },
}

/// Length of the encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    if n == 0 { 0 } else { (n * 8 - 1) / 5 + 1 }
}

pub fn encode(input: &[u8]) -> String {
    let len = encoded_len(input.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let lo = input[i] as u16 >> j;
        let hi = if i + 1 < input.len() {
            (input[i + 1] as u16) << (8 - j)
        } else {
            0
        };
        out.push(ALPHABET[((lo | hi) & 31) as usize] as char);
    }
    out
}

fn digit(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

/// Decodes `s` into exactly `bytes` bytes.
pub fn decode(s: &str, bytes: usize) -> Result<Vec<u8>, DecodeError> {
    let expected = encoded_len(bytes);
    if s.len() != expected {
        return Err(DecodeError::BadLength {
            got: s.len(),
            expected,
            bytes,
        });
    }
    let mut out = vec![0u8; bytes];
    for (pos, c) in s.bytes().enumerate() {
        let d = digit(c).ok_or(DecodeError::InvalidChar {
            // `s` may hold multi-byte chars; report the char that starts here, or the raw byte.
            char: s[pos..].chars().next().unwrap_or(c as char),
            pos,
        })?;
        let n = expected - 1 - pos;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        out[i] |= d << j;
        let carry = (d as u16) >> (8 - j);
        if i + 1 < bytes {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return Err(DecodeError::NonZeroPadding { bytes });
        }
    }
    Ok(out)
}

/// True when every character of `s` is in the nixbase32 alphabet.
pub fn is_valid_str(s: &str) -> bool {
    s.bytes().all(|c| digit(c).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vector() {
        // `nix hash to-base32 sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=` (sha256 of "").
        let h = [
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f,
            0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b,
            0x78, 0x52, 0xb8, 0x55,
        ];
        let s = encode(&h);
        assert_eq!(s, "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(decode(&s, 32).unwrap(), h);
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(0), 0);
    }

    #[test]
    fn rejects_bad_char_and_length() {
        let e = decode(&"e".repeat(32), 20).unwrap_err();
        assert_eq!(e, DecodeError::InvalidChar { char: 'e', pos: 0 });
        assert!(matches!(
            decode("00", 20),
            Err(DecodeError::BadLength {
                got: 2,
                expected: 32,
                ..
            })
        ));
        // The top char of a 20-byte encoding only has 0 spare bits... but a 32-byte one has 4.
        let mut s = "0".repeat(52);
        s.replace_range(0..1, "z");
        assert_eq!(
            decode(&s, 32),
            Err(DecodeError::NonZeroPadding { bytes: 32 })
        );
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&s, bytes.len()).unwrap(), bytes);
        }
    }
}
