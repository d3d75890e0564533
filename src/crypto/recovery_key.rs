//! The recovery key as a person types it: the 32-byte recovery seed plus a 3-byte checksum
//! (the first bytes of SHA-256("vaultfs recovery key" || seed)), 35 bytes in Crockford base32:
//! 56 characters shown in 14 groups of 4. Decoding ignores case, spaces and dashes, and reads
//! I/L as 1 and O as 0, so a typo is caught by the checksum rather than accepted.

use data_encoding::{Encoding, Specification};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::CryptoError;
use super::keys::{Key256, ct_eq};

const CHECK_LEN: usize = 3;
const GROUP: usize = 4;

fn crockford() -> Encoding {
    let mut spec = Specification::new();
    spec.symbols.push_str("0123456789ABCDEFGHJKMNPQRSTVWXYZ");
    spec.translate.from.push_str("abcdefghjkmnpqrstvwxyzIiLlOo");
    spec.translate.to.push_str("ABCDEFGHJKMNPQRSTVWXYZ111100");
    spec.ignore.push_str("- \t\n");
    spec.encoding().expect("valid base32 specification")
}

fn checksum(seed: &[u8; 32]) -> [u8; CHECK_LEN] {
    let digest = Sha256::new()
        .chain_update(b"vaultfs recovery key")
        .chain_update(seed)
        .finalize();
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&digest[..CHECK_LEN]);
    out
}

/// Formats a recovery seed for display: `XXXX-XXXX-...` (14 groups).
pub fn encode(seed: &Key256) -> Zeroizing<String> {
    let mut raw = Zeroizing::new([0u8; 32 + CHECK_LEN]);
    raw[..32].copy_from_slice(seed.expose());
    raw[32..].copy_from_slice(&checksum(seed.expose()));
    let plain = Zeroizing::new(crockford().encode(&raw[..]));
    let mut out = Zeroizing::new(String::with_capacity(plain.len() + plain.len() / GROUP));
    for (i, c) in plain.chars().enumerate() {
        if i > 0 && i % GROUP == 0 {
            out.push('-');
        }
        out.push(c);
    }
    out
}

/// Parses a typed recovery key, checking its checksum.
pub fn decode(text: &str) -> Result<Key256, CryptoError> {
    let raw =
        Zeroizing::new(crockford().decode(text.trim().as_bytes()).map_err(|_| {
            CryptoError::Malformed("recovery key has invalid characters or length")
        })?);
    if raw.len() != 32 + CHECK_LEN {
        return Err(CryptoError::Malformed("recovery key has the wrong length"));
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(&raw[..32]);
    if !ct_eq(&checksum(&seed), &raw[32..]) {
        return Err(CryptoError::Malformed(
            "recovery key checksum does not match (typo?)",
        ));
    }
    Key256::from_slice(&mut seed[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tolerant_parsing() {
        let seed = Key256::random().unwrap();
        let text = encode(&seed);
        assert_eq!(text.len(), 56 + 13);
        assert_eq!(decode(&text).unwrap().expose(), seed.expose());
        let sloppy = text
            .to_lowercase()
            .replace('-', " ")
            .replace('1', "l")
            .replace('0', "o");
        assert_eq!(decode(&sloppy).unwrap().expose(), seed.expose());
    }

    #[test]
    fn typos_are_caught() {
        let text = encode(&Key256::random().unwrap());
        let mut chars: Vec<char> = text.chars().collect();
        chars[5] = if chars[5] == 'A' { 'B' } else { 'A' };
        assert!(decode(&chars.iter().collect::<String>()).is_err());
        assert!(decode(&text[..20]).is_err());
        assert!(decode("not a key!").is_err());
    }
}
