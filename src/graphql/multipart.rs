//! Resumable multipart uploads (issue 13): the shapes clients and the CLI rely on, exactly.

use async_graphql::{Context, Object, SimpleObject};

use super::context::{RequestAuth, db_permit};
use super::scalars::AwsDateTime;
use super::types::UploadStatus;
use crate::error::{GqlResult, IntoGql};
use crate::storage::StoredPart;
use crate::uploads::multipart::{self, MultipartInput};

/// Where to PUT one part's raw bytes (the answer's `ETag` header names the part), until
/// `expiresAt`; `uploadParts` issues a new URL after that.
#[derive(SimpleObject)]
pub struct PartUrl {
    pub part_number: i32,
    pub url: String,
    pub expires_at: AwsDateTime,
}

impl From<multipart::PartUrl> for PartUrl {
    fn from(p: multipart::PartUrl) -> Self {
        Self {
            part_number: p.part_number as i32,
            url: p.url,
            expires_at: p.expires_at.into(),
        }
    }
}

/// A part the store holds with its full size.
#[derive(SimpleObject)]
pub struct UploadedPart {
    pub part_number: i32,
    pub size: i32,
    pub etag: String,
}

impl From<StoredPart> for UploadedPart {
    fn from(p: StoredPart) -> Self {
        Self {
            part_number: p.part_number as i32,
            // Parts are at most the largest upload, which an `Int` file size bounds.
            size: i32::try_from(p.size).unwrap_or(i32::MAX),
            etag: p.etag,
        }
    }
}

#[derive(SimpleObject)]
pub struct MultipartUpload {
    pub upload_id: String,
    pub part_size: i32,
    pub parts: Vec<PartUrl>,
}

#[derive(SimpleObject)]
pub struct MultipartUploadState {
    pub upload_id: String,
    pub part_size: i32,
    pub completed: Vec<UploadedPart>,
    pub missing: Vec<PartUrl>,
}

#[derive(Default)]
pub struct MultipartQuery;

#[Object]
impl MultipartQuery {
    /// The parts the store really holds (read from the store, never from what a client
    /// says) and fresh URLs for the missing ones: how a client resumes with only the id.
    async fn upload_parts(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        upload_id: String,
    ) -> GqlResult<MultipartUploadState> {
        async {
            let _permit = db_permit(ctx).await;
            let state = multipart::parts(ctx.app()?, ctx.identity()?, &tenant_id, &upload_id).await?;
            Ok(MultipartUploadState {
                upload_id: state.upload_id,
                part_size: part_size_of(state.part_size),
                completed: state.completed.into_iter().map(Into::into).collect(),
                missing: state.missing.into_iter().map(Into::into).collect(),
            })
        }
        .await
        .gql()
    }
}

#[derive(Default)]
pub struct MultipartMutation;

#[Object]
impl MultipartMutation {
    /// `prepareBatchUpload` for a file sent in parts: the same checks, a PREPARED upload,
    /// and a URL per part. `partSize` defaults to 8 MiB; every part but the last must be at
    /// least the configured minimum (S3's 5 MiB), at most 10,000 parts, `fileSize` at most
    /// the configured largest upload.
    #[allow(clippy::too_many_arguments)]
    async fn prepare_multipart_upload(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        assign_action_id: String,
        row_count: i32,
        device_type: i32,
        workflow_id: Option<String>,
        target_workspace_id: Option<String>,
        file_size: i32,
        part_size: Option<i32>,
    ) -> GqlResult<MultipartUpload> {
        let input = MultipartInput {
            tenant_id,
            assign_action_id,
            row_count,
            device_type,
            workflow_id,
            target_workspace_id,
            file_size: file_size.into(),
            part_size: part_size.map(Into::into),
        };
        async {
            let prepared = multipart::prepare_multipart(ctx.app()?, ctx.identity()?, input).await?;
            Ok(MultipartUpload {
                upload_id: prepared.upload_id,
                part_size: part_size_of(prepared.part_size),
                parts: prepared.parts.into_iter().map(Into::into).collect(),
            })
        }
        .await
        .gql()
    }

    /// Assembles the file from its parts and answers the upload's status (still PREPARED):
    /// then `finalizeBatchUpload` works as for a single POST. Parts not in the store with
    /// their full size → `UPLOAD_PARTS_MISSING` (`extensions.missingParts`). Idempotent:
    /// once assembled, a repeat answers the status again.
    async fn complete_multipart_upload(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        upload_id: String,
    ) -> GqlResult<UploadStatus> {
        async {
            multipart::complete(ctx.app()?, ctx.identity()?, &tenant_id, &upload_id)
                .await
                .map(Into::into)
        }
        .await
        .gql()
    }

    /// Drops the uploaded parts from the store and cancels the upload: CANCELLED (again
    /// on a repeat); finalize then answers CANCELLED too and queues nothing.
    async fn abort_multipart_upload(
        &self,
        ctx: &Context<'_>,
        tenant_id: String,
        upload_id: String,
    ) -> GqlResult<UploadStatus> {
        async {
            multipart::abort(ctx.app()?, ctx.identity()?, &tenant_id, &upload_id)
                .await
                .map(Into::into)
        }
        .await
        .gql()
    }
}

/// Part sizes fit an `Int`: they are at most the file size, itself an `Int`.
fn part_size_of(bytes: u64) -> i32 {
    i32::try_from(bytes).unwrap_or(i32::MAX)
}
