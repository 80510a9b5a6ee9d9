//! Who made a GraphQL request, as verified at the edge and read by resolvers.

use async_graphql::Context;
use secrecy::{ExposeSecret, SecretString};

use crate::auth::{Identity, Verifier};
use crate::error::ApiError;
use crate::state::AppState;

/// The outcome of checking a request's token; every resolver that touches data asks for
/// an identity, so a missing or bad token fails those fields with `UNAUTHENTICATED`.
#[derive(Clone, Debug)]
pub enum Auth {
    Anonymous,
    Invalid,
    User(Identity),
}

impl Auth {
    /// Verifies the token of an `Authorization` header value, if any.
    pub async fn from_header(verifier: &Verifier, header: Option<&str>) -> Self {
        let Some(token) = header.and_then(crate::auth::token_from_header) else {
            return Self::Anonymous;
        };
        match verifier.verify(token).await {
            Ok(identity) => Self::User(identity),
            Err(err) => {
                tracing::info!(reason = %err, "token refused");
                Self::Invalid
            }
        }
    }
}

/// The raw token a WebSocket connection (or an AppSync `start`) presented, kept beside its
/// verified [`Auth`] so that a subscription verifies it again when it starts: a connection
/// outlives its token, and an expired token must never get an event.
#[derive(Clone)]
pub struct PresentedToken(pub SecretString);

/// The caller of a subscription as of now: the presented token verified again when there is
/// one, else the request's identity.
pub async fn current_identity(ctx: &Context<'_>) -> Result<Identity, ApiError> {
    match ctx.data_opt::<PresentedToken>() {
        Some(PresentedToken(token)) => {
            let verifier = &ctx.app()?.verifier;
            verifier.verify(token.expose_secret()).await.map_err(|err| {
                tracing::info!(reason = %err, "token refused at subscription start");
                ApiError::Unauthenticated
            })
        }
        None => ctx.identity().cloned(),
    }
}

/// A share of the request's database connections (see [`super::DbPermits`]), held while a
/// resolver runs its statements; none when the transport set no bound.
pub async fn db_permit(ctx: &Context<'_>) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match ctx.data_opt::<super::DbPermits>() {
        Some(permits) => permits.acquire().await,
        None => None,
    }
}

/// Resolver access to the caller and the shared state.
pub trait RequestAuth {
    fn identity(&self) -> Result<&Identity, ApiError>;
    fn app(&self) -> Result<&AppState, ApiError>;
}

impl RequestAuth for Context<'_> {
    fn identity(&self) -> Result<&Identity, ApiError> {
        match self.data_opt::<Auth>() {
            Some(Auth::User(identity)) => Ok(identity),
            _ => Err(ApiError::Unauthenticated),
        }
    }

    fn app(&self) -> Result<&AppState, ApiError> {
        self.data::<AppState>()
            .map_err(|e| ApiError::internal(anyhow::anyhow!(e.message)))
    }
}
