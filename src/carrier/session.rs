//! Each carrier account's tokens, shared by every worker process through the database: read
//! from `carrier_sessions` (sealed), refreshed before they expire or after the carrier
//! refused them, by one process at a time (a claim on the row; the others wait for its
//! result instead of logging in too).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use secrecy::{ExposeSecret, SecretString};

use super::client::{CallError, CallRecord, CarrierClient, Tokens};
use super::sealed::SecretBox;
use crate::db::stmt;

/// Tokens this close to expiry are refreshed before use.
const REFRESH_MARGIN: chrono::Duration = chrono::Duration::seconds(60);
/// How long a refresh may hold its claim; a process that died holding it is waited out.
const REFRESH_CLAIM: chrono::Duration = chrono::Duration::seconds(30);
/// How long a caller waits for another process's refresh.
const WAIT_FOR_REFRESH: Duration = Duration::from_secs(45);

/// The credentials a login needs.
pub struct Login<'a> {
    pub root_tenant_id: &'a str,
    pub account_id: &'a str,
    pub base_url: &'a url::Url,
    pub client_id: &'a str,
    pub client_secret: &'a SecretString,
    pub account_number: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Db(#[from] DbErr),
    /// The carrier refused the login: the account's credentials are wrong or revoked.
    #[error("carrier login failed: {0}")]
    Refused(String),
    /// The carrier could not be reached or failed; worth trying again later.
    #[error("carrier login did not complete: {0}")]
    Unavailable(String),
    #[error("the stored carrier tokens cannot be opened: {0}")]
    Sealed(String),
}

/// Tokens of one generation: a caller that sees them refused names the generation, so that
/// of many callers refused at once only one refreshes.
pub struct Session {
    pub tokens: Tokens,
    pub generation: i64,
}

/// The account's current tokens, logging in when there are none, they are about to expire,
/// or they are of `refused` (a generation the carrier turned down).
pub async fn current(
    db: &DatabaseConnection,
    secrets: &SecretBox,
    client: &CarrierClient,
    login: &Login<'_>,
    refused: Option<i64>,
    audit: &mut Vec<CallRecord>,
) -> Result<Session, SessionError> {
    let backend = db.get_database_backend();
    let key = [login.root_tenant_id.into(), login.account_id.into()];
    let aad = format!("{}/{}/tokens", login.root_tenant_id, login.account_id);
    let deadline = tokio::time::Instant::now() + WAIT_FOR_REFRESH;
    loop {
        let found = db
            .query_one(stmt(
                backend,
                "SELECT tokens_sealed, expires_at, generation, refreshing_until FROM carrier_sessions \
                 WHERE root_tenant_id = $1 AND carrier_account_id = $2",
                key.clone(),
            ))
            .await?;
        let Some(row) = found else {
            // The account's first call: its row, once (a write only then, not every round).
            db.execute(stmt(
                backend,
                "INSERT INTO carrier_sessions (root_tenant_id, carrier_account_id, generation) VALUES ($1, $2, 0) \
                 ON CONFLICT DO NOTHING",
                key.clone(),
            ))
            .await?;
            continue;
        };
        let sealed: Option<String> = row.try_get("", "tokens_sealed")?;
        let expires_at: Option<DateTime<Utc>> = row.try_get("", "expires_at")?;
        let generation: i64 = row.try_get("", "generation")?;
        let refreshing_until: Option<DateTime<Utc>> = row.try_get("", "refreshing_until")?;
        let now = Utc::now();
        let fresh = expires_at.is_some_and(|at| at > now + REFRESH_MARGIN) && refused != Some(generation);
        if let (true, Some(sealed)) = (fresh, sealed) {
            return Ok(Session {
                tokens: open(secrets, &sealed, &aad, expires_at.unwrap_or(now))?,
                generation,
            });
        }
        let claimable = refreshing_until.is_none_or(|until| until < now);
        if claimable {
            let claimed = db
                .execute(stmt(
                    backend,
                    "UPDATE carrier_sessions SET refreshing_until = $3 \
                     WHERE root_tenant_id = $1 AND carrier_account_id = $2 AND generation = $4 \
                     AND (refreshing_until IS NULL OR refreshing_until < $5)",
                    [
                        login.root_tenant_id.into(),
                        login.account_id.into(),
                        (now + REFRESH_CLAIM).into(),
                        generation.into(),
                        now.into(),
                    ],
                ))
                .await?
                .rows_affected()
                == 1;
            if claimed {
                return refresh(db, secrets, client, login, generation, &aad, audit).await;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SessionError::Unavailable(
                "another worker's carrier login did not finish in time".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn refresh(
    db: &DatabaseConnection,
    secrets: &SecretBox,
    client: &CarrierClient,
    login: &Login<'_>,
    generation: i64,
    aad: &str,
    audit: &mut Vec<CallRecord>,
) -> Result<Session, SessionError> {
    let backend = db.get_database_backend();
    let (tokens, records) = client
        .login(
            login.base_url,
            login.client_id,
            login.client_secret,
            login.account_number,
        )
        .await;
    audit.extend(records);
    let tokens = match tokens {
        Ok(t) => t,
        Err(e) => {
            // Give the claim back so the next caller tries again (or fails the same way).
            db.execute(stmt(
                backend,
                "UPDATE carrier_sessions SET refreshing_until = NULL \
                 WHERE root_tenant_id = $1 AND carrier_account_id = $2 AND generation = $3",
                [
                    login.root_tenant_id.into(),
                    login.account_id.into(),
                    generation.into(),
                ],
            ))
            .await?;
            return Err(match e {
                CallError::Unauthorized(why) | CallError::Refused(_, why) => SessionError::Refused(why),
                other => SessionError::Unavailable(other.to_string()),
            });
        }
    };
    let plain = serde_json::json!({
        "access": tokens.access.expose_secret(),
        "session": tokens.session.expose_secret(),
    })
    .to_string();
    let sealed = secrets.seal(&SecretString::from(plain), aad);
    db.execute(stmt(
        backend,
        "UPDATE carrier_sessions SET tokens_sealed = $3, expires_at = $4, generation = generation + 1, \
         refreshing_until = NULL WHERE root_tenant_id = $1 AND carrier_account_id = $2",
        [
            login.root_tenant_id.into(),
            login.account_id.into(),
            sealed.into(),
            tokens.expires_at.into(),
        ],
    ))
    .await?;
    tracing::info!(account = login.account_id, "carrier tokens refreshed");
    Ok(Session {
        tokens,
        generation: generation + 1,
    })
}

fn open(
    secrets: &SecretBox,
    sealed: &str,
    aad: &str,
    expires_at: DateTime<Utc>,
) -> Result<Tokens, SessionError> {
    let plain = secrets
        .open(sealed, aad)
        .map_err(|e| SessionError::Sealed(e.to_string()))?;
    #[derive(serde::Deserialize)]
    struct Pair {
        access: String,
        session: String,
    }
    let pair: Pair =
        serde_json::from_str(plain.expose_secret()).map_err(|e| SessionError::Sealed(e.to_string()))?;
    Ok(Tokens {
        access: pair.access.into(),
        session: pair.session.into(),
        expires_at,
    })
}
