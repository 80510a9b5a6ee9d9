//! Signing keys of a JWKS endpoint (Cognito's `/.well-known/jwks.json`), fetched on demand.
//!
//! Each replica caches keys by `kid`; an unknown `kid` triggers one refetch (key rotation),
//! rate-limited so a flood of forged `kid`s cannot hammer the identity provider.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use tokio::sync::Mutex;

use super::verifier::AuthError;

const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

pub struct JwksCache {
    url: url::Url,
    http: reqwest::Client,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

impl JwksCache {
    pub fn new(url: url::Url) -> Self {
        Self {
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            state: Mutex::new(State::default()),
        }
    }

    pub async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        let mut state = self.state.lock().await;
        if let Some(key) = state.keys.get(kid) {
            return Ok(key.clone());
        }
        let stale = state
            .fetched_at
            .is_none_or(|at| at.elapsed() >= MIN_REFRESH_INTERVAL);
        if stale {
            state.keys = self.fetch().await?;
            state.fetched_at = Some(Instant::now());
        }
        state.keys.get(kid).cloned().ok_or(AuthError::UnknownKey)
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
