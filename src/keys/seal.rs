//! Private keys at rest: sealed with AES-256-GCM under a key-encryption key
//! (KEK) that never sits next to the database.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use zeroize::Zeroizing;

use super::KeyError;
use crate::crypto;

/// The key-encryption key. Held in a `SecretBox`, zeroized on drop.
pub struct Kek(SecretBox<[u8; 32]>);

/// Where the key-encryption key comes from.
pub enum KekSource<'a> {
    /// Base64 text, e.g. from `HALFLIFE_KEYS__KEK`.
    Inline(&'a SecretString),
    /// A file holding 32 raw bytes or their base64 text.
    File(&'a Path),
    /// Development only: a KEK generated on first start next to the keys.
    DevGenerated(PathBuf),
}

impl Kek {
    pub fn load(source: KekSource<'_>) -> Result<Self, KeyError> {
        match source {
            KekSource::Inline(text) => Self::from_base64(text.expose_secret())
                .ok_or_else(|| KeyError::Kek("keys.kek must be 32 bytes, base64-encoded".into())),
            KekSource::File(path) => {
                let bytes = Zeroizing::new(
                    std::fs::read(path)
                        .map_err(|e| KeyError::Kek(format!("cannot read keys.kek_file {}: {e}", path.display())))?,
                );
                Self::from_text(&bytes).ok_or_else(|| {
                    KeyError::Kek(format!("{} must hold 32 random bytes, raw or base64-encoded", path.display()))
                })
            }
            KekSource::DevGenerated(path) => {
                if !path.exists() {
                    let fresh = Zeroizing::new(crypto::random_bytes::<32>().map_err(|_| KeyError::Random)?);
                    let text = Zeroizing::new(STANDARD.encode(fresh.as_slice()));
                    write_private(&path, text.as_bytes())?;
                }
                Self::load(KekSource::File(&path))
            }
        }
    }

    /// Base64 only: 32 typed characters are a passphrase, not a key.
    fn from_base64(text: &str) -> Option<Self> {
        let decoded = Zeroizing::new(STANDARD.decode(text.trim()).ok()?);
        if decoded.len() != 32 {
            return None;
        }
        let mut key = Box::new([0u8; 32]);
        key.copy_from_slice(&decoded);
        Some(Self(SecretBox::new(key)))
    }

    fn from_text(bytes: &[u8]) -> Option<Self> {
        let mut key = Box::new([0u8; 32]);
        if bytes.len() == 32 {
            key.copy_from_slice(bytes);
            return Some(Self(SecretBox::new(key)));
        }
        let text = std::str::from_utf8(bytes).ok()?.trim();
        let decoded = Zeroizing::new(STANDARD.decode(text).ok()?);
        if decoded.len() != 32 {
            return None;
        }
        key.copy_from_slice(&decoded);
        Some(Self(SecretBox::new(key)))
    }

    /// An HMAC-SHA256 key for `purpose`, derived with HKDF: every replica
    /// with the same key-encryption key derives the same key, and nothing
    /// derived for one purpose is usable for another.
    pub fn derive_hmac_key(&self, purpose: &str) -> Result<ring::hmac::Key, KeyError> {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"halflife kek derivation");
        let prk = salt.extract(self.0.expose_secret());
        let info = [purpose.as_bytes()];
        let okm =
            prk.expand(&info, ring::hmac::HMAC_SHA256).map_err(|_| KeyError::Kek("key derivation failed".into()))?;
        Ok(ring::hmac::Key::from(okm))
    }

    fn aead(&self) -> Result<LessSafeKey, KeyError> {
        UnboundKey::new(&AES_256_GCM, self.0.expose_secret())
            .map(LessSafeKey::new)
            .map_err(|_| KeyError::Kek("unusable key-encryption key".into()))
    }

    /// Seals `plaintext`, binding it to `context` (the key's id and
    /// algorithm) so a sealed blob cannot be swapped into another key file.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<String, KeyError> {
        let nonce_bytes = crypto::random_bytes::<NONCE_LEN>().map_err(|_| KeyError::Random)?;
        let mut buf = Zeroizing::new(plaintext.to_vec());
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut *buf,
            )
            .map_err(|_| KeyError::Kek("sealing failed".into()))?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&buf);
        Ok(crypto::b64url(out))
    }

    pub fn open(&self, context: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let bytes = crypto::b64url_decode(sealed).ok_or(KeyError::Unseal)?;
        if bytes.len() < NONCE_LEN {
            return Err(KeyError::Unseal);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Unseal)?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let plain_len = self
            .aead()?
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| KeyError::Unseal)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

/// Writes a file readable only by its owner (mode 0600), atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    let io = |e: std::io::Error| KeyError::Io(format!("{}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(contents).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Creates `dir` (mode 0700) if it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| KeyError::Io(format!("{}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_context_binding() {
        let secret = SecretString::from(STANDARD.encode([7u8; 32]));
        let kek = Kek::load(KekSource::Inline(&secret)).unwrap();
        let sealed = kek.seal("kid-1:EdDSA", b"private").unwrap();
        assert_eq!(kek.open("kid-1:EdDSA", &sealed).unwrap().as_slice(), b"private");
        assert!(kek.open("kid-2:EdDSA", &sealed).is_err(), "context must be bound");
        let other = Kek::load(KekSource::Inline(&SecretString::from(STANDARD.encode([8u8; 32])))).unwrap();
        assert!(other.open("kid-1:EdDSA", &sealed).is_err(), "wrong KEK must fail");
    }

    #[test]
    fn short_kek_is_refused() {
        let secret = SecretString::from(STANDARD.encode([7u8; 16]));
        assert!(Kek::load(KekSource::Inline(&secret)).is_err());
    }
}
