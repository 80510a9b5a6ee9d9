//! Read side of uploads: `upload`, `uploads`, `batchUploadTemplate`.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, Object, SimpleObject};

use super::context::{RequestAuth, db_permit};
use super::types::UploadStatus;
use super::upload_object::Upload;
use crate::access;
use crate::auth::Permission;
use crate::domain::DeviceType;
use crate::error::{ApiError, GqlResult, IntoGql};
use crate::uploads;

const DEFAULT_PAGE: i32 = 20;
const MAX_PAGE: i32 = 500;

#[derive(Default)]
pub struct UploadQuery;

/// Extra fields of a connection.
#[derive(SimpleObject)]
pub struct ConnectionTotals {
    /// How many items match, across all pages.
    pub total_count: i64,
}

pub type UploadConnection = Connection<String, Upload, ConnectionTotals, EmptyFields>;

#[Object]
impl UploadQuery {
    /// One upload; null when it does not exist or is not in `tenantId`'s tree.
    async fn upload(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        upload_id: String,
    ) -> GqlResult<Option<Upload>> {
        async {
            let app = ctx.app()?;
            let _permit = db_permit(ctx).await;
            let scope = access::authorize(&app.db, ctx.identity()?, &tenant_id, Permission::Read).await?;
            Ok(uploads::find_visible(&app.db, &scope, &upload_id)
                .await?
                .map(Upload))
        }
        .await
        .gql()
    }

    /// Uploads of `tenantId` and its workspaces, newest first.
    #[graphql(complexity = "list_complexity(first, child_complexity)")]
    async fn uploads(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        first: Option<i32>,
        after: Option<String>,
        status: Option<UploadStatus>,
    ) -> GqlResult<UploadConnection> {
        async {
            let app = ctx.app()?;
            let first = page_size(first)?;
            let _permit = db_permit(ctx).await;
            let scope = access::authorize(&app.db, ctx.identity()?, &tenant_id, Permission::Read).await?;
            let after = after.as_deref().map(decode_cursor).transpose()?;
            let page = uploads::list(&app.db, &scope, first, after, status.map(Into::into)).await?;
            let mut connection = UploadConnection::with_additional_fields(
                after.is_some(),
                page.has_next,
                ConnectionTotals {
                    total_count: page.total_count as i64,
                },
            );
            connection.edges.extend(
                page.items
                    .into_iter()
                    .map(|u| Edge::new(encode_cursor(u.id), Upload(u))),
            );
            Ok(connection)
        }
        .await
        .gql()
    }

    /// The CSV a valid file for `deviceType` starts with: the header line and an example row.
    /// With `actionKind: CARRIER_STATUS`, the layout of a carrier action's file (by ICCID).
    async fn batch_upload_template(
        &self,
        device_type: i32,
        action_kind: Option<super::admin::ActionKind>,
    ) -> GqlResult<String> {
        let device_type = DeviceType::from_code(device_type).ok_or(ApiError::InvalidDeviceType);
        device_type
            .map(|t| {
                let kind = action_kind.map_or(entity::action::ActionKind::Register, Into::into);
                crate::csv_format::template(crate::domain::KeyKind::of_upload(kind, t))
            })
            .gql()
    }
}

pub fn page_size(first: Option<i32>) -> Result<u64, ApiError> {
    match first.unwrap_or(DEFAULT_PAGE) {
        n @ 0..=MAX_PAGE => Ok(n as u64),
        n if n > MAX_PAGE => Err(ApiError::FirstTooLarge { max: MAX_PAGE }),
        _ => Err(ApiError::BadUserInput(format!(
            "first must be between 0 and {MAX_PAGE}"
        ))),
    }
}

/// A page costs its selection once per item it may hold, so the complexity limit sees
/// `results(first: 500)` as 500 rows.
pub fn list_complexity(first: Option<i32>, child_complexity: usize) -> usize {
    let items = first.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE) as usize;
    items.saturating_mul(child_complexity).saturating_add(1)
}

/// Upload cursors are the upload's position in the list.
pub fn encode_cursor(position: i64) -> String {
    super::cursor::encode("c", position)
}

pub fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    super::cursor::decode("c", cursor)
        .ok_or_else(|| ApiError::BadUserInput("after is not a cursor of this list".into()))
}
