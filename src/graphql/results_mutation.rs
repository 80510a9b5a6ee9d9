//! Mutations on an upload's results: `retryFailedRows`.

use async_graphql::{Context, Object};

use super::context::RequestAuth;
use super::types::PrepareBatchUploadPayload;
use crate::error::{GqlResult, IntoGql};
use crate::uploads;

#[derive(Default)]
pub struct ResultsMutation;

#[Object]
impl ResultsMutation {
    /// A new upload (PREPARED) of a finished upload's rows that did not succeed: same
    /// tenant, action, workflow and options, its file already stored (the original header
    /// and lines of the failed rows and, for a CANCELLED or FAILED upload, of the rows it
    /// never processed), so the client only finalizes it. `UPLOAD_NOT_FINISHED` while the
    /// upload is still processing, `NOTHING_TO_RETRY` when every row succeeded (or the file
    /// was never read), `RETRY_IN_PROGRESS` while another request retries the same upload.
    async fn retry_failed_rows(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        upload_id: String,
    ) -> GqlResult<PrepareBatchUploadPayload> {
        async {
            let prepared =
                uploads::retry_failed_rows(ctx.app()?, ctx.identity()?, &tenant_id, &upload_id).await?;
            Ok(PrepareBatchUploadPayload {
                upload_id: prepared.upload.public_id,
                file_upload: prepared.post.into(),
            })
        }
        .await
        .gql()
    }
}
