//! The rows of a chunk job: read from the byte range of the upload's snapshot that the
//! dispatcher named, before the chunk's transaction begins (so no lock is held while the
//! file is read and parsed).

use std::borrow::Cow;
use std::collections::HashSet;

use super::csv_file::CsvFile;
use super::worker::ChunkError;
use crate::queue::{ChunkJob, ChunkRow, ChunkRows, FileRange};
use crate::storage::ObjectStore;

/// The chunk's rows, in file order; a job that lists its rows lends them.
pub async fn load<'a>(
    storage: &dyn ObjectStore,
    job: &'a ChunkJob,
) -> Result<Cow<'a, [ChunkRow]>, ChunkError> {
    match &job.rows {
        ChunkRows::Listed { rows } => Ok(Cow::Borrowed(rows)),
        ChunkRows::InFile { file } => read(storage, job.upload_id, file).await.map(Cow::Owned),
    }
}

async fn read(
    storage: &dyn ObjectStore,
    upload_id: i64,
    range: &FileRange,
) -> Result<Vec<ChunkRow>, ChunkError> {
    let inconsistent = |what| ChunkError::Inconsistent(upload_id, what);
    let column = |c: u32| usize::try_from(c).map_err(|_| inconsistent("a key column out of range"));
    let key2 = range.key2_column.map(column).transpose()?;
    let wanted = usize::try_from(range.rows).map_err(|_| inconsistent("a chunk too large"))?;
    let reader = storage.get_range(&range.key, range.start..range.end).await?;
    let plan = range.plan_column.map(column).transpose()?;
    let mut file = CsvFile::resume(
        reader,
        range.start,
        column(range.key_column)?,
        key2,
        range.first_row,
    )
    .with_plan_column(plan);
    let duplicates: HashSet<i32> = range.duplicates.iter().copied().collect();
    // The job's own count bounds what is held, whatever the range holds.
    let mut rows = Vec::with_capacity(wanted.min(1 << 16));
    while let Some(row) = file.next_row().await? {
        if rows.len() == wanted {
            return Err(inconsistent(
                "the chunk's byte range holds more rows than its job",
            ));
        }
        rows.push(ChunkRow {
            duplicate: duplicates.contains(&row.row_number),
            row_number: row.row_number,
            uid: row.uid,
            uid2: row.uid2,
            plan: row.plan,
        });
    }
    if rows.len() != wanted {
        return Err(inconsistent(
            "the chunk's byte range holds fewer rows than its job",
        ));
    }
    Ok(rows)
}
