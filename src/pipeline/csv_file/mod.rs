//! Streaming reader of an uploaded device CSV (SPEC §4): UTF-8 with an optional BOM, LF or CRLF,
//! RFC 4180 quoting, a header naming the device key column. Rows are read one at a time and a
//! row may not exceed [`MAX_ROW_BYTES`], so memory stays flat whatever the file's size.
//!
//! What an operator can observe:
//! - The header is the first line with a non-blank cell. Data rows are numbered from 1 in file
//!   order (the header is row 0), whatever line breaks their quoted cells contain.
//! - A completely empty line is skipped and gets no number. Any other line after the header is
//!   a data row, even one of only spaces, commas or `""`: its key is empty, so it fails
//!   `INVALID_DEVICE_UID` and shows up in the results instead of vanishing.
//! - Header names match after trimming, ignoring ASCII case. Of several key-column aliases the
//!   first in priority order wins; of two columns with the same name, the leftmost.
//! - A row may have fewer cells than the header (the missing ones read as empty) or more (kept).
//! - Quoting is as lenient as csv-core's (a quote inside an unquoted cell is literal; text after
//!   a closing quote is appended to the cell), except that a quoted cell still open at the end
//!   of the file, or a row over [`MAX_ROW_BYTES`], fails the file: both would silently swallow
//!   the rows after them.

mod error;
mod scanner;

use std::io::Cursor;

use csv_async::{AsyncReader, AsyncReaderBuilder, StringRecord};
use tokio::io::{AsyncRead, AsyncReadExt, Chain};

pub use error::FileError;
use error::{file_error, missing_key_column};
use scanner::{Scanner, Tape};

use crate::domain::{DeviceType, KeyKind};

/// The longest row accepted, in bytes. A device row is a few dozen bytes; the bound keeps the
/// parser's memory flat and stops a missing closing quote from swallowing the whole file.
pub const MAX_ROW_BYTES: usize = 64 * 1024;

/// How much of the file's start is inspected before parsing (BOM, UTF-16, binary content).
const SNIFF_BYTES: usize = 1024;
/// Read buffer of the CSV parser.
const BUFFER_BYTES: usize = 64 * 1024;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Accepted names of the key column in priority order, and the name of the second key column
/// (a smartphone's second IMEI; a line's IMEI).
fn column_names(kind: KeyKind) -> (&'static [&'static str], Option<&'static str>) {
    match kind {
        KeyKind::Device(DeviceType::Smartphone) => (&["imei", "deviceUid", "IMEI"], Some("imei2")),
        KeyKind::Device(DeviceType::Tablet) => (&["serialNumber", "serial_number", "deviceUid"], None),
        KeyKind::Iccid => (&["iccid", "ICCID"], Some("imei")),
    }
}

/// The optional service plan column of a line's row (carrier actions).
fn plan_column_name(kind: KeyKind) -> Option<&'static str> {
    (kind == KeyKind::Iccid).then_some("servicePlan")
}

fn type_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Device(DeviceType::Smartphone) => "SMARTPHONE",
        KeyKind::Device(DeviceType::Tablet) => "TABLET",
        KeyKind::Iccid => "CARRIER_STATUS",
    }
}

/// The key cells of one data row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvRow {
    /// 1-based number of the data row (the header is row 0).
    pub row_number: i32,
    /// The key cell, trimmed; empty when the row has no such cell.
    pub uid: String,
    /// A smartphone's second IMEI cell, trimmed; `None` when absent or blank.
    pub uid2: Option<String>,
    /// A line's service plan cell (carrier actions), trimmed; `None` when absent or blank.
    pub plan: Option<String>,
}

/// An uploaded CSV being read row by row from a stream.
///
/// [`CsvFile::open`] reads the header; [`CsvFile::next_row`] (key cells) or
/// [`CsvFile::next_record`] (every cell, for the error report) then read the data rows in order.
/// Stop at the first error: the file then reads as ended. Opened with
/// [`CsvFile::open_verbatim`], it also keeps each row's bytes as written ([`CsvFile::verbatim`]).
pub struct CsvFile<R> {
    csv: AsyncReader<Scanner<Chain<Cursor<Vec<u8>>, R>>>,
    headers: Vec<String>,
    key: usize,
    key2: Option<usize>,
    plan: Option<usize>,
    /// Data rows read so far, i.e. the number of the last one.
    rows: i32,
    /// Parser offsets (BOM excluded) of the last record read: from where the parser started
    /// it to where it stopped, so skipped blank lines and line breaks may be inside.
    span: (u64, u64),
    bom: bool,
    /// File offset of the parser's offset 0: the BOM's length, or where a resumed read began.
    base: u64,
}

impl<R: AsyncRead + Unpin + Send> CsvFile<R> {
    /// Reads the header and finds the key columns of `kind` (a device type, or lines).
    pub async fn open(reader: R, kind: impl Into<KeyKind>) -> Result<Self, FileError> {
        Self::open_with(reader, kind.into(), false).await
    }

    /// As [`CsvFile::open`], keeping the bytes of the header and of each row as written, so
    /// rows can be copied out with their quoting untouched. Memory stays bounded: bytes are
    /// released once the row after them is read.
    pub async fn open_verbatim(reader: R, kind: impl Into<KeyKind>) -> Result<Self, FileError> {
        Self::open_with(reader, kind.into(), true).await
    }

    async fn open_with(mut reader: R, kind: KeyKind, verbatim: bool) -> Result<Self, FileError> {
        let mut head = vec![0u8; SNIFF_BYTES];
        let mut len = 0;
        while len < head.len() {
            let n = reader.read(&mut head[len..]).await.map_err(FileError::Io)?;
            if n == 0 {
                break;
            }
            len += n;
        }
        head.truncate(len);
        if head.is_empty() {
            return Err(FileError::Empty);
        }
        if head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF") {
            return Err(FileError::Utf16);
        }
        // A NUL near the start means binary, even when invalid UTF-8 comes first (images).
        if let Some(at) = head.iter().position(|&b| b == 0) {
            return Err(FileError::Binary { offset: at as u64 });
        }
        let bom = if head.starts_with(UTF8_BOM) {
            UTF8_BOM.len()
        } else {
            0
        };
        head.drain(..bom);

        let mut scanner = Scanner::new(Cursor::new(head).chain(reader), bom as u64);
        if verbatim {
            scanner.tape = Some(Tape::default());
        }
        let mut csv = parser(scanner);

        let mut header = StringRecord::new();
        loop {
            // Lines before the header are never wanted verbatim.
            let end = csv.position().byte();
            if let Some(tape) = &mut csv.get_mut().tape {
                tape.release_before(end);
            }
            match csv.read_record(&mut header).await {
                Ok(true) if header.iter().any(|cell| !cell.trim().is_empty()) => break,
                Ok(true) => {}
                Ok(false) => return Err(FileError::Empty),
                Err(err) => return Err(file_error(&csv, err)),
            }
        }
        let headers: Vec<String> = header.iter().map(str::to_owned).collect();
        let span = (header.position().map_or(0, |p| p.byte()), csv.position().byte());

        let (names, second) = column_names(kind);
        let key = names
            .iter()
            .find_map(|name| column(&headers, name))
            .ok_or_else(|| missing_key_column(kind, &headers))?;
        let key2 = second.and_then(|name| column(&headers, name));
        let plan = plan_column_name(kind).and_then(|name| column(&headers, name));
        Ok(Self {
            csv,
            headers,
            key,
            key2,
            plan,
            rows: 0,
            span,
            bom: bom > 0,
            base: bom as u64,
        })
    }

    /// Reads on from the middle of a file whose header was read before: `reader` starts at
    /// file offset `at`, the start of data row `first_row` (or blank lines before it), as
    /// [`CsvFile::offset`] found it; the key columns are the header's. The rows read are the
    /// rows a read from the start gives there, with the same numbers. No header: `headers`
    /// is empty.
    pub fn resume(reader: R, at: u64, key: usize, key2: Option<usize>, first_row: i32) -> Self {
        let csv = parser(Scanner::new(Cursor::new(Vec::new()).chain(reader), at));
        Self {
            csv,
            headers: Vec::new(),
            key,
            key2,
            plan: None,
            rows: first_row.saturating_sub(1),
            span: (0, 0),
            bom: false,
            base: at,
        }
    }

    /// The file offset where the parser stopped: right after the last row read (or the
    /// header), so the next row starts here or after blank lines. A read resumed here gives
    /// the rest of the file's rows.
    pub fn offset(&self) -> u64 {
        self.base + self.csv.position().byte()
    }

    /// The device key column and the second IMEI column, as found in the header.
    pub fn key_columns(&self) -> (usize, Option<usize>) {
        (self.key, self.key2)
    }

    /// The service plan column of a line's file, as found in the header.
    pub fn plan_column(&self) -> Option<usize> {
        self.plan
    }

    /// A resumed read that also reads the service plan column.
    pub fn with_plan_column(mut self, plan: Option<usize>) -> Self {
        self.plan = plan;
        self
    }

    /// Whether the file starts with a UTF-8 byte-order mark.
    pub fn has_bom(&self) -> bool {
        self.bom
    }

    /// The bytes of the last record read (right after opening: the header) as written in the
    /// file, without line breaks before or after it; empty unless opened verbatim.
    pub fn verbatim(&self) -> &[u8] {
        let Some(tape) = &self.csv.get_ref().tape else {
            return &[];
        };
        let at = |offset: u64| {
            usize::try_from(offset.saturating_sub(tape.start)).map_or(0, |n| n.min(tape.bytes.len()))
        };
        trim_line_breaks(&tape.bytes[at(self.span.0)..at(self.span.1)]).0
    }

    /// The line break that ends the header line (`\r\n` or `\n`), to write rows the way the
    /// file does; read right after opening verbatim.
    pub fn header_line_break(&self) -> &'static str {
        let Some(tape) = &self.csv.get_ref().tape else {
            return "\n";
        };
        let end =
            usize::try_from(self.span.1.saturating_sub(tape.start)).map_or(0, |n| n.min(tape.bytes.len()));
        let start = usize::try_from(self.span.0.saturating_sub(tape.start)).map_or(0, |n| n.min(end));
        match trim_line_breaks(&tape.bytes[start..end]).1.first() {
            Some(b'\r') => "\r\n",
            _ => "\n",
        }
    }

    /// The header's cells as written (BOM removed, not trimmed).
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// The next data row's key cells, or `None` at the end of the file.
    pub async fn next_row(&mut self) -> Result<Option<CsvRow>, FileError> {
        Ok(self
            .next_record()
            .await?
            .map(|(row_number, record)| self.row_of(row_number, &record)))
    }

    /// The next data row's number and every cell, extra columns included; `None` at the end.
    pub async fn next_record(&mut self) -> Result<Option<(i32, StringRecord)>, FileError> {
        let mut record = StringRecord::new();
        Ok(self.read_into(&mut record).await?.map(|n| (n, record)))
    }

    /// The key cells of a record read by [`CsvFile::next_record`].
    pub fn row_of(&self, row_number: i32, record: &StringRecord) -> CsvRow {
        let cell = |i: usize| record.get(i).map_or("", str::trim);
        CsvRow {
            row_number,
            uid: cell(self.key).to_owned(),
            uid2: self.key2.map(cell).filter(|c| !c.is_empty()).map(str::to_owned),
            plan: self.plan.map(cell).filter(|c| !c.is_empty()).map(str::to_owned),
        }
    }

    /// Reads the next data row into `record`, returning its number; reuses `record`'s
    /// buffers, so skipping through a large file allocates nothing per row.
    pub async fn read_into(&mut self, record: &mut StringRecord) -> Result<Option<i32>, FileError> {
        if let Some(tape) = &mut self.csv.get_mut().tape {
            tape.release_before(self.span.1);
        }
        let read = self.csv.read_record(record).await;
        self.span = (
            record.position().map_or(0, |p| p.byte()),
            self.csv.position().byte(),
        );
        match read {
            Ok(false) => Ok(None),
            Ok(true) => {
                self.rows = self
                    .rows
                    .checked_add(1)
                    .ok_or(FileError::TooManyRows { max: i32::MAX as u32 })?;
                Ok(Some(self.rows))
            }
            Err(err) => Err(file_error(&self.csv, err)),
        }
    }
}

/// The CSV parser over `scanner`, one dialect for every read: a chunk read from its byte range
/// must cut rows exactly where the whole file's read did.
fn parser<R: AsyncRead + Unpin + Send>(scanner: Scanner<R>) -> AsyncReader<Scanner<R>> {
    AsyncReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(BUFFER_BYTES)
        .create_reader(scanner)
}

/// Reads the whole file and counts its data rows, so that a bad file fails its upload before
/// any row is processed, even when the problem is at the last line. Stops at the first row
/// over `max_rows`.
pub async fn validate<R: AsyncRead + Unpin + Send>(
    reader: R,
    kind: impl Into<KeyKind>,
    max_rows: u32,
) -> Result<u32, FileError> {
    let mut file = CsvFile::open(reader, kind).await?;
    let mut record = StringRecord::new();
    let mut rows = 0u32;
    while file.read_into(&mut record).await?.is_some() {
        rows += 1;
        if rows > max_rows {
            return Err(FileError::TooManyRows { max: max_rows });
        }
    }
    if rows == 0 {
        return Err(FileError::NoDataRows);
    }
    Ok(rows)
}

/// `bytes` without the line breaks around it, and the ones that followed it. Content never
/// starts or ends with a bare line break: one inside a cell is quoted, and the quote is the
/// first or last byte.
fn trim_line_breaks(bytes: &[u8]) -> (&[u8], &[u8]) {
    let is_break = |b: &u8| matches!(b, b'\r' | b'\n');
    let start = bytes.iter().position(|b| !is_break(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !is_break(b)).map_or(start, |i| i + 1);
    (&bytes[start..end], &bytes[end..])
}

/// The index of the leftmost header cell named `name`, ignoring surrounding space and case.
fn column(headers: &[String], name: &str) -> Option<usize> {
    headers.iter().position(|h| h.trim().eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests;
