//! Mutations of an upload's lifecycle: the two AppSync mutations (exact names, argument
//! names and types) and cancelling.

use async_graphql::{Context, Object};

use super::context::RequestAuth;
use super::scalars::AwsJson;
use super::types::{PrepareBatchUploadPayload, UploadStatus};
use super::upload_object::Upload;
use crate::error::{GqlResult, IntoGql};
use crate::uploads::{self, FinalizeInput, PrepareInput};

#[derive(Default)]
pub struct UploadMutation;

#[Object]
impl UploadMutation {
    /// Checks the upload once (tenant, action, workflow, device type, row count) and returns
    /// where to POST the CSV. The upload starts PREPARED.
    #[allow(clippy::too_many_arguments)]
    async fn prepare_batch_upload(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        assign_action_id: String,
        row_count: i32,
        device_type: i32,
        workflow_id: Option<String>,
        brand_id: Option<i32>,
        provision_type: Option<String>,
        target_workspace_id: Option<String>,
    ) -> GqlResult<PrepareBatchUploadPayload> {
        let input = PrepareInput {
            tenant_id,
            assign_action_id,
            row_count,
            device_type,
            workflow_id,
            brand_id,
            provision_type,
            target_workspace_id,
        };
        async {
            let prepared = uploads::prepare(ctx.app()?, ctx.identity()?, input).await?;
            Ok(PrepareBatchUploadPayload {
                upload_id: prepared.upload.public_id,
                file_upload: prepared.post.into(),
            })
        }
        .await
        .gql()
    }

    /// Queues an uploaded file for processing and returns at once. Idempotent: repeated or
    /// concurrent calls queue it once and all answer with the upload's status.
    #[allow(clippy::too_many_arguments)]
    async fn finalize_batch_upload(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        upload_id: String,
        workflow_id: Option<String>,
        sim_control_name: Option<String>,
        sim_control_id: Option<String>,
        billing_detail: Option<AwsJson>,
    ) -> GqlResult<UploadStatus> {
        let input = FinalizeInput {
            tenant_id,
            upload_id,
            workflow_id,
            sim_control_name,
            sim_control_id,
            billing_detail: billing_detail.map(|j| j.0),
        };
        async {
            uploads::finalize(ctx.app()?, ctx.identity()?, input)
                .await
                .map(Into::into)
        }
        .await
        .gql()
    }

    /// Stops an upload that has not finished (PREPARED, QUEUED or PROCESSING → CANCELLED).
    /// Rows already processed keep their results; no further chunk is applied. Repeating it
    /// answers with the cancelled upload; a finished upload → `UPLOAD_ALREADY_FINISHED`.
    async fn cancel_batch_upload(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        upload_id: String,
    ) -> GqlResult<Upload> {
        async {
            uploads::cancel(ctx.app()?, ctx.identity()?, &tenant_id, &upload_id)
                .await
                .map(Upload)
        }
        .await
        .gql()
    }
}
