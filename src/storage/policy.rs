//! S3 POST policies signed with SigV4 (`AWS4-HMAC-SHA256`): built for S3 and the local store,
//! and verified by the local store exactly the way S3 checks them.

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Credentials and scope that sign a policy.
pub struct Signer<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
    pub region: &'a str,
}

/// What a policy allows: one exact key and a size range.
pub struct PolicyRequest<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub min_bytes: u64,
    pub max_bytes: u64,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The form fields of a signed POST policy (everything but `file`).
pub fn sign(signer: &Signer<'_>, req: &PolicyRequest<'_>) -> BTreeMap<String, String> {
    let amz_date = req.now.format("%Y%m%dT%H%M%SZ").to_string();
    let credential = format!(
        "{}/{}/{}/s3/aws4_request",
        signer.access_key_id,
        req.now.format("%Y%m%d"),
        signer.region
    );
    let mut conditions = vec![
        json!({ "bucket": req.bucket }),
        json!(["eq", "$key", req.key]),
        json!(["content-length-range", req.min_bytes, req.max_bytes]),
        json!({ "x-amz-algorithm": ALGORITHM }),
        json!({ "x-amz-credential": credential }),
        json!({ "x-amz-date": amz_date }),
    ];
    if let Some(token) = signer.session_token {
        conditions.push(json!({ "x-amz-security-token": token }));
    }
    let document = json!({
        "expiration": req.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "conditions": conditions,
    });
    let policy = STANDARD.encode(document.to_string());
    let signature = signature(signer.secret_access_key, req.now.into(), signer.region, &policy);

    let mut fields = BTreeMap::new();
    fields.insert("key".to_owned(), req.key.to_owned());
    fields.insert("policy".to_owned(), policy);
    fields.insert("x-amz-algorithm".to_owned(), ALGORITHM.to_owned());
    fields.insert("x-amz-credential".to_owned(), credential);
    fields.insert("x-amz-date".to_owned(), amz_date);
    fields.insert("x-amz-signature".to_owned(), signature);
    if let Some(token) = signer.session_token {
        fields.insert("x-amz-security-token".to_owned(), token.to_owned());
    }
    fields
}

fn signing_key(secret: &str, at: SystemTime, region: &str) -> Vec<u8> {
    aws_sigv4::sign::v4::generate_signing_key(secret, at, region, "s3")
        .as_ref()
        .to_vec()
}

fn signature(secret: &str, at: SystemTime, region: &str, policy_b64: &str) -> String {
    aws_sigv4::sign::v4::calculate_signature(signing_key(secret, at, region), policy_b64.as_bytes())
}

/// Why a posted form was refused; each maps to the S3 error code a client would get.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("missing form field {0}")]
    MissingField(&'static str),
    #[error("the policy is not a valid base64 JSON document")]
    Malformed,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the policy has expired")]
    Expired,
    #[error("policy condition failed: {0}")]
    ConditionFailed(String),
    #[error("form field {0} is not allowed by the policy")]
    ExtraField(String),
}

/// A policy whose signature, expiry and field conditions held; the body size is checked
/// by the caller while it streams.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifiedPolicy {
    pub key: String,
    pub min_bytes: u64,
    pub max_bytes: u64,
}

/// Checks a posted form (all fields before `file`) as S3 does: SigV4 signature over the
/// base64 policy, expiry, every condition, and no field the policy does not mention.
pub fn verify(
    fields: &BTreeMap<String, String>,
    access_key_id: &str,
    secret_access_key: &str,
    bucket: &str,
    now: DateTime<Utc>,
) -> Result<VerifiedPolicy, PolicyError> {
    let get = |name: &'static str| fields.get(name).ok_or(PolicyError::MissingField(name));
    let policy_b64 = get("policy")?;
    let given_signature = get("x-amz-signature")?;
    let credential = get("x-amz-credential")?;
    let amz_date = get("x-amz-date")?;
    get("key")?;

    // Credential scope: AKID/yyyymmdd/region/s3/aws4_request.
    let scope: Vec<&str> = credential.split('/').collect();
    let [akid, day, region, "s3", "aws4_request"] = scope.as_slice() else {
        return Err(PolicyError::BadSignature);
    };
    if *akid != access_key_id || !amz_date.starts_with(day) {
        return Err(PolicyError::BadSignature);
    }
    let signed_at = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| PolicyError::BadSignature)?
        .and_utc();
    let expected = hex::decode(given_signature).map_err(|_| PolicyError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&signing_key(secret_access_key, signed_at.into(), region))
        .map_err(|_| PolicyError::BadSignature)?;
    mac.update(policy_b64.as_bytes());
    mac.verify_slice(&expected)
        .map_err(|_| PolicyError::BadSignature)?;

    let document: Value = STANDARD
        .decode(policy_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(PolicyError::Malformed)?;
    let expiration = document["expiration"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .ok_or(PolicyError::Malformed)?;
    if expiration <= now {
        return Err(PolicyError::Expired);
    }
    let conditions = document["conditions"].as_array().ok_or(PolicyError::Malformed)?;

    let mut covered: Vec<String> = Vec::new();
    let mut range = None;
    for condition in conditions {
        match condition {
            Value::Object(map) => {
                for (name, value) in map {
                    let want = value.as_str().ok_or(PolicyError::Malformed)?;
                    check_field(fields, bucket, name, |got| got == want)?;
                    covered.push(name.to_ascii_lowercase());
                }
            }
            Value::Array(items) => match items.as_slice() {
                [Value::String(op), Value::String(var), Value::String(want)]
                    if op == "eq" || op == "starts-with" =>
                {
                    let name = var.strip_prefix('$').ok_or(PolicyError::Malformed)?;
                    let starts = op == "starts-with";
                    check_field(fields, bucket, name, |got| {
                        if starts {
                            got.starts_with(want.as_str())
                        } else {
                            got == want
                        }
                    })?;
                    covered.push(name.to_ascii_lowercase());
                }
                [Value::String(op), min, max] if op == "content-length-range" => {
                    range = Some((
                        min.as_u64().ok_or(PolicyError::Malformed)?,
                        max.as_u64().ok_or(PolicyError::Malformed)?,
                    ));
                }
                _ => return Err(PolicyError::Malformed),
            },
            _ => return Err(PolicyError::Malformed),
        }
    }
    for name in fields.keys() {
        let lower = name.to_ascii_lowercase();
        let exempt =
            matches!(lower.as_str(), "policy" | "x-amz-signature" | "file") || lower.starts_with("x-ignore-");
        if !exempt && !covered.contains(&lower) {
            return Err(PolicyError::ExtraField(name.clone()));
        }
    }
    let (min_bytes, max_bytes) = range.unwrap_or((0, u64::MAX));
    Ok(VerifiedPolicy {
        key: fields["key"].clone(),
        min_bytes,
        max_bytes,
    })
}

fn check_field(
    fields: &BTreeMap<String, String>,
    bucket: &str,
    name: &str,
    ok: impl Fn(&str) -> bool,
) -> Result<(), PolicyError> {
    // The bucket is part of the URL, not the form.
    let got = if name.eq_ignore_ascii_case("bucket") {
        Some(bucket)
    } else {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    match got {
        Some(value) if ok(value) => Ok(()),
        _ => Err(PolicyError::ConditionFailed(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn signed(now: DateTime<Utc>, ttl: Duration) -> BTreeMap<String, String> {
        let signer = Signer {
            access_key_id: AKID,
            secret_access_key: SECRET,
            session_token: None,
            region: "us-east-1",
        };
        sign(
            &signer,
            &PolicyRequest {
                bucket: "b",
                key: "uploads/x.csv",
                min_bytes: 1,
                max_bytes: 100,
                now,
                expires_at: now + ttl,
            },
        )
    }

    #[test]
    fn a_freshly_signed_policy_verifies() {
        let now = Utc::now();
        let fields = signed(now, Duration::minutes(15));
        let verified = verify(&fields, AKID, SECRET, "b", now).unwrap();
        assert_eq!(
            verified,
            VerifiedPolicy {
                key: "uploads/x.csv".into(),
                min_bytes: 1,
                max_bytes: 100
            }
        );
    }

    #[test]
    fn the_signature_matches_the_aws_documented_derivation() {
        // The signature is HMAC-SHA256(signing key, base64 policy) in lower hex.
        let now = Utc::now();
        let fields = signed(now, Duration::minutes(1));
        assert_eq!(fields["x-amz-signature"].len(), 64);
        assert!(fields["x-amz-credential"].ends_with("/us-east-1/s3/aws4_request"));
    }

    #[test]
    fn tampering_with_any_signed_part_is_refused() {
        let now = Utc::now();
        let fields = signed(now, Duration::minutes(15));

        let mut other_key = fields.clone();
        other_key.insert("key".into(), "uploads/other.csv".into());
        assert_eq!(
            verify(&other_key, AKID, SECRET, "b", now),
            Err(PolicyError::ConditionFailed("key".into()))
        );

        let mut bad_sig = fields.clone();
        bad_sig.insert("x-amz-signature".into(), "00".repeat(32));
        assert_eq!(
            verify(&bad_sig, AKID, SECRET, "b", now),
            Err(PolicyError::BadSignature)
        );

        assert_eq!(
            verify(&fields, AKID, "another secret", "b", now),
            Err(PolicyError::BadSignature)
        );
        assert_eq!(
            verify(&fields, AKID, SECRET, "other-bucket", now),
            Err(PolicyError::ConditionFailed("bucket".into()))
        );

        let mut extra = fields.clone();
        extra.insert("acl".into(), "public-read".into());
        assert_eq!(
            verify(&extra, AKID, SECRET, "b", now),
            Err(PolicyError::ExtraField("acl".into()))
        );
    }

    #[test]
    fn an_expired_policy_is_refused() {
        let signed_at = Utc::now() - Duration::minutes(20);
        let fields = signed(signed_at, Duration::minutes(15));
        assert_eq!(
            verify(&fields, AKID, SECRET, "b", Utc::now()),
            Err(PolicyError::Expired)
        );
    }
}
