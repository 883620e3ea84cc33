//! Opaque secrets: `hlf_` + 256 random bits + a checksum.
//!
//! The prefix lets secret scanners find leaked secrets; the checksum lets a
//! typo or a made-up value be refused without a database lookup. The broker
//! stores only HMAC-SHA256 of a secret under a key derived from the
//! key-encryption key, looks it up by that hash, and compares in constant
//! time; the plaintext exists only in the response.

use ring::hmac;
use secrecy::SecretString;
use subtle::ConstantTimeEq;

use crate::crypto;

/// Every secret starts with this.
pub const PREFIX: &str = "hlf_";
/// base64url of 32 random bytes.
const BODY_LEN: usize = 43;
/// base64url of the first 4 bytes of SHA-256 over prefix and body.
const CHECKSUM_LEN: usize = 6;
/// Length of a well-formed secret.
pub const SECRET_LEN: usize = PREFIX.len() + BODY_LEN + CHECKSUM_LEN;

/// Creates a new secret.
pub fn generate() -> Result<SecretString, ring::error::Unspecified> {
    let random = zeroize::Zeroizing::new(crypto::random_bytes::<32>()?);
    let mut text = String::with_capacity(SECRET_LEN);
    text.push_str(PREFIX);
    text.push_str(&crypto::b64url(random.as_slice()));
    let checksum = checksum(&text);
    text.push_str(&checksum);
    Ok(SecretString::from(text))
}

fn checksum(prefix_and_body: &str) -> String {
    let digest = crypto::sha256(prefix_and_body.as_bytes());
    crypto::b64url(&digest[..4])
}

/// Whether `text` has the shape and checksum of a secret this broker
/// issues (says nothing about whether it was issued).
pub fn well_formed(text: &str) -> bool {
    if text.len() != SECRET_LEN || !text.starts_with(PREFIX) {
        return false;
    }
    if !text[PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return false;
    }
    let (head, sum) = text.split_at(SECRET_LEN - CHECKSUM_LEN);
    bool::from(checksum(head).as_bytes().ct_eq(sum.as_bytes()))
}

/// The keyed hash a secret is stored and looked up by (hex).
pub fn stored_hash(key: &hmac::Key, secret: &str) -> String {
    crypto::hex(hmac::sign(key, secret.as_bytes()).as_ref())
}

/// Constant-time comparison of a stored hash with the hash of a presented
/// secret (the lookup found the row by this hash; comparing again keeps the
/// decision itself free of early exits).
pub fn hash_matches(stored: &str, presented: &str) -> bool {
    bool::from(stored.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn secrets_are_prefixed_checksummed_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        let a = a.expose_secret();
        assert_eq!(a.len(), SECRET_LEN);
        assert!(a.starts_with("hlf_"));
        assert!(well_formed(a));
        assert_ne!(a, b.expose_secret());
    }

    #[test]
    fn a_typo_fails_the_checksum() {
        let secret = generate().unwrap();
        let secret = secret.expose_secret();
        for i in PREFIX.len()..secret.len() {
            let mut bytes = secret.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let typo = String::from_utf8(bytes).unwrap();
            assert!(!well_formed(&typo), "a change at {i} passed the checksum");
        }
        assert!(!well_formed(&secret[..secret.len() - 1]));
        assert!(!well_formed(&format!("xyz_{}", &secret[4..])));
    }

    #[test]
    fn the_stored_hash_is_keyed() {
        let k1 = hmac::Key::new(hmac::HMAC_SHA256, &[1; 32]);
        let k2 = hmac::Key::new(hmac::HMAC_SHA256, &[2; 32]);
        let secret = "hlf_example";
        assert_ne!(stored_hash(&k1, secret), stored_hash(&k2, secret));
        assert_ne!(stored_hash(&k1, secret), crypto::hex(&crypto::sha256(secret.as_bytes())));
        assert!(hash_matches(&stored_hash(&k1, secret), &stored_hash(&k1, secret)));
    }
}
