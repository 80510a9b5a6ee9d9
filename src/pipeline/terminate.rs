//! Ending an unfinished upload from outside the workers' counting: FAILED (the file or a job
//! cannot be processed) or CANCELLED (an operator said stop).

use chrono::Utc;
use entity::prelude::*;
use entity::upload::{self, ReportStatus, UploadStatus};
use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, TransactionTrait,
};

use crate::webhook::Outbox;

/// Moves upload `upload_id` to the terminal `status` unless it already reached one, and
/// queues its webhook call and (when rows failed) its error report in the same transaction.
/// Results already written stay. Returns
/// whether this call ended it (a compare-and-set: of concurrent callers, one wins).
pub async fn terminate(
    db: &DatabaseConnection,
    outbox: &Outbox,
    upload_id: i64,
    status: UploadStatus,
    reason: Option<&str>,
) -> Result<bool, DbErr> {
    let txn = db.begin().await?;
    let ended = terminate_in(&txn, outbox, upload_id, status, reason).await?;
    txn.commit().await?;
    if ended {
        crate::metrics::upload_finished(status);
    }
    Ok(ended)
}

/// [`terminate`] inside the caller's transaction (a job dead-lettered in the same commit);
/// the caller counts the upload as finished (metrics) once that commits.
pub async fn terminate_in(
    txn: &DatabaseTransaction,
    outbox: &Outbox,
    upload_id: i64,
    status: UploadStatus,
    reason: Option<&str>,
) -> Result<bool, DbErr> {
    debug_assert!(status.is_terminal());
    let now = Utc::now();
    let mut update = Upload::update_many()
        .col_expr(upload::Column::Status, Expr::value(status))
        .col_expr(upload::Column::FinishedAt, Expr::value(now))
        .col_expr(upload::Column::UpdatedAt, Expr::value(now))
        .col_expr(
            upload::Column::ReportStatus,
            Into::<SimpleExpr>::into(
                Expr::case(
                    Expr::col(upload::Column::Failed).gt(0),
                    Expr::value(ReportStatus::Pending),
                )
                .finally(Expr::col(upload::Column::ReportStatus)),
            ),
        )
        .col_expr(
            upload::Column::ReportDueAt,
            Into::<SimpleExpr>::into(
                Expr::case(Expr::col(upload::Column::Failed).gt(0), Expr::value(now))
                    .finally(Expr::col(upload::Column::ReportDueAt)),
            ),
        );
    if let Some(reason) = reason {
        update = update.col_expr(upload::Column::FailureReason, Expr::value(reason.to_owned()));
    }
    let ended = update
        .filter(upload::Column::Id.eq(upload_id))
        .filter(upload::Column::Status.is_in([
            UploadStatus::Prepared,
            UploadStatus::Queued,
            UploadStatus::Processing,
        ]))
        .exec(txn)
        .await?
        .rows_affected
        == 1;
    if ended {
        outbox.upload_finished(txn, upload_id).await?;
    }
    Ok(ended)
}
