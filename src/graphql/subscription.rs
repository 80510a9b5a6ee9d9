//! `Subscription.uploadProgress`: the live progress of one upload, served from the process's
//! progress hub (one reader per upload, however many subscribers).

use async_graphql::futures_util::stream::BoxStream;
use async_graphql::{Context, Subscription};
use futures::StreamExt;

use super::context::{RequestAuth, current_identity};
use super::types::{BatchResult, UploadProgress};
use crate::access;
use crate::auth::Permission;
use crate::error::{ApiError, IntoGql};
use crate::uploads;

#[derive(Default)]
pub struct ProgressSubscription;

#[Subscription]
impl ProgressSubscription {
    /// The upload's progress now, then on change (at most about four a second, at least one a
    /// second while it is processing); completes after its final state.
    async fn upload_progress(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        upload_id: String,
    ) -> async_graphql::Result<BoxStream<'static, UploadProgress>> {
        async {
            let app = ctx.app()?;
            let identity = current_identity(ctx).await?;
            let scope = access::authorize(&app.db, &identity, &tenant_id, Permission::Read).await?;
            let upload = uploads::find_visible(&app.db, &scope, &upload_id)
                .await?
                .ok_or(ApiError::UploadNotFound)?;
            let progress = app.hub.watch(upload.id).map(|snapshot| {
                let errors = snapshot.recent_errors.iter().cloned().map(BatchResult::from);
                UploadProgress::of(&snapshot.upload, errors.collect(), snapshot.read_at)
            });
            Ok(progress.boxed())
        }
        .await
        .gql()
    }
}
