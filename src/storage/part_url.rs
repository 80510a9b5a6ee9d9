//! Signed part PUT URLs of the local store: what S3's presigned `UploadPart` is on S3. The
//! signature covers the key, the multipart upload id, the part number, the part's size
//! and the expiry, so a URL uploads exactly one part of one upload, and no more bytes.

use chrono::{DateTime, Utc};

use super::download_url::{LinkError, check, keyed_mac};

/// Kept apart from download links and POST policies: no signature is valid as another's.
const CONTEXT: &[u8] = b"fleetload-local-put-part-v1";

/// What one part URL allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartGrant<'a> {
    pub key: &'a str,
    pub upload_id: &'a str,
    pub part_number: u32,
    pub max_bytes: u64,
    /// Unix seconds.
    pub expires: i64,
}

fn mac(secret: &str, grant: &PartGrant<'_>) -> hmac::Hmac<sha2::Sha256> {
    // Newlines cannot occur in a valid key or upload id, so fields cannot run together.
    let PartGrant {
        key,
        upload_id,
        part_number,
        max_bytes,
        expires,
    } = grant;
    keyed_mac(
        secret,
        CONTEXT,
        &format!("\nPUT\n{key}\n{upload_id}\n{part_number}\n{max_bytes}\n{expires}"),
    )
}

/// The hex signature of `grant`.
pub fn sign(secret: &str, grant: &PartGrant<'_>) -> String {
    use hmac::Mac;
    hex::encode(mac(secret, grant).finalize().into_bytes())
}

/// Checks the signature (constant time), then the expiry at `now`.
pub fn verify(
    secret: &str,
    grant: &PartGrant<'_>,
    signature: &str,
    now: DateTime<Utc>,
) -> Result<(), LinkError> {
    check(mac(secret, grant), signature, grant.expires, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t";

    fn grant(expires: i64) -> PartGrant<'static> {
        PartGrant {
            key: "uploads/a.csv",
            upload_id: "0123abcd",
            part_number: 2,
            max_bytes: 1024,
            expires,
        }
    }

    #[test]
    fn a_signed_part_url_verifies_until_it_expires() {
        let now = Utc::now();
        let g = grant(now.timestamp() + 60);
        let sig = sign(SECRET, &g);
        assert_eq!(verify(SECRET, &g, &sig, now), Ok(()));
        assert_eq!(
            verify(SECRET, &g, &sig, now + chrono::Duration::seconds(61)),
            Err(LinkError::Expired)
        );
    }

    #[test]
    fn any_other_key_upload_part_size_expiry_or_secret_is_a_bad_signature() {
        let now = Utc::now();
        let g = grant(now.timestamp() + 60);
        let sig = sign(SECRET, &g);
        let refused = Err(LinkError::BadSignature);
        let others = [
            PartGrant {
                key: "uploads/b.csv",
                ..g.clone()
            },
            PartGrant {
                upload_id: "0123abce",
                ..g.clone()
            },
            PartGrant {
                part_number: 3,
                ..g.clone()
            },
            PartGrant {
                max_bytes: 1025,
                ..g.clone()
            },
            PartGrant {
                expires: g.expires + 3600,
                ..g.clone()
            },
        ];
        for other in &others {
            assert_eq!(verify(SECRET, other, &sig, now), refused, "{other:?}");
        }
        assert_eq!(verify("other", &g, &sig, now), refused);
        assert_eq!(verify(SECRET, &g, "zz", now), refused);
        // A download link's signature of the same key is not a part signature.
        let download = super::super::download_url::sign(SECRET, g.key, g.expires);
        assert_eq!(verify(SECRET, &g, &download, now), refused);
    }
}
