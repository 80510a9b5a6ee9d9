//! The one streaming merge of an upload's file with its results, in row order: it writes both
//! the error report and the retry file. The file and the results are each read once, side by
//! side, so memory stays flat whatever the row and failure counts.

use entity::batch_result;
use entity::prelude::*;
use entity::upload;
use futures::{Stream, TryStreamExt};
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, StreamTrait};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};

use crate::domain::DeviceType;
use crate::error::ApiError;
use crate::pipeline::csv_file::{CsvFile, FileError};
use crate::storage::{ObjectStore, snapshot_key};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// What to write for each failed row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The row as written plus `rowNumber,errorCode,message`, under the header plus those names.
    ErrorReport,
    /// The header and the rows exactly as written: a file to upload again.
    RetryFile,
    /// As `RetryFile`, with every row that has no SUCCESS result: the failed rows and those
    /// an upload that stopped early (cancelled, failed) never processed.
    RetryUnfinished,
}

/// One FAIL result, as the merge needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub row_number: i32,
    pub error_code: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("reading the upload's file: {0}")]
    File(#[from] FileError),
    #[error("reading the results: {0}")]
    Db(#[from] DbErr),
    #[error("writing the output: {0}")]
    Write(#[from] std::io::Error),
    /// A result names a row the file does not have (or results arrived out of order): the
    /// results and the file disagree, and writing on would produce a wrong file.
    #[error("result row {0} is not in the file")]
    RowNotInFile(i32),
}

impl From<MergeError> for ApiError {
    fn from(err: MergeError) -> Self {
        Self::internal(err)
    }
}

/// Writes the failed rows of `upload` in `layout` to `out`, reading the immutable snapshot the
/// pipeline processed; returns how many rows were written.
pub async fn write<C, W>(
    db: &C,
    storage: &dyn ObjectStore,
    upload: &upload::Model,
    layout: Layout,
    out: &mut W,
) -> Result<u64, ApiError>
where
    C: ConnectionTrait + StreamTrait,
    W: AsyncWrite + Unpin,
{
    let device_type = DeviceType::from_code(upload.device_type.into()).ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!("upload {} has an unknown device type", upload.id))
    })?;
    let keys = crate::domain::KeyKind::of_upload(upload.action_kind, device_type);
    let file = CsvFile::open_verbatim(storage.get(&snapshot_key(&upload.object_key)).await?, keys)
        .await
        .map_err(MergeError::from)?;
    if layout == Layout::RetryUnfinished {
        let successes = successes_in_order(db, upload.id).await?;
        return Ok(merge_except(file, successes, out).await?);
    }
    let failures = failures_in_order(db, upload.id).await?;
    Ok(merge(file, failures, layout, out).await?)
}

/// Merges `upload`'s failed rows in `layout` into a temporary file and stores it under `key`;
/// returns how many rows it holds.
pub async fn store<C>(
    db: &C,
    storage: &dyn ObjectStore,
    upload: &upload::Model,
    layout: Layout,
    key: &str,
) -> Result<u64, ApiError>
where
    C: ConnectionTrait + StreamTrait,
{
    // Deleted on drop, whether storing succeeds or not.
    let temp = tempfile::NamedTempFile::new().map_err(ApiError::internal)?;
    let file = tokio::fs::File::create(temp.path())
        .await
        .map_err(ApiError::internal)?;
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let rows = write(db, storage, upload, layout, &mut out).await?;
    drop(out);
    storage.put_file(key, temp.path()).await?;
    Ok(rows)
}

/// The FAIL results of an upload by row number, streamed. The literal `'FAIL'` lets SQLite
/// use the partial index (it does not match a bound parameter against an index's condition).
async fn failures_in_order<'a, C>(
    db: &'a C,
    upload_id: i64,
) -> Result<impl Stream<Item = Result<Failure, DbErr>> + Unpin + 'a, DbErr>
where
    C: ConnectionTrait + StreamTrait,
{
    let sql = "SELECT upload_id, row_number, device_uid, outcome, error_code, message FROM batch_results \
               WHERE upload_id = $1 AND outcome = 'FAIL' ORDER BY row_number";
    let stmt = crate::db::stmt(db.get_database_backend(), sql, [upload_id.into()]);
    let rows = BatchResult::find().from_raw_sql(stmt).stream(db).await?;
    Ok(rows.map_ok(|r: batch_result::Model| Failure {
        row_number: r.row_number,
        error_code: r.error_code,
        message: r.message,
    }))
}

/// The row numbers of an upload's SUCCESS results, ascending, streamed.
async fn successes_in_order<'a, C>(
    db: &'a C,
    upload_id: i64,
) -> Result<impl Stream<Item = Result<i32, DbErr>> + Unpin + 'a, DbErr>
where
    C: ConnectionTrait + StreamTrait,
{
    let sql = "SELECT row_number FROM batch_results \
               WHERE upload_id = $1 AND outcome = 'SUCCESS' ORDER BY row_number";
    let stmt = crate::db::stmt(db.get_database_backend(), sql, [upload_id.into()]);
    let rows = Box::pin(db.stream(stmt).await?);
    Ok(futures::StreamExt::map(rows, |r| {
        r.and_then(|row| row.try_get::<i32>("", "row_number"))
    }))
}

/// The header line as written (with the file's BOM and line break).
fn header_line<R: AsyncRead + Unpin + Send>(file: &CsvFile<R>, layout: Layout) -> Vec<u8> {
    let mut line = Vec::with_capacity(1024);
    if file.has_bom() {
        line.extend_from_slice(UTF8_BOM);
    }
    line.extend_from_slice(file.verbatim());
    if layout == Layout::ErrorReport {
        line.extend_from_slice(b",rowNumber,errorCode,message");
    }
    line.extend_from_slice(file.header_line_break().as_bytes());
    line
}

/// Walks `file` writing every row whose number is not in `skip` (ascending), as written.
pub async fn merge_except<R, S, W>(mut file: CsvFile<R>, mut skip: S, out: &mut W) -> Result<u64, MergeError>
where
    R: AsyncRead + Unpin + Send,
    S: Stream<Item = Result<i32, DbErr>> + Unpin,
    W: AsyncWrite + Unpin,
{
    let line_break = file.header_line_break().as_bytes().to_vec();
    out.write_all(&header_line(&file, Layout::RetryFile)).await?;
    let mut record = csv_async::StringRecord::new();
    let mut next_skip = skip.try_next().await?;
    let mut written = 0u64;
    let mut line = Vec::with_capacity(1024);
    while let Some(n) = file.read_into(&mut record).await? {
        match next_skip {
            // Rows are numbered 1, 2, … in file order: a smaller number left behind is a
            // result the file does not have (or results out of order).
            Some(k) if k < n => return Err(MergeError::RowNotInFile(k)),
            Some(k) if k == n => next_skip = skip.try_next().await?,
            _ => {
                line.clear();
                line.extend_from_slice(file.verbatim());
                line.extend_from_slice(&line_break);
                out.write_all(&line).await?;
                written += 1;
            }
        }
    }
    if let Some(k) = next_skip {
        return Err(MergeError::RowNotInFile(k));
    }
    out.flush().await?;
    Ok(written)
}

/// Walks `file` and `failures` (ascending row numbers) together, writing each failed row.
pub async fn merge<R, S, W>(
    mut file: CsvFile<R>,
    mut failures: S,
    layout: Layout,
    out: &mut W,
) -> Result<u64, MergeError>
where
    R: AsyncRead + Unpin + Send,
    S: Stream<Item = Result<Failure, DbErr>> + Unpin,
    W: AsyncWrite + Unpin,
{
    let line_break = file.header_line_break().as_bytes().to_vec();
    let header_cells = file.headers().len();
    out.write_all(&header_line(&file, layout)).await?;
    let mut line = Vec::with_capacity(1024);

    let mut record = csv_async::StringRecord::new();
    let mut written = 0u64;
    while let Some(failure) = failures.try_next().await? {
        loop {
            match file.read_into(&mut record).await? {
                Some(n) if n < failure.row_number => {}
                Some(n) if n == failure.row_number => break,
                _ => return Err(MergeError::RowNotInFile(failure.row_number)),
            }
        }
        line.clear();
        match layout {
            Layout::RetryFile | Layout::RetryUnfinished => line.extend_from_slice(file.verbatim()),
            Layout::ErrorReport => {
                report_row(&mut line, file.verbatim(), record.len(), header_cells, &failure)
            }
        }
        line.extend_from_slice(&line_break);
        out.write_all(&line).await?;
        written += 1;
    }
    out.flush().await?;
    Ok(written)
}

/// The row as written, padded with empty cells to the header's width so the appended columns
/// line up under their names, then `rowNumber,errorCode,message`.
fn report_row(out: &mut Vec<u8>, verbatim: &[u8], cells: usize, header_cells: usize, failure: &Failure) {
    out.extend_from_slice(verbatim);
    for _ in cells..header_cells {
        out.push(b',');
    }
    out.push(b',');
    out.extend_from_slice(failure.row_number.to_string().as_bytes());
    out.push(b',');
    push_field(out, failure.error_code.as_deref().unwrap_or(""));
    out.push(b',');
    push_field(out, failure.message.as_deref().unwrap_or(""));
}

/// One CSV cell, quoted (RFC 4180) when it would not read back as itself unquoted.
fn push_field(out: &mut Vec<u8>, value: &str) {
    let needs_quotes = value.bytes().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
        || value.starts_with(char::is_whitespace)
        || value.ends_with(char::is_whitespace);
    if !needs_quotes {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    out.push(b'"');
    for b in value.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(row: i32, code: &str, message: &str) -> Failure {
        Failure {
            row_number: row,
            error_code: Some(code.into()),
            message: Some(message.into()),
        }
    }

    async fn run(file: &[u8], failures: Vec<Failure>, layout: Layout) -> Result<String, MergeError> {
        let file =
            CsvFile::open_verbatim(std::io::Cursor::new(file.to_vec()), DeviceType::Smartphone).await?;
        let mut out = Vec::new();
        let stream = futures::stream::iter(failures.into_iter().map(Ok));
        merge(file, stream, layout, &mut out).await?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn fields_are_quoted_only_when_needed() {
        let mut out = Vec::new();
        for value in ["plain", "a,b", "say \"hi\"", "two\nlines", " padded", ""] {
            push_field(&mut out, value);
            out.push(b'|');
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"two\nlines\"|\" padded\"||"
        );
    }

    #[tokio::test]
    async fn the_report_echoes_failed_rows_verbatim_with_their_errors() {
        let file = b"\xEF\xBB\xBFimei,note,\"col, 3\"\r\n111,\"a, \"\"b\"\"\",x\r\n222,plain,y\r\n\r\n333,\"multi\r\nline\",z\r\n444\r\n";
        let report = run(
            file,
            vec![
                fail(1, "INVALID_DEVICE_UID", "not an IMEI"),
                fail(3, "DUPLICATE_IN_FILE", "repeats row 1, \"111\""),
                fail(4, "INVALID_DEVICE_UID", "short"),
            ],
            Layout::ErrorReport,
        )
        .await
        .unwrap();
        assert_eq!(
            report,
            "\u{feff}imei,note,\"col, 3\",rowNumber,errorCode,message\r\n\
             111,\"a, \"\"b\"\"\",x,1,INVALID_DEVICE_UID,not an IMEI\r\n\
             333,\"multi\r\nline\",z,3,DUPLICATE_IN_FILE,\"repeats row 1, \"\"111\"\"\"\r\n\
             444,,,4,INVALID_DEVICE_UID,short\r\n"
        );
    }

    #[tokio::test]
    async fn the_retry_file_is_the_header_and_the_failed_lines_as_written() {
        let file = b"imei,extra\n111,\"q\"\"uote\"\n222,b\n333,c";
        let retry = run(file, vec![fail(1, "X", ""), fail(3, "Y", "")], Layout::RetryFile)
            .await
            .unwrap();
        assert_eq!(retry, "imei,extra\n111,\"q\"\"uote\"\n333,c\n");
    }

    async fn run_except(file: &[u8], successes: Vec<i32>) -> Result<String, MergeError> {
        let file =
            CsvFile::open_verbatim(std::io::Cursor::new(file.to_vec()), DeviceType::Smartphone).await?;
        let mut out = Vec::new();
        merge_except(
            file,
            futures::stream::iter(successes.into_iter().map(Ok)),
            &mut out,
        )
        .await?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn the_unfinished_retry_file_holds_every_row_without_a_success_in_file_order() {
        let file = b"\xEF\xBB\xBFimei,note\r\n111,a\r\n222,\"b,\r\nc\"\r\n\r\n333,d\r\n444,e\r\n555,f";
        // Rows 1 and 4 succeeded; 2 failed, 3 and 5 never ran: all three go again.
        assert_eq!(
            run_except(file, vec![1, 4]).await.unwrap(),
            "\u{feff}imei,note\r\n222,\"b,\r\nc\"\r\n333,d\r\n555,f\r\n"
        );
        assert_eq!(run_except(file, vec![]).await.unwrap().lines().count(), 7);
        assert_eq!(
            run_except(file, vec![1, 2, 3, 4, 5]).await.unwrap(),
            "\u{feff}imei,note\r\n"
        );
    }

    #[tokio::test]
    async fn a_success_beyond_the_file_or_out_of_order_is_an_error() {
        assert!(matches!(
            run_except(b"imei\n1\n2\n", vec![3]).await,
            Err(MergeError::RowNotInFile(3))
        ));
        assert!(matches!(
            run_except(b"imei\n1\n2\n3\n", vec![2, 1]).await,
            Err(MergeError::RowNotInFile(1))
        ));
    }

    #[tokio::test]
    async fn no_failures_give_the_header_alone() {
        assert_eq!(
            run(b"imei\n1\n2\n", vec![], Layout::ErrorReport).await.unwrap(),
            "imei,rowNumber,errorCode,message\n"
        );
    }

    #[tokio::test]
    async fn a_result_beyond_the_file_or_out_of_order_is_an_error() {
        let beyond = run(b"imei\n1\n2\n", vec![fail(3, "X", "")], Layout::RetryFile).await;
        assert!(matches!(beyond, Err(MergeError::RowNotInFile(3))));
        let backwards = run(
            b"imei\n1\n2\n",
            vec![fail(2, "X", ""), fail(1, "X", "")],
            Layout::RetryFile,
        )
        .await;
        assert!(matches!(backwards, Err(MergeError::RowNotInFile(1))));
    }

    #[tokio::test]
    async fn rows_far_apart_in_a_large_file_are_found() {
        let mut file = b"imei,pad\n".to_vec();
        for i in 1..=200_000 {
            file.extend_from_slice(format!("{i},\"{}\"\n", "x".repeat(20)).as_bytes());
        }
        let retry = run(
            &file,
            vec![fail(7, "X", ""), fail(150_000, "X", ""), fail(200_000, "X", "")],
            Layout::RetryFile,
        )
        .await
        .unwrap();
        let pad = format!("\"{}\"", "x".repeat(20));
        assert_eq!(retry, format!("imei,pad\n7,{pad}\n150000,{pad}\n200000,{pad}\n"));
    }
}
