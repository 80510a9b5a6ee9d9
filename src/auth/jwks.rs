//! Signing keys of a JWKS endpoint (Cognito's `/.well-known/jwks.json`), fetched on demand.
//!
//! Each replica caches keys by `kid`; an unknown `kid` triggers one refetch (key rotation),
//! at most once per interval whether it succeeds or not, so a flood of forged `kid`s cannot
//! hammer the identity provider. Lookups of cached keys never wait for a fetch.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use tokio::sync::Mutex;

use super::verifier::AuthError;

const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

pub struct JwksCache {
    url: url::Url,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// Held while fetching (one fetch at a time); remembers when the last attempt started.
    refresh: Mutex<Option<Instant>>,
}

impl JwksCache {
    pub fn new(url: url::Url) -> Self {
        Self {
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(HashMap::new()),
            refresh: Mutex::new(None),
        }
    }

    pub async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let mut last_attempt = self.refresh.lock().await;
        // Another request may have refreshed while this one waited for the lock.
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        if last_attempt.is_some_and(|at| at.elapsed() < MIN_REFRESH_INTERVAL) {
            return Err(AuthError::UnknownKey);
        }
        *last_attempt = Some(Instant::now());
        // On failure the keys fetched before stay in use.
        let fetched = self.fetch().await?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = fetched;
        self.cached(kid).ok_or(AuthError::UnknownKey)
    }

    fn cached(&self, kid: &str) -> Option<DecodingKey> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .cloned()
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, AuthError> {
        let set: JwkSet = self
            .http
            .get(self.url.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| AuthError::Jwks(e.to_string()))?
            .json()
            .await
            .map_err(|e| AuthError::Jwks(e.to_string()))?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
            })
            .collect())
    }
}
