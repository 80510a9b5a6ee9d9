//! Why a file cannot be read as an upload, in the words operators read
//! (`failureReason`), and the mapping of the parser's and scanner's errors onto them.

use std::io;

use csv_async::{AsyncReader, ErrorKind};
use tokio::io::AsyncRead;

use super::scanner::{Problem, Scanner};
use super::{MAX_ROW_BYTES, column_names, type_name};
use crate::domain::KeyKind;

/// Column names quoted in a missing-key-column error, and the characters kept of each.
const LISTED_COLUMNS: usize = 10;
const LISTED_NAME_CHARS: usize = 40;

/// Why a file cannot be read as an upload. `Display` is the upload's `failureReason`, shown to
/// operators; every case but [`FileError::Io`] is the file's fault and will not change on a
/// retry.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// No bytes, or nothing but a BOM, whitespace, line breaks and commas.
    #[error("the file is empty")]
    Empty,
    /// A NUL byte: a spreadsheet, archive or image rather than text.
    #[error("the file is not a CSV text file: it contains binary data (a NUL byte at offset {offset})")]
    Binary { offset: u64 },
    /// A UTF-16 byte-order mark ("Unicode text" exports).
    #[error("the file is UTF-16 text, not UTF-8; save it as \"CSV UTF-8\" and upload it again")]
    Utf16,
    /// Bytes that are not UTF-8; `line` is 1-based, `offset` counts bytes from the file's start.
    #[error(
        "the file is not UTF-8 text: invalid byte sequence on line {line} (offset {offset}); \
         save it as \"CSV UTF-8\" and upload it again"
    )]
    NotUtf8 { line: u64, offset: u64 },
    /// The header has none of the key column's names.
    #[error(
        "the header has no {expected} column, which {device_type} files need (also accepted: \
         {aliases}); columns found: {found}"
    )]
    MissingKeyColumn {
        device_type: &'static str,
        expected: &'static str,
        aliases: String,
        /// The header's names, quoted and truncated, with a hint when the delimiter looks wrong.
        found: String,
    },
    #[error("the file has a header row but no data rows")]
    NoDataRows,
    /// Reading stopped at the first row over the maximum.
    #[error("the file has more than {} data rows, the most one upload may have", thousands(u64::from(*.max)))]
    TooManyRows { max: u32 },
    /// CSV the reader refuses; `line` is where the offending row or quoted cell starts.
    #[error("the file is not valid CSV at line {line}: {reason}")]
    Malformed { line: u64, reason: String },
    /// Reading the stream failed (storage, network): not the file's fault, worth a retry.
    #[error("the file could not be read from storage")]
    Io(#[source] io::Error),
}

impl FileError {
    /// Whether reading failed rather than the file: the same file may read fine on a retry.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Io(_))
    }
}

pub(super) fn missing_key_column(kind: KeyKind, headers: &[String]) -> FileError {
    let (names, _) = column_names(kind);
    let mut found: Vec<String> = headers
        .iter()
        .take(LISTED_COLUMNS)
        .map(|h| {
            let name = h.trim();
            let short: String = name.chars().take(LISTED_NAME_CHARS).collect();
            if short.len() < name.len() {
                format!("{short:?}…")
            } else {
                format!("{short:?}")
            }
        })
        .collect();
    if headers.len() > LISTED_COLUMNS {
        found.push(format!("and {} more", headers.len() - LISTED_COLUMNS));
    }
    let mut found = found.join(", ");
    if let [only] = headers {
        for (delimiter, name) in [(';', "semicolons"), ('\t', "tabs")] {
            if only.contains(delimiter) {
                found.push_str(&format!(
                    " (the columns seem to be separated by {name}; separate them by commas)"
                ));
                break;
            }
        }
    }
    FileError::MissingKeyColumn {
        device_type: type_name(kind),
        expected: names[0],
        aliases: names[1..].join(", "),
        found,
    }
}

/// Maps a parser error; the scanner's refusals arrive as I/O errors and are told apart here.
pub(super) fn file_error<R: AsyncRead + Unpin + Send>(
    csv: &AsyncReader<Scanner<R>>,
    err: csv_async::Error,
) -> FileError {
    let reason = err.to_string();
    match err.into_kind() {
        ErrorKind::Io(io) => match &csv.get_ref().problem {
            Some(problem) => problem.clone().into(),
            None => FileError::Io(io),
        },
        // Unreachable in practice: the scanner checks UTF-8 before the parser sees the bytes.
        ErrorKind::Utf8 { pos, .. } => FileError::NotUtf8 {
            line: pos.as_ref().map_or(0, |p| p.line()),
            offset: pos.as_ref().map_or(0, |p| p.byte()),
        },
        kind => FileError::Malformed {
            line: kind.position().map_or(0, |p| p.line()),
            reason,
        },
    }
}

/// `1234567` as `1,234,567`.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

impl From<Problem> for FileError {
    fn from(problem: Problem) -> Self {
        let limit = thousands(MAX_ROW_BYTES as u64);
        match problem {
            Problem::Binary { offset } => Self::Binary { offset },
            Problem::NotUtf8 { line, offset } => Self::NotUtf8 { line, offset },
            Problem::UnclosedQuote { line } => Self::Malformed {
                line,
                reason: "a quoted cell starts there and is never closed".to_owned(),
            },
            Problem::RowTooLong { line } => Self::Malformed {
                line,
                reason: format!("the row is longer than {limit} bytes"),
            },
            Problem::QuoteTooLong { line } => Self::Malformed {
                line,
                reason: format!(
                    "a quoted cell starts there and is still open after {limit} bytes \
                     (is its closing quote missing?)"
                ),
            },
        }
    }
}
