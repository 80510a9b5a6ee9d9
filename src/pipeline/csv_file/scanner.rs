//! The byte scanner in front of the CSV parser: it refuses what the parser would accept
//! silently, and keeps the bytes of rows wanted verbatim.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

use super::MAX_ROW_BYTES;

/// What the scanner refused.
#[derive(Clone, Debug)]
pub(super) enum Problem {
    Binary { offset: u64 },
    NotUtf8 { line: u64, offset: u64 },
    UnclosedQuote { line: u64 },
    RowTooLong { line: u64 },
    QuoteTooLong { line: u64 },
}

/// Where the scanner is in csv-core's quoting rules (default dialect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quoting {
    /// At the start of a cell (or between rows).
    CellStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted cell: closes it, or escapes a second quote.
    QuoteInQuoted,
}

/// The bytes handed to the parser that may still be asked for verbatim.
#[derive(Default)]
pub(super) struct Tape {
    pub(super) bytes: Vec<u8>,
    /// Parser offset of `bytes[0]`.
    pub(super) start: u64,
}

impl Tape {
    /// Forgets the bytes before parser offset `offset`. Compacts only once the dead part is
    /// the larger half, so each byte is moved a bounded number of times.
    pub(super) fn release_before(&mut self, offset: u64) {
        let dead = usize::try_from(offset.saturating_sub(self.start))
            .map_or(self.bytes.len(), |n| n.min(self.bytes.len()));
        if dead > 0 && dead * 2 >= self.bytes.len() {
            self.bytes.drain(..dead);
            self.start += dead as u64;
        }
    }
}

/// Sees every byte on its way to the parser and refuses what the parser would accept silently:
/// NUL bytes, invalid UTF-8, a quoted cell never closed, a row too long to hold in memory.
/// It follows csv-core's quoting rules to know where rows end, and counts physical lines
/// (CRLF, LF or a lone CR) for the messages.
pub(super) struct Scanner<R> {
    inner: R,
    /// Offset in the file of the next byte (a BOM counts).
    offset: u64,
    /// 1-based line of the next byte.
    line: u64,
    after_cr: bool,
    quoting: Quoting,
    /// Line of the quote that opened the current quoted cell.
    quote_line: u64,
    /// Bytes of the current row so far (0 between rows) and the line it starts on.
    row_bytes: usize,
    row_line: u64,
    /// The start of a UTF-8 sequence cut by the end of a read.
    utf8_tail: Vec<u8>,
    /// Once set, every read fails: the parser must not see bytes past a refusal.
    pub(super) problem: Option<Problem>,
    /// A copy of what the parser was given, when rows are wanted verbatim.
    pub(super) tape: Option<Tape>,
}

impl<R> Scanner<R> {
    pub(super) fn new(inner: R, offset: u64) -> Self {
        Self {
            inner,
            offset,
            line: 1,
            after_cr: false,
            quoting: Quoting::CellStart,
            quote_line: 1,
            row_bytes: 0,
            row_line: 1,
            utf8_tail: Vec::with_capacity(4),
            problem: None,
            tape: None,
        }
    }

    /// Checks the next bytes of the stream.
    fn scan(&mut self, bytes: &[u8]) -> Result<(), Problem> {
        let bad_utf8 = self.check_utf8(bytes);
        let clean = bad_utf8.map_or(bytes.len(), |at| {
            usize::try_from(at.saturating_sub(self.offset)).map_or(bytes.len(), |n| n.min(bytes.len()))
        });
        for &b in &bytes[..clean] {
            self.step(b)?;
        }
        match bad_utf8 {
            Some(offset) => Err(Problem::NotUtf8 {
                line: self.line,
                offset,
            }),
            None => Ok(()),
        }
    }

    /// The offset of the first invalid UTF-8 sequence in `bytes` (or in the tail of the
    /// previous read they complete), keeping an incomplete sequence at their end for later.
    fn check_utf8(&mut self, bytes: &[u8]) -> Option<u64> {
        let mut rest = bytes;
        if !self.utf8_tail.is_empty() {
            let start = self.offset - self.utf8_tail.len() as u64;
            while let Some((&b, more)) = rest.split_first() {
                self.utf8_tail.push(b);
                rest = more;
                match std::str::from_utf8(&self.utf8_tail) {
                    Ok(_) => {
                        self.utf8_tail.clear();
                        break;
                    }
                    Err(e) if e.error_len().is_some() => return Some(start),
                    Err(_) => {}
                }
            }
            if !self.utf8_tail.is_empty() {
                return None;
            }
        }
        let rest_offset = self.offset + (bytes.len() - rest.len()) as u64;
        match std::str::from_utf8(rest) {
            Ok(_) => None,
            Err(e) if e.error_len().is_some() => Some(rest_offset + e.valid_up_to() as u64),
            Err(e) => {
                self.utf8_tail.extend_from_slice(&rest[e.valid_up_to()..]);
                None
            }
        }
    }

    fn step(&mut self, b: u8) -> Result<(), Problem> {
        if b == 0 {
            return Err(Problem::Binary { offset: self.offset });
        }
        let line = self.line;
        if b == b'\r' || (b == b'\n' && !self.after_cr) {
            self.line += 1;
        }
        self.after_cr = b == b'\r';
        self.offset += 1;

        use Quoting::*;
        let (next, row_ends) = match (self.quoting, b) {
            (Quoted, b'"') => (QuoteInQuoted, false),
            (Quoted, _) => (Quoted, false),
            (CellStart, b'"') => {
                self.quote_line = line;
                (Quoted, false)
            }
            (QuoteInQuoted, b'"') => (Quoted, false),
            (_, b',') => (CellStart, false),
            (_, b'\r' | b'\n') => (CellStart, true),
            _ => (Unquoted, false),
        };
        self.quoting = next;
        if row_ends {
            self.row_bytes = 0;
            return Ok(());
        }
        if self.row_bytes == 0 {
            self.row_line = line;
        }
        self.row_bytes += 1;
        if self.row_bytes > MAX_ROW_BYTES {
            return Err(if self.quoting == Quoted {
                Problem::QuoteTooLong {
                    line: self.quote_line,
                }
            } else {
                Problem::RowTooLong { line: self.row_line }
            });
        }
        Ok(())
    }

    /// The end of the stream: nothing may be left half-open.
    fn finish(&self) -> Result<(), Problem> {
        if !self.utf8_tail.is_empty() {
            return Err(Problem::NotUtf8 {
                line: self.line,
                offset: self.offset - self.utf8_tail.len() as u64,
            });
        }
        if self.quoting == Quoting::Quoted {
            return Err(Problem::UnclosedQuote {
                line: self.quote_line,
            });
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Scanner<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.problem.is_some() {
            return Poll::Ready(Err(refused()));
        }
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        let checked = if !read.is_empty() {
            this.scan(read)
        } else if asked {
            this.finish()
        } else {
            Ok(())
        };
        match checked {
            Ok(()) => {
                if let Some(tape) = &mut this.tape {
                    tape.bytes.extend_from_slice(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Err(problem) => {
                this.problem = Some(problem);
                Poll::Ready(Err(refused()))
            }
        }
    }
}

/// The error the parser sees; [`file_error`] replaces it with the scanner's problem.
fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "the CSV scanner refused the file")
}
