//! Token verification: HS256 with the local secret, or RS256 against a JWKS.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};

use super::claims::{Claims, Identity, Permission};
use super::jwks::JwksCache;

/// Why a token was refused. Clients only ever see `UNAUTHENTICATED`; the reason is logged.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("token signed by an unknown key")]
    UnknownKey,
    #[error("could not fetch signing keys: {0}")]
    Jwks(String),
}

enum Mode {
    Hs256(DecodingKey),
    Jwks(JwksCache),
}

/// Checks tokens of every request; cheap to share (`Arc`) across the server.
pub struct Verifier {
    mode: Mode,
    validation: Validation,
}

impl Verifier {
    pub fn hs256(secret: &SecretString, audience: &str, issuer: Option<&str>) -> Self {
        Self {
            mode: Mode::Hs256(DecodingKey::from_secret(secret.expose_secret().as_bytes())),
            validation: validation(Algorithm::HS256, audience, issuer),
        }
    }

    pub fn jwks(url: url::Url, audience: &str, issuer: Option<&str>) -> Self {
        Self {
            mode: Mode::Jwks(JwksCache::new(url)),
            validation: validation(Algorithm::RS256, audience, issuer),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let key = match &self.mode {
            Mode::Hs256(key) => key.clone(),
            Mode::Jwks(cache) => {
                let header = jsonwebtoken::decode_header(token)?;
                let kid = header.kid.ok_or(AuthError::UnknownKey)?;
                cache.key(&kid).await?
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)?;
        Ok(data.claims.into())
    }
}

fn validation(alg: Algorithm, audience: &str, issuer: Option<&str>) -> Validation {
    // One algorithm only: a token cannot choose `none` or swap RS256 for HS256.
    let mut v = Validation::new(alg);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "sub", "aud"]);
    v.leeway = 30;
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
    }
    v
}

/// A dev token for `fleetload token`, signed with the embedded secret.
pub fn mint_token(
    secret: &SecretString,
    user: &str,
    tenant: &str,
    permissions: &[Permission],
    audience: &str,
    issuer: Option<&str>,
    ttl_secs: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = Claims {
        sub: user.to_owned(),
        username: Some(user.to_owned()),
        tenant_id: tenant.to_owned(),
        permissions: permissions.to_vec(),
        exp: now + ttl_secs,
        iat: now,
        aud: Some(audience.to_owned()),
        iss: issuer.map(str::to_owned),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
}
