//! Signed, expiring download links of the local store: `?expires=<unix secs>&signature=<hex>`
//! where the signature is an HMAC-SHA256 of the method, key and expiry under the store's secret.
//! Pure functions, so the refusal rules are unit-tested without a server.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Kept apart from the POST policies' SigV4 keys: a download signature can never be replayed
/// as an upload signature or the other way round.
const CONTEXT: &[u8] = b"fleetload-local-get-v1";

/// Why a download link was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link has expired")]
    Expired,
    #[error("the signature does not match")]
    BadSignature,
}

fn mac(secret: &str, key: &str, expires: i64) -> Hmac<Sha256> {
    // Newlines cannot occur in a valid key, so the fields cannot run into each other.
    keyed_mac(secret, CONTEXT, &format!("\nGET\n{key}\n{expires}"))
}

/// An HMAC-SHA256 under the store's secret of `message` in `context`: each kind of link has
/// its own context, so one kind's signature is never valid as another's.
pub(super) fn keyed_mac(secret: &str, context: &[u8], message: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(context);
    mac.update(message.as_bytes());
    mac
}

/// The signature of a GET of `key` valid until `expires` (unix seconds).
pub fn sign(secret: &str, key: &str, expires: i64) -> String {
    hex::encode(mac(secret, key, expires).finalize().into_bytes())
}

/// Checks a link's signature (in constant time) and then its expiry at `now`.
pub fn verify(
    secret: &str,
    key: &str,
    expires: i64,
    signature: &str,
    now: DateTime<Utc>,
) -> Result<(), LinkError> {
    check(mac(secret, key, expires), signature, expires, now)
}

/// The signature first (constant-time compare), then the expiry: a forged expiry is a bad
/// signature, never an expired link.
pub(super) fn check(
    mac: Hmac<Sha256>,
    signature: &str,
    expires: i64,
    now: DateTime<Utc>,
) -> Result<(), LinkError> {
    let given = hex::decode(signature).map_err(|_| LinkError::BadSignature)?;
    mac.verify_slice(&given).map_err(|_| LinkError::BadSignature)?;
    if now.timestamp() >= expires {
        return Err(LinkError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t";

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let now = Utc::now();
        let expires = now.timestamp() + 60;
        let sig = sign(SECRET, "reports/a.csv", expires);
        assert_eq!(verify(SECRET, "reports/a.csv", expires, &sig, now), Ok(()));
        let later = now + chrono::Duration::seconds(61);
        assert_eq!(
            verify(SECRET, "reports/a.csv", expires, &sig, later),
            Err(LinkError::Expired)
        );
    }

    #[test]
    fn changing_the_key_expiry_signature_or_secret_is_refused() {
        let now = Utc::now();
        let expires = now.timestamp() + 60;
        let sig = sign(SECRET, "reports/a.csv", expires);
        let refused = Err(LinkError::BadSignature);
        assert_eq!(verify(SECRET, "reports/b.csv", expires, &sig, now), refused);
        assert_eq!(
            verify(SECRET, "reports/a.csv", expires + 3600, &sig, now),
            refused
        );
        assert_eq!(verify("other", "reports/a.csv", expires, &sig, now), refused);
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(verify(SECRET, "reports/a.csv", expires, &flipped, now), refused);
        assert_eq!(verify(SECRET, "reports/a.csv", expires, "zz", now), refused);
    }

    #[test]
    fn an_expired_link_with_a_forged_expiry_is_a_bad_signature_not_a_valid_link() {
        let now = Utc::now();
        let sig = sign(SECRET, "k", now.timestamp() - 1);
        assert_eq!(
            verify(SECRET, "k", now.timestamp() - 1, &sig, now),
            Err(LinkError::Expired)
        );
        assert_eq!(
            verify(SECRET, "k", now.timestamp() + 100, &sig, now),
            Err(LinkError::BadSignature)
        );
    }
}
