//! Secrets at rest: carrier client secrets are sealed with XChaCha20-Poly1305 under a key from
//! configuration, bound to their row by associated data, so that neither a database dump nor
//! a value copied to another row gives a secret away.

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};

use crate::auth::load_or_create_secret;
use crate::config::Settings;

/// The layout of a sealed value; a later layout (another cipher, a key id) gets a new byte.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// The key file of the embedded default, beside the JWT secret in the data dir.
pub const KEY_FILE: &str = "carrier-secret-key";

/// Why a sealed value did not open.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not something [`SecretBox::seal`] wrote: not base64, too short, or an unknown layout.
    #[error("the sealed value is malformed")]
    Malformed,
    /// Sealed under another key, for another row, or changed since.
    #[error("the sealed value does not open with this key for this row")]
    NotAuthentic,
}

/// Seals and opens secrets with one 256-bit key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

/// Never prints the key.
impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(&Key::from(key)),
        }
    }

    /// A key given as base64 of 32 bytes (standard or URL-safe alphabet, padded or not).
    pub fn from_base64(key: &str) -> Option<Self> {
        let key = key.trim();
        [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(key).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
            .map(Self::new)
    }

    /// The key of this process: `--carrier-secret-key` when given (anything but base64 of
    /// 32 bytes stops the start), else on the embedded default the one generated in the
    /// data dir like the JWT secret; `None` on a shared database without a key, where carrier
    /// account writes are refused and everything else works.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Self>> {
        if let Some(key) = &settings.carrier_secret_key {
            return Self::from_base64(key.expose_secret()).map(Some).context(
                "--carrier-secret-key (FLEETLOAD_CARRIER_SECRET_KEY) must be the base64 of exactly 32 bytes \
                 (e.g. `openssl rand -base64 32`)",
            );
        }
        if !settings.uses_embedded_database() {
            return Ok(None);
        }
        let path = settings.data_dir.join(KEY_FILE);
        let key = load_or_create_secret(&settings.data_dir, KEY_FILE)
            .with_context(|| format!("carrier secret key {}", path.display()))?;
        Self::from_base64(key.expose_secret()).map(Some).with_context(|| {
            format!(
                "{} must hold the base64 of exactly 32 bytes; restore it (accounts sealed with it \
                 open with no other key)",
                path.display()
            )
        })
    }

    /// Base64 of version byte, random nonce and ciphertext with its tag. `aad` names what
    /// the secret belongs to; [`SecretBox::open`] must be given the same.
    pub fn seal(&self, plaintext: &SecretString, aad: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let payload = Payload {
            msg: plaintext.expose_secret().as_bytes(),
            aad: aad.as_bytes(),
        };
        let ciphertext = self
            .cipher
            .encrypt(&XNonce::from(nonce), payload)
            .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        STANDARD.encode(sealed)
    }

    pub fn open(&self, sealed: &str, aad: &str) -> Result<SecretString, SealError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| SealError::Malformed)?;
        if bytes.len() < 1 + NONCE_LEN + TAG_LEN || bytes[0] != VERSION {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = bytes[1..].split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: aad.as_bytes(),
        };
        let plaintext = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| SealError::NotAuthentic)?;
        // Authentic means sealed from a `str` by us: UTF-8 unless the layout changed.
        let plaintext = String::from_utf8(plaintext).map_err(|_| SealError::Malformed)?;
        Ok(plaintext.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAD: &str = "demo/tmo-main";

    fn secret(text: &str) -> SecretString {
        text.to_owned().into()
    }

    #[test]
    fn a_sealed_secret_opens_back_and_never_shows_in_the_clear() {
        let sealer = SecretBox::new([7; 32]);
        let sealed = sealer.seal(&secret("s3cr3t-päss"), AAD);
        assert!(!sealed.contains("s3cr3t"));
        assert_eq!(sealer.open(&sealed, AAD).unwrap().expose_secret(), "s3cr3t-päss");
        // A fresh nonce each time: equal secrets do not give equal values.
        let again = sealer.seal(&secret("s3cr3t-päss"), AAD);
        assert_ne!(sealed, again);
        assert_eq!(sealer.open(&again, AAD).unwrap().expose_secret(), "s3cr3t-päss");
        assert!(!format!("{sealer:?}").contains('7'));
    }

    #[test]
    fn another_key_or_another_row_does_not_open_it() {
        let sealed = SecretBox::new([7; 32]).seal(&secret("s3cr3t"), AAD);
        assert_eq!(
            SecretBox::new([8; 32]).open(&sealed, AAD).unwrap_err(),
            SealError::NotAuthentic
        );
        assert_eq!(
            SecretBox::new([7; 32])
                .open(&sealed, "demo/tmo-backup")
                .unwrap_err(),
            SealError::NotAuthentic
        );
        assert_eq!(
            SecretBox::new([7; 32])
                .open(&sealed, "acme/tmo-main")
                .unwrap_err(),
            SealError::NotAuthentic
        );
    }

    #[test]
    fn every_changed_byte_is_noticed() {
        let sealer = SecretBox::new([7; 32]);
        let bytes = STANDARD.decode(sealer.seal(&secret("s3cr3t"), AAD)).unwrap();
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            let expected = if i == 0 {
                SealError::Malformed
            } else {
                SealError::NotAuthentic
            };
            assert_eq!(
                sealer.open(&STANDARD.encode(&tampered), AAD).unwrap_err(),
                expected,
                "byte {i}"
            );
        }
    }

    #[test]
    fn truncated_or_foreign_input_is_malformed() {
        let sealer = SecretBox::new([7; 32]);
        let bytes = STANDARD.decode(sealer.seal(&secret("s3cr3t"), AAD)).unwrap();
        for len in 0..bytes.len() {
            let cut = STANDARD.encode(&bytes[..len]);
            let err = sealer.open(&cut, AAD).unwrap_err();
            // Down to the tag the layout is short; past it the tag no longer matches.
            assert!(
                matches!(err, SealError::Malformed | SealError::NotAuthentic),
                "{len}: {err:?}"
            );
            if len < 1 + NONCE_LEN + TAG_LEN {
                assert_eq!(err, SealError::Malformed, "{len}");
            }
        }
        for foreign in ["", "not base64!", "s3cr3t", "AAAA"] {
            assert_eq!(
                sealer.open(foreign, AAD).unwrap_err(),
                SealError::Malformed,
                "{foreign:?}"
            );
        }
    }

    #[test]
    fn only_base64_of_32_bytes_is_a_key() {
        let key = [9u8; 32];
        for text in [
            STANDARD.encode(key),
            URL_SAFE_NO_PAD.encode(key),
            format!(" {}\n", STANDARD.encode(key)),
        ] {
            let sealer = SecretBox::from_base64(&text).unwrap_or_else(|| panic!("{text:?}"));
            let sealed = sealer.seal(&secret("x"), AAD);
            assert!(SecretBox::new(key).open(&sealed, AAD).is_ok());
        }
        for bad in [
            String::new(),
            "short".into(),
            STANDARD.encode([9u8; 31]),
            STANDARD.encode([9u8; 33]),
            "é".repeat(44),
        ] {
            assert!(SecretBox::from_base64(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_key_comes_from_settings_or_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::embedded(dir.path());
        // Embedded: generated once, kept owner-only, and the same on the next start.
        let first = SecretBox::from_settings(&settings).unwrap().unwrap();
        let sealed = first.seal(&secret("x"), AAD);
        let second = SecretBox::from_settings(&settings).unwrap().unwrap();
        assert_eq!(second.open(&sealed, AAD).unwrap().expose_secret(), "x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A shared database without a key: none, and no file is made for it.
        let other = tempfile::tempdir().unwrap();
        settings.data_dir = other.path().to_owned();
        settings.database_url = Some("postgres://db/fleetload".to_owned().into());
        assert!(SecretBox::from_settings(&settings).unwrap().is_none());
        assert!(!other.path().join(KEY_FILE).exists());
        // A configured key wins; a bad one stops the start with a message naming the setting.
        settings.carrier_secret_key = Some(STANDARD.encode([3u8; 32]).into());
        let configured = SecretBox::from_settings(&settings).unwrap().unwrap();
        let sealed = configured.seal(&secret("y"), AAD);
        assert!(SecretBox::new([3; 32]).open(&sealed, AAD).is_ok());
        settings.carrier_secret_key = Some("c2hvcnQ=".to_owned().into());
        let err = SecretBox::from_settings(&settings).unwrap_err().to_string();
        assert!(
            err.contains("FLEETLOAD_CARRIER_SECRET_KEY") && err.contains("32 bytes"),
            "{err}"
        );
        assert!(!err.contains("c2hvcnQ"), "{err}");
    }
}
