//! Carrier accounts in the API: listed and managed by administrators (ADMIN) inside their
//! own tenant tree, like actions. The client secret is write-only: it is an input field, never
//! an output, and is read into a `SecretString` by its own scalar, which never quotes it back.

use async_graphql::{
    Context, InputObject, InputValueError, InputValueResult, Object, Scalar, ScalarType, SimpleObject, Value,
};
use entity::carrier_account;
use secrecy::SecretString;

use super::context::{RequestAuth, db_permit};
use super::scalars::AwsDateTime;
use crate::carrier::accounts::{self, CarrierAccountChanges, NewCarrierAccount};
use crate::error::{GqlResult, IntoGql};

/// How the workers reach a carrier's line-status API for a customer. The OAuth client
/// secret is never returned: `hasClientSecret` says one is stored.
#[derive(SimpleObject)]
pub struct CarrierAccount {
    pub id: String,
    /// The tenant that owns it; its workspaces inherit it.
    pub tenant_id: String,
    pub name: String,
    /// The root of the carrier's API (absolute http or https URL).
    pub base_url: String,
    /// The OAuth client id.
    pub client_id: String,
    pub account_number: String,
    /// Most calls per second to the carrier with this account, across all workers.
    pub rate_limit_per_second: i32,
    /// Most devices in one carrier call.
    pub batch_size: i32,
    pub has_client_secret: bool,
    pub created_at: AwsDateTime,
    pub updated_at: AwsDateTime,
}

impl From<carrier_account::Model> for CarrierAccount {
    fn from(a: carrier_account::Model) -> Self {
        Self {
            has_client_secret: !a.client_secret_sealed.is_empty(),
            id: a.id,
            tenant_id: a.tenant_id,
            name: a.name,
            base_url: a.base_url,
            client_id: a.client_id,
            account_number: a.account_number,
            rate_limit_per_second: a.rate_limit_per_sec,
            batch_size: a.batch_size,
            created_at: a.created_at.into(),
            updated_at: a.updated_at.into(),
        }
    }
}

/// A write-only string (an OAuth client secret), read straight into a `SecretString`.
pub struct Secret(SecretString);

/// A write-only string, such as an OAuth client secret: sent as a JSON string, never part of
/// an answer, and a value of another type is refused without being quoted back.
#[Scalar(name = "Secret")]
impl ScalarType for Secret {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(text) => Ok(Self(text.into())),
            _ => Err(InputValueError::custom("a secret is a string")),
        }
    }

    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::String(_))
    }

    /// Only ever an input; should it be output, it shows nothing.
    fn to_value(&self) -> Value {
        Value::String("[REDACTED]".into())
    }
}

/// A new carrier account of `tenantId`.
// No `Debug`: it holds the client secret.
#[derive(InputObject)]
pub struct CreateCarrierAccountInput {
    pub tenant_id: String,
    /// 1–64 of `A–Z a–z 0–9 - _`; generated when left out.
    pub id: Option<String>,
    /// 1–200 characters.
    pub name: String,
    /// Absolute http or https URL, at most 2048 characters, without credentials, query or
    /// fragment.
    pub base_url: String,
    /// 1–256 printable ASCII characters.
    pub client_id: String,
    /// 1–1024 bytes. Write-only: stored encrypted, never returned or logged.
    #[graphql(secret)]
    pub client_secret: Secret,
    /// 1–64 printable ASCII characters.
    pub account_number: String,
    /// 1–10000 requests per second.
    pub rate_limit_per_second: i32,
    /// 1–100 devices per call.
    pub batch_size: i32,
}

/// Changes to the carrier account `id`; a field left out keeps its value, with the bounds
/// of `CreateCarrierAccountInput`.
// No `Debug`: it may hold the client secret.
#[derive(InputObject)]
pub struct UpdateCarrierAccountInput {
    pub id: String,
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub client_id: Option<String>,
    /// Replaces (rotates) the stored secret. Write-only, never returned or logged.
    #[graphql(secret)]
    pub client_secret: Option<Secret>,
    pub account_number: Option<String>,
    pub rate_limit_per_second: Option<i32>,
    pub batch_size: Option<i32>,
}

#[derive(Default)]
pub struct CarrierAccountQuery;

#[Object]
impl CarrierAccountQuery {
    /// Carrier accounts usable in `tenantId`: its own and those inherited from its
    /// ancestors. Needs ADMIN.
    async fn carrier_accounts(&self, ctx: &Context<'_>, tenant_id: String) -> GqlResult<Vec<CarrierAccount>> {
        async {
            let _permit = db_permit(ctx).await;
            let listed = accounts::list(&ctx.app()?.db, ctx.identity()?, &tenant_id).await?;
            Ok(listed.into_iter().map(CarrierAccount::from).collect())
        }
        .await
        .gql()
    }
}

#[derive(Default)]
pub struct CarrierAccountMutation;

/// Every mutation here needs ADMIN and acts only inside the caller's tenant tree; another
/// customer's account is `CARRIER_ACCOUNT_NOT_FOUND`. A server on a shared database without
/// `FLEETLOAD_CARRIER_SECRET_KEY` refuses creates and updates (`CARRIER_SECRET_KEY_MISSING`).
#[Object]
impl CarrierAccountMutation {
    /// A carrier account of `tenantId` (inherited by its workspaces); an id given must be free
    /// (`ALREADY_EXISTS`).
    async fn create_carrier_account(
        &self,
        ctx: &Context<'_>,
        input: CreateCarrierAccountInput,
    ) -> GqlResult<CarrierAccount> {
        let client_secret = input.client_secret.0;
        async {
            let app = ctx.app()?;
            let new = NewCarrierAccount {
                tenant_id: &input.tenant_id,
                id: input.id.as_deref(),
                name: &input.name,
                base_url: &input.base_url,
                client_id: &input.client_id,
                client_secret: &client_secret,
                account_number: &input.account_number,
                rate_limit_per_sec: input.rate_limit_per_second,
                batch_size: input.batch_size,
            };
            let created =
                accounts::create(&app.db, app.carrier_secrets.as_deref(), ctx.identity()?, new).await?;
            Ok(created.into())
        }
        .await
        .gql()
    }

    /// Changes a carrier account; `clientSecret` given rotates the stored secret.
    async fn update_carrier_account(
        &self,
        ctx: &Context<'_>,
        input: UpdateCarrierAccountInput,
    ) -> GqlResult<CarrierAccount> {
        let client_secret = input.client_secret.map(|secret| secret.0);
        async {
            let app = ctx.app()?;
            let changes = CarrierAccountChanges {
                name: input.name.as_deref(),
                base_url: input.base_url.as_deref(),
                client_id: input.client_id.as_deref(),
                client_secret: client_secret.as_ref(),
                account_number: input.account_number.as_deref(),
                rate_limit_per_sec: input.rate_limit_per_second,
                batch_size: input.batch_size,
            };
            let updated = accounts::update(
                &app.db,
                app.carrier_secrets.as_deref(),
                ctx.identity()?,
                &input.id,
                changes,
            )
            .await?;
            Ok(updated.into())
        }
        .await
        .gql()
    }

    /// Deletes a carrier account. Returns its id.
    async fn delete_carrier_account(&self, ctx: &Context<'_>, id: String) -> GqlResult<String> {
        async {
            accounts::delete(&ctx.app()?.db, ctx.identity()?, &id).await?;
            Ok(id)
        }
        .await
        .gql()
    }
}
