//! HMAC-SHA256 over a canonical encoding of structured data: the key database's authenticated
//! state and the audit-log chain. Each field is written as a one-byte type tag, a u32 BE
//! length and its bytes, so no two different sequences of fields encode alike.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::CryptoError;
use super::keys::Key256;

pub const MAC_LEN: usize = 32;

pub struct MacBuilder(Hmac<Sha256>);

impl MacBuilder {
    pub fn new(key: &Key256, domain: &str) -> Self {
        let mut b =
            MacBuilder(Hmac::new_from_slice(key.expose()).expect("HMAC takes any key length"));
        b.bytes(domain.as_bytes());
        b
    }

    fn field(&mut self, tag: u8, data: &[u8]) -> &mut Self {
        self.0.update(&[tag]);
        self.0.update(&(data.len() as u32).to_be_bytes());
        self.0.update(data);
        self
    }

    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        self.field(b'b', data)
    }

    pub fn opt_bytes(&mut self, data: Option<&[u8]>) -> &mut Self {
        match data {
            Some(d) => self.field(b'b', d),
            None => self.field(b'n', &[]),
        }
    }

    pub fn int(&mut self, v: i64) -> &mut Self {
        self.field(b'i', &v.to_be_bytes())
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.field(b's', s.as_bytes())
    }

    pub fn finish(self) -> [u8; MAC_LEN] {
        self.0.finalize().into_bytes().into()
    }

    /// Constant-time check against an expected tag.
    pub fn verify(self, expected: &[u8]) -> Result<(), CryptoError> {
        self.0
            .verify_slice(expected)
            .map_err(|_| CryptoError::Authentication)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_unambiguous_and_verified() {
        let k = Key256::random().unwrap();
        let mut a = MacBuilder::new(&k, "d");
        a.bytes(b"ab").bytes(b"c");
        let mut b = MacBuilder::new(&k, "d");
        b.bytes(b"a").bytes(b"bc");
        let ta = a.finish();
        assert_ne!(ta, b.finish());
        let mut again = MacBuilder::new(&k, "d");
        again.bytes(b"ab").bytes(b"c");
        assert!(again.verify(&ta).is_ok());
        let mut other_domain = MacBuilder::new(&k, "e");
        other_domain.bytes(b"ab").bytes(b"c");
        assert!(other_domain.verify(&ta).is_err());
    }
}
