//! The carrier accounts catalog (issue 14): managed like actions (ADMIN, inside the
//! administrator's own tenant tree, ids per customer), with the OAuth client secret
//! write-only and sealed at rest. The checks of the inputs are pure functions; the writes are
//! single statements; [`credentials`] is the workers' read, the only place a secret opens.

use chrono::Utc;
use entity::prelude::*;
use entity::{action, carrier_account};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set,
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::sealed::{SealError, SecretBox};
use crate::access;
use crate::admin::{check_id, check_name, insert_new, root_of, tree_root};
use crate::auth::{Identity, Permission};
use crate::error::ApiError;

pub const MAX_BASE_URL: usize = 2048;
pub const MAX_CLIENT_ID: usize = 256;
pub const MAX_CLIENT_SECRET: usize = 1024;
pub const MAX_ACCOUNT_NUMBER: usize = 64;
pub const MAX_RATE_LIMIT_PER_SEC: i32 = 10_000;
pub const MAX_BATCH_SIZE: i32 = 100;

/// What the sealed secret of the account `root_tenant_id/id` is bound to: a sealed value
/// copied to another row (or another customer's row of the same id) does not open there.
pub fn secret_aad(root_tenant_id: &str, id: &str) -> String {
    format!("{root_tenant_id}/{id}")
}

/// The root of the carrier's API: an absolute `http(s)` URL without credentials (they go in
/// the client id and secret, which are sealed or never logged), query or fragment (paths
/// are appended to it).
pub fn check_base_url(base_url: &str) -> Result<Url, ApiError> {
    let bad = |why: &str| ApiError::BadUserInput(format!("baseUrl {why}"));
    if base_url.len() > MAX_BASE_URL {
        return Err(bad(&format!("must be at most {MAX_BASE_URL} characters")));
    }
    let url = Url::parse(base_url).map_err(|_| bad("must be an absolute http or https URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad("must be an absolute http or https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not hold credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    // Normalising may percent-encode: the stored form is what is bounded.
    if url.as_str().len() > MAX_BASE_URL {
        return Err(bad(&format!("must be at most {MAX_BASE_URL} characters")));
    }
    Ok(url)
}

/// `len` bytes of printable ASCII (space included), not blank: what carriers' OAuth client
/// ids and account numbers are, and safe in logs and headers.
fn check_printable(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let ok =
        !value.trim().is_empty() && value.len() <= max && value.bytes().all(|b| (0x20..=0x7e).contains(&b));
    ok.then(|| value.to_owned()).ok_or_else(|| {
        ApiError::BadUserInput(format!("{field} must be 1 to {max} printable ASCII characters"))
    })
}

pub fn check_client_id(client_id: &str) -> Result<String, ApiError> {
    check_printable("clientId", client_id, MAX_CLIENT_ID)
}

pub fn check_account_number(account_number: &str) -> Result<String, ApiError> {
    check_printable("accountNumber", account_number, MAX_ACCOUNT_NUMBER)
}

/// Only its length is checked, and the message never quotes it.
pub fn check_client_secret(client_secret: &SecretString) -> Result<(), ApiError> {
    let len = client_secret.expose_secret().len();
    (1..=MAX_CLIENT_SECRET)
        .contains(&len)
        .then_some(())
        .ok_or_else(|| ApiError::BadUserInput(format!("clientSecret must be 1 to {MAX_CLIENT_SECRET} bytes")))
}

pub fn check_rate_limit(requests_per_sec: i32) -> Result<i32, ApiError> {
    (1..=MAX_RATE_LIMIT_PER_SEC)
        .contains(&requests_per_sec)
        .then_some(requests_per_sec)
        .ok_or_else(|| {
            ApiError::BadUserInput(format!(
                "rateLimitPerSecond must be 1 to {MAX_RATE_LIMIT_PER_SEC} requests per second"
            ))
        })
}

pub fn check_batch_size(devices: i32) -> Result<i32, ApiError> {
    (1..=MAX_BATCH_SIZE)
        .contains(&devices)
        .then_some(devices)
        .ok_or_else(|| ApiError::BadUserInput(format!("batchSize must be 1 to {MAX_BATCH_SIZE} devices")))
}

/// A carrier account as given to `createCarrierAccount`.
pub struct NewCarrierAccount<'a> {
    pub tenant_id: &'a str,
    pub id: Option<&'a str>,
    pub name: &'a str,
    pub base_url: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a SecretString,
    pub account_number: &'a str,
    pub rate_limit_per_sec: i32,
    pub batch_size: i32,
}

/// What `updateCarrierAccount` changes; `None` keeps the field. A client secret given
/// replaces (rotates) the stored one.
#[derive(Default)]
pub struct CarrierAccountChanges<'a> {
    pub name: Option<&'a str>,
    pub base_url: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub client_secret: Option<&'a SecretString>,
    pub account_number: Option<&'a str>,
    pub rate_limit_per_sec: Option<i32>,
    pub batch_size: Option<i32>,
}

/// Creating or changing an account seals a secret: without a key there is nothing to seal
/// with (a shared database and no `--carrier-secret-key`).
fn key(secrets: Option<&SecretBox>) -> Result<&SecretBox, ApiError> {
    secrets.ok_or(ApiError::CarrierSecretKeyMissing)
}

pub async fn create(
    db: &impl ConnectionTrait,
    secrets: Option<&SecretBox>,
    identity: &Identity,
    new: NewCarrierAccount<'_>,
) -> Result<carrier_account::Model, ApiError> {
    let scope = access::authorize(db, identity, new.tenant_id, Permission::Admin).await?;
    let root_tenant_id = root_of(&scope);
    let id = match new.id {
        Some(id) => check_id(id)?,
        None => uuid::Uuid::now_v7().to_string(),
    };
    let name = check_name(new.name)?;
    let base_url = check_base_url(new.base_url)?;
    let client_id = check_client_id(new.client_id)?;
    check_client_secret(new.client_secret)?;
    let account_number = check_account_number(new.account_number)?;
    let rate_limit_per_sec = check_rate_limit(new.rate_limit_per_sec)?;
    let batch_size = check_batch_size(new.batch_size)?;
    let sealed = key(secrets)?.seal(new.client_secret, &secret_aad(&root_tenant_id, &id));
    let now = Utc::now();
    let model = carrier_account::Model {
        root_tenant_id,
        id,
        tenant_id: new.tenant_id.to_owned(),
        name,
        base_url: base_url.into(),
        client_id,
        client_secret_sealed: sealed,
        account_number,
        rate_limit_per_sec,
        batch_size,
        created_at: now,
        updated_at: now,
    };
    insert_new(
        db,
        carrier_account::ActiveModel::from(model.clone()),
        [carrier_account::Column::RootTenantId, carrier_account::Column::Id],
    )
    .await?;
    Ok(model)
}

/// The account `id` if the administrator's tree owns it; anything else is not found.
async fn owned(
    db: &impl ConnectionTrait,
    identity: &Identity,
    id: &str,
) -> Result<carrier_account::Model, ApiError> {
    let Some(root) = tree_root(db, identity).await? else {
        return Err(ApiError::CarrierAccountNotFound);
    };
    let account = CarrierAccount::find_by_id((root, id.to_owned()))
        .one(db)
        .await?
        .ok_or(ApiError::CarrierAccountNotFound)?;
    match access::authorize(db, identity, &account.tenant_id, Permission::Admin).await {
        Ok(_) => Ok(account),
        Err(ApiError::Forbidden) if !identity.has(Permission::Admin) => Err(ApiError::Forbidden),
        Err(_) => Err(ApiError::CarrierAccountNotFound),
    }
}

pub async fn update(
    db: &impl ConnectionTrait,
    secrets: Option<&SecretBox>,
    identity: &Identity,
    id: &str,
    changes: CarrierAccountChanges<'_>,
) -> Result<carrier_account::Model, ApiError> {
    let account = owned(db, identity, id).await?;
    let aad = secret_aad(&account.root_tenant_id, &account.id);
    let mut model: carrier_account::ActiveModel = account.into();
    if let Some(name) = changes.name {
        model.name = Set(check_name(name)?);
    }
    if let Some(base_url) = changes.base_url {
        model.base_url = Set(check_base_url(base_url)?.into());
    }
    if let Some(client_id) = changes.client_id {
        model.client_id = Set(check_client_id(client_id)?);
    }
    if let Some(secret) = changes.client_secret {
        check_client_secret(secret)?;
    }
    if let Some(account_number) = changes.account_number {
        model.account_number = Set(check_account_number(account_number)?);
    }
    if let Some(rate) = changes.rate_limit_per_sec {
        model.rate_limit_per_sec = Set(check_rate_limit(rate)?);
    }
    if let Some(batch) = changes.batch_size {
        model.batch_size = Set(check_batch_size(batch)?);
    }
    let secrets = key(secrets)?;
    if let Some(secret) = changes.client_secret {
        model.client_secret_sealed = Set(secrets.seal(secret, &aad));
    }
    model.updated_at = Set(Utc::now());
    match model.update(db).await {
        Ok(updated) => Ok(updated),
        // Deleted since it was read.
        Err(DbErr::RecordNotUpdated) => Err(ApiError::CarrierAccountNotFound),
        Err(e) => Err(e.into()),
    }
}

/// Deletes an account; needs no key, so a server without one can still clean up.
/// Deletes an account no action names (an action's uploads call the carrier through it).
pub async fn delete(db: &impl ConnectionTrait, identity: &Identity, id: &str) -> Result<(), ApiError> {
    let account = owned(db, identity, id).await?;
    let in_use = Action::find()
        .filter(action::Column::RootTenantId.eq(account.root_tenant_id.as_str()))
        .filter(action::Column::CarrierAccountId.eq(account.id.as_str()))
        .count(db)
        .await?;
    if in_use > 0 {
        return Err(ApiError::InUse(format!(
            "{in_use} action(s) use this carrier account"
        )));
    }
    CarrierAccount::delete_by_id((account.root_tenant_id, account.id))
        .exec(db)
        .await?;
    Ok(())
}

/// Accounts usable in `tenant_id`: its own and those inherited from its ancestors.
pub async fn list(
    db: &impl ConnectionTrait,
    identity: &Identity,
    tenant_id: &str,
) -> Result<Vec<carrier_account::Model>, ApiError> {
    let scope = access::authorize(db, identity, tenant_id, Permission::Admin).await?;
    let root_tenant_id = root_of(&scope);
    Ok(CarrierAccount::find()
        .filter(carrier_account::Column::RootTenantId.eq(root_tenant_id))
        .filter(carrier_account::Column::TenantId.is_in(scope.ancestry))
        .order_by_asc(carrier_account::Column::Id)
        .all(db)
        .await?)
}

/// The account `id` usable in `scope` (its own or inherited from an ancestor), for the
/// upload-level checks at prepare; anything else is `CARRIER_ACCOUNT_NOT_FOUND`.
pub async fn in_scope(
    db: &impl ConnectionTrait,
    scope: &access::TenantScope,
    id: &str,
) -> Result<carrier_account::Model, ApiError> {
    // Ids are unique per customer; the scope's ancestry lies within one customer's tree.
    CarrierAccount::find()
        .filter(carrier_account::Column::Id.eq(id))
        .filter(carrier_account::Column::TenantId.is_in(scope.ancestry.iter().cloned()))
        .one(db)
        .await?
        .filter(|a| scope.inherits_from(&a.tenant_id))
        .ok_or(ApiError::CarrierAccountNotFound)
}

/// What a worker calls a carrier with. `Debug` shows no secret.
#[derive(Clone, Debug)]
pub struct CarrierCredentials {
    pub root_tenant_id: String,
    pub id: String,
    pub base_url: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    pub account_number: String,
    pub rate_limit_per_sec: u32,
    pub batch_size: u32,
}

/// Why an account's stored credentials are unusable.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Db(#[from] DbErr),
    /// Another key than the one it was sealed with, or a value moved from another row.
    #[error("the client secret of carrier account {root_tenant_id}/{id} does not open: {source}")]
    Secret {
        root_tenant_id: String,
        id: String,
        source: SealError,
    },
    /// A row written around the API's checks.
    #[error("carrier account {root_tenant_id}/{id} is stored with an invalid {field}")]
    Invalid {
        root_tenant_id: String,
        id: String,
        field: &'static str,
    },
}

/// The workers' read: the account `root_tenant_id/id` with its client secret opened;
/// `None` when there is no such account (deleted since an upload named it).
pub async fn credentials(
    db: &impl ConnectionTrait,
    secrets: &SecretBox,
    root_tenant_id: &str,
    id: &str,
) -> Result<Option<CarrierCredentials>, CredentialsError> {
    let Some(account) = CarrierAccount::find_by_id((root_tenant_id.to_owned(), id.to_owned()))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    credentials_of(secrets, account).map(Some)
}

fn credentials_of(
    secrets: &SecretBox,
    account: carrier_account::Model,
) -> Result<CarrierCredentials, CredentialsError> {
    let invalid = |field| CredentialsError::Invalid {
        root_tenant_id: account.root_tenant_id.clone(),
        id: account.id.clone(),
        field,
    };
    let client_secret = secrets
        .open(
            &account.client_secret_sealed,
            &secret_aad(&account.root_tenant_id, &account.id),
        )
        .map_err(|source| CredentialsError::Secret {
            root_tenant_id: account.root_tenant_id.clone(),
            id: account.id.clone(),
            source,
        })?;
    let base_url = Url::parse(&account.base_url).map_err(|_| invalid("base URL"))?;
    let rate_limit_per_sec = u32::try_from(account.rate_limit_per_sec)
        .ok()
        .filter(|r| *r >= 1)
        .ok_or_else(|| invalid("rate limit"))?;
    let batch_size = u32::try_from(account.batch_size)
        .ok()
        .filter(|b| *b >= 1)
        .ok_or_else(|| invalid("batch size"))?;
    Ok(CarrierCredentials {
        root_tenant_id: account.root_tenant_id,
        id: account.id,
        base_url,
        client_id: account.client_id,
        client_secret,
        account_number: account.account_number,
        rate_limit_per_sec,
        batch_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_absolute_http_without_credentials_query_or_fragment() {
        assert_eq!(
            check_base_url("https://thingspace.example.com/api/m2m/v1")
                .unwrap()
                .as_str(),
            "https://thingspace.example.com/api/m2m/v1"
        );
        assert!(check_base_url("http://127.0.0.1:8089").is_ok());
        let long = format!("https://e.com/{}", "p".repeat(MAX_BASE_URL - 14));
        assert_eq!(long.len(), MAX_BASE_URL);
        assert!(check_base_url(&long).is_ok());
        for bad in [
            "",
            "thingspace.example.com",
            "/api/v1",
            "ftp://e.com/",
            "file:///etc/passwd",
            "https://user:pw@e.com/",
            "https://user@e.com/",
            "https://e.com/?key=1",
            "https://e.com/?",
            "https://e.com/#top",
            "mailto:a@e.com",
            "https:",
            &format!("{long}p"),
        ] {
            let err = check_base_url(bad).unwrap_err();
            assert_eq!(err.code(), "BAD_USER_INPUT", "{bad}");
            assert!(err.to_string().starts_with("baseUrl "), "{err}");
            if bad.contains("pw@") {
                assert!(!err.to_string().contains("pw"), "{err}");
            }
        }
    }

    #[test]
    fn client_ids_and_account_numbers_are_short_printable_ascii() {
        assert_eq!(check_client_id("abc-DEF_123.x y").unwrap(), "abc-DEF_123.x y");
        assert!(check_client_id(&"c".repeat(MAX_CLIENT_ID)).is_ok());
        assert_eq!(
            check_account_number("0342077109-00001").unwrap(),
            "0342077109-00001"
        );
        assert!(check_account_number(&"1".repeat(MAX_ACCOUNT_NUMBER)).is_ok());
        for bad in ["", "   ", "tab\there", "new\nline", "ünï", "\u{7f}"] {
            assert!(check_client_id(bad).is_err(), "{bad:?}");
            assert!(check_account_number(bad).is_err(), "{bad:?}");
        }
        assert!(check_client_id(&"c".repeat(MAX_CLIENT_ID + 1)).is_err());
        assert!(check_account_number(&"1".repeat(MAX_ACCOUNT_NUMBER + 1)).is_err());
    }

    #[test]
    fn client_secrets_are_bounded_and_never_quoted() {
        let secret = |s: String| SecretString::from(s);
        assert!(check_client_secret(&secret("x".into())).is_ok());
        assert!(check_client_secret(&secret("é".repeat(MAX_CLIENT_SECRET / 2))).is_ok());
        for bad in [
            String::new(),
            "s".repeat(MAX_CLIENT_SECRET + 1),
            "é".repeat(MAX_CLIENT_SECRET / 2 + 1),
        ] {
            let err = check_client_secret(&secret(bad.clone())).unwrap_err();
            assert_eq!(err.to_string(), "clientSecret must be 1 to 1024 bytes");
        }
    }

    #[test]
    fn rate_limits_and_batch_sizes_are_bounded() {
        assert_eq!(check_rate_limit(1).unwrap(), 1);
        assert_eq!(check_rate_limit(10_000).unwrap(), 10_000);
        assert_eq!(check_batch_size(1).unwrap(), 1);
        assert_eq!(check_batch_size(100).unwrap(), 100);
        for bad in [0, -1, 10_001, i32::MAX, i32::MIN] {
            assert!(check_rate_limit(bad).is_err(), "{bad}");
        }
        for bad in [0, -5, 101, i32::MAX] {
            assert!(check_batch_size(bad).is_err(), "{bad}");
        }
    }

    fn stored(secrets: &SecretBox, root: &str, id: &str) -> carrier_account::Model {
        carrier_account::Model {
            root_tenant_id: root.into(),
            id: id.into(),
            tenant_id: root.into(),
            name: "T-Mobile".into(),
            base_url: "https://carrier.example.com/api/".into(),
            client_id: "client".into(),
            client_secret_sealed: secrets.seal(&"hunter2".to_owned().into(), &secret_aad(root, id)),
            account_number: "42".into(),
            rate_limit_per_sec: 5,
            batch_size: 50,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn credentials_open_only_on_their_own_row_and_never_print_the_secret() {
        let secrets = SecretBox::new([1; 32]);
        let creds = credentials_of(&secrets, stored(&secrets, "demo", "tmo")).unwrap();
        assert_eq!(creds.client_secret.expose_secret(), "hunter2");
        assert_eq!((creds.rate_limit_per_sec, creds.batch_size), (5, 50));
        assert_eq!(creds.base_url.as_str(), "https://carrier.example.com/api/");
        let shown = format!("{creds:?} {:?}", stored(&secrets, "demo", "tmo"));
        assert!(!shown.contains("hunter2"), "{shown}");

        // The sealed value of demo/tmo copied onto acme/tmo or demo/other does not open.
        for (root, id) in [("acme", "tmo"), ("demo", "other")] {
            let mut moved = stored(&secrets, root, id);
            moved.client_secret_sealed = stored(&secrets, "demo", "tmo").client_secret_sealed;
            let err = credentials_of(&secrets, moved).unwrap_err();
            assert!(
                matches!(
                    err,
                    CredentialsError::Secret {
                        source: SealError::NotAuthentic,
                        ..
                    }
                ),
                "{err}"
            );
        }
        // Another key does not open it either.
        let err = credentials_of(&SecretBox::new([2; 32]), stored(&secrets, "demo", "tmo")).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
