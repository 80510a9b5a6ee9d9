use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::ReadBuf;

use super::error::thousands;
use super::*;
use proptest::prelude::*;

const IMEI_A: &str = "490154203237518";
const IMEI_B: &str = "350377187371347";

/// Hands out its bytes `chunk` at a time, answering `Pending` before every read as a slow
/// network stream does; optionally fails once the bytes run out.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
    ready: bool,
    fail_at_end: bool,
}

impl Trickle {
    fn new(data: impl Into<Vec<u8>>, chunk: usize) -> Self {
        Self {
            data: data.into(),
            pos: 0,
            chunk,
            ready: false,
            fail_at_end: false,
        }
    }

    fn failing(data: impl Into<Vec<u8>>) -> Self {
        Self {
            fail_at_end: true,
            ..Self::new(data, 7)
        }
    }
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        if self.pos == self.data.len() && self.fail_at_end {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "reset by peer",
            )));
        }
        let n = self.chunk.min(buf.remaining()).min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// A header, then `body` repeated forever; counts the bytes it served.
struct Endless {
    header: &'static [u8],
    body: &'static [u8],
    served: u64,
}

impl AsyncRead for Endless {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let served = self.served as usize;
        let byte = match served.checked_sub(self.header.len()) {
            None => self.header[served],
            Some(i) => self.body[i % self.body.len()],
        };
        buf.put_slice(&[byte]);
        self.served += 1;
        Poll::Ready(Ok(()))
    }
}

async fn read_rows<R: AsyncRead + Unpin + Send>(
    reader: R,
    device_type: DeviceType,
) -> Result<(Vec<String>, Vec<CsvRow>), FileError> {
    let mut file = CsvFile::open(reader, device_type).await?;
    let mut rows = Vec::new();
    while let Some(row) = file.next_row().await? {
        rows.push(row);
    }
    Ok((file.headers().to_vec(), rows))
}

async fn rows(data: &[u8], device_type: DeviceType) -> Result<Vec<CsvRow>, FileError> {
    Ok(read_rows(Cursor::new(data.to_vec()), device_type).await?.1)
}

async fn records(data: &[u8], device_type: DeviceType) -> Result<Vec<(i32, Vec<String>)>, FileError> {
    let mut file = CsvFile::open(Cursor::new(data.to_vec()), device_type).await?;
    let mut out = Vec::new();
    while let Some((n, record)) = file.next_record().await? {
        out.push((n, record.iter().map(str::to_owned).collect()));
    }
    Ok(out)
}

async fn open_error(data: &[u8], device_type: DeviceType) -> FileError {
    match rows(data, device_type).await {
        Ok(rows) => panic!("read {} rows instead of failing", rows.len()),
        Err(err) => err,
    }
}

fn row(row_number: i32, uid: &str, uid2: Option<&str>) -> CsvRow {
    CsvRow {
        row_number,
        uid: uid.to_owned(),
        uid2: uid2.map(str::to_owned),
        plan: None,
    }
}

fn uids(rows: &[CsvRow]) -> Vec<(i32, &str)> {
    rows.iter().map(|r| (r.row_number, r.uid.as_str())).collect()
}

#[tokio::test]
async fn a_bom_and_crlf_line_ends_are_read_as_plain_text() {
    let data = format!("\u{feff}imei,imei2\r\n{IMEI_A},\r\n{IMEI_B},{IMEI_A}\r\n");

    let (headers, rows) = read_rows(Cursor::new(data.into_bytes()), DeviceType::Smartphone)
        .await
        .unwrap();

    assert_eq!(headers, ["imei", "imei2"]);
    assert_eq!(rows, [row(1, IMEI_A, None), row(2, IMEI_B, Some(IMEI_A))]);
}

#[tokio::test]
async fn a_quoted_bom_header_is_unquoted() {
    let data = format!("\u{feff}\"imei\",\"note\"\n\"{IMEI_A}\",x\n");

    let (headers, rows) = read_rows(Cursor::new(data.into_bytes()), DeviceType::Smartphone)
        .await
        .unwrap();

    assert_eq!(headers, ["imei", "note"]);
    assert_eq!(rows, [row(1, IMEI_A, None)]);
}

#[tokio::test]
async fn quoted_cells_keep_commas_line_breaks_and_escaped_quotes_and_rows_stay_numbered() {
    let data = format!(
        "imei,note\r\n\"{IMEI_A}\",\"a, b\"\r\n{IMEI_B},\"line 1\r\nline 2\n\"\"quoted\"\"\"\r\n\" {IMEI_A} \",\r\n"
    );

    let records = records(data.as_bytes(), DeviceType::Smartphone).await.unwrap();

    assert_eq!(
        records,
        [
            (1, vec![IMEI_A.to_owned(), "a, b".to_owned()]),
            (
                2,
                vec![IMEI_B.to_owned(), "line 1\r\nline 2\n\"quoted\"".to_owned()]
            ),
            (3, vec![format!(" {IMEI_A} "), String::new()]),
        ]
    );
    let rows = rows(data.as_bytes(), DeviceType::Smartphone).await.unwrap();
    assert_eq!(uids(&rows), [(1, IMEI_A), (2, IMEI_B), (3, IMEI_A)]);
}

#[tokio::test]
async fn every_alias_of_the_key_column_is_accepted() {
    for (device_type, name) in [
        (DeviceType::Smartphone, "imei"),
        (DeviceType::Smartphone, "deviceUid"),
        (DeviceType::Smartphone, "IMEI"),
        (DeviceType::Tablet, "serialNumber"),
        (DeviceType::Tablet, "serial_number"),
        (DeviceType::Tablet, "deviceUid"),
    ] {
        let data = format!("note,{name}\nx,KEY1\n");

        let rows = rows(data.as_bytes(), device_type).await.unwrap();

        assert_eq!(rows, [row(1, "KEY1", None)], "{name}");
    }
}

#[tokio::test]
async fn of_several_aliases_the_first_in_priority_order_wins() {
    for (device_type, header, expected) in [
        (DeviceType::Smartphone, "deviceUid,imei", "B"),
        (DeviceType::Smartphone, "IMEI,deviceUid", "A"),
        (DeviceType::Smartphone, "deviceUid,IMEI", "B"),
        (DeviceType::Tablet, "deviceUid,serial_number,serialNumber", "C"),
        (DeviceType::Tablet, "deviceUid,serial_number", "B"),
        (DeviceType::Tablet, "serial_number,deviceUid", "A"),
        // The same name twice: the leftmost.
        (DeviceType::Smartphone, "imei,IMEI", "A"),
    ] {
        let data = format!("{header}\nA,B,C\n");

        let rows = rows(data.as_bytes(), device_type).await.unwrap();

        assert_eq!(rows[0].uid, expected, "{header}");
    }
}

#[tokio::test]
async fn header_names_match_after_trimming_and_ignoring_case() {
    let data = format!(" ImEi ,\tIMEI2 \n{IMEI_A},{IMEI_B}\n");

    let (headers, phone) = read_rows(Cursor::new(data.into_bytes()), DeviceType::Smartphone)
        .await
        .unwrap();
    let tablet = rows(b"  SERIAL_NUMBER\nab12cd34\n", DeviceType::Tablet)
        .await
        .unwrap();

    assert_eq!(headers, [" ImEi ", "\tIMEI2 "], "headers stay as written");
    assert_eq!(phone, [row(1, IMEI_A, Some(IMEI_B))]);
    assert_eq!(tablet, [row(1, "ab12cd34", None)]);
}

#[tokio::test]
async fn extra_columns_and_surplus_cells_are_kept_in_the_record() {
    let data = format!("note,imei,site\nhello,{IMEI_A},berlin,surplus\n,{IMEI_B}\n");

    let records = records(data.as_bytes(), DeviceType::Smartphone).await.unwrap();

    assert_eq!(
        records,
        [
            (
                1,
                vec!["hello".into(), IMEI_A.into(), "berlin".into(), "surplus".into()]
            ),
            (2, vec![String::new(), IMEI_B.into()]),
        ]
    );
}

#[tokio::test]
async fn the_second_imei_is_none_when_blank_or_missing() {
    let data =
        format!("imei,imei2\n{IMEI_A},{IMEI_B}\n{IMEI_A},\n{IMEI_A},  \n{IMEI_A}\n{IMEI_A}, {IMEI_B} \n");

    let rows = rows(data.as_bytes(), DeviceType::Smartphone).await.unwrap();

    assert_eq!(
        rows,
        [
            row(1, IMEI_A, Some(IMEI_B)),
            row(2, IMEI_A, None),
            row(3, IMEI_A, None),
            row(4, IMEI_A, None),
            row(5, IMEI_A, Some(IMEI_B)),
        ]
    );
}

#[tokio::test]
async fn without_an_imei2_column_or_for_tablets_there_is_no_second_key() {
    let phone = rows(
        format!("imei,note\n{IMEI_A},{IMEI_B}\n").as_bytes(),
        DeviceType::Smartphone,
    )
    .await
    .unwrap();
    let tablet = rows(b"serialNumber,imei2\nAB12CD34,X\n", DeviceType::Tablet)
        .await
        .unwrap();

    assert_eq!(phone, [row(1, IMEI_A, None)]);
    assert_eq!(tablet, [row(1, "AB12CD34", None)]);
}

#[tokio::test]
async fn completely_empty_lines_are_skipped_but_lines_of_commas_spaces_or_empty_quotes_are_rows() {
    let data = format!("\n\r\nimei,note\n\n{IMEI_A},a\r\n\r\n\n,\n\"\",x\n   \n\"\"\n{IMEI_B},b\n\n");

    let rows = rows(data.as_bytes(), DeviceType::Smartphone).await.unwrap();

    assert_eq!(
        uids(&rows),
        [(1, IMEI_A), (2, ""), (3, ""), (4, ""), (5, ""), (6, IMEI_B)]
    );
}

#[tokio::test]
async fn lines_without_any_name_before_the_header_are_skipped() {
    let data = format!("  \n,,\nimei\n{IMEI_A}\n");

    let (headers, rows) = read_rows(Cursor::new(data.into_bytes()), DeviceType::Smartphone)
        .await
        .unwrap();

    assert_eq!(headers, ["imei"]);
    assert_eq!(uids(&rows), [(1, IMEI_A)]);
}

#[tokio::test]
async fn short_rows_read_missing_cells_as_empty() {
    let data = "note,site,imei,imei2\nx\nx,y\nx,y,KEY\n";

    let rows = rows(data.as_bytes(), DeviceType::Smartphone).await.unwrap();

    assert_eq!(rows, [row(1, "", None), row(2, "", None), row(3, "KEY", None)]);
}

#[tokio::test]
async fn a_one_row_file_without_a_final_line_break_has_one_row() {
    let data = format!("imei\n{IMEI_A}");

    let rows = rows(data.as_bytes(), DeviceType::Smartphone).await.unwrap();
    let count = validate(Cursor::new(data.into_bytes()), DeviceType::Smartphone, 10)
        .await
        .unwrap();

    assert_eq!(rows, [row(1, IMEI_A, None)]);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn the_download_templates_read_back_as_one_row() {
    use crate::domain::KeyKind;
    for kind in [
        KeyKind::Device(DeviceType::Smartphone),
        KeyKind::Device(DeviceType::Tablet),
        KeyKind::Iccid,
    ] {
        let template = crate::csv_format::template(kind);

        let file = CsvFile::open(Cursor::new(template.into_bytes()), kind)
            .await
            .unwrap();
        let rows = read_all(file).await.unwrap();

        assert_eq!(rows.len(), 1);
        let row = crate::pipeline::rules::RowInput::new(kind, &rows[0].uid, rows[0].uid2.as_deref(), false);
        assert!(row.key.is_ok(), "{kind:?}: {:?}", row.key);
    }
}

async fn read_all(mut file: CsvFile<Cursor<Vec<u8>>>) -> Result<Vec<CsvRow>, FileError> {
    let mut out = Vec::new();
    while let Some(row) = file.next_row().await? {
        out.push(row);
    }
    Ok(out)
}

#[tokio::test]
async fn an_empty_file_is_refused_as_empty() {
    for data in [
        &b""[..],
        b"\xEF\xBB\xBF",
        b"\n\r\n",
        b"  \r\n\t\n \n",
        b"\xEF\xBB\xBF , ,\n\"\"\n",
    ] {
        let err = open_error(data, DeviceType::Smartphone).await;

        assert!(matches!(err, FileError::Empty), "{data:?}: {err:?}");
        assert_eq!(err.to_string(), "the file is empty");
    }
}

#[tokio::test]
async fn a_binary_file_is_refused_as_not_a_csv_text_file() {
    let zip = b"PK\x03\x04\x14\x00\x06\x00\x08\x00";
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR";

    let zip_err = open_error(zip, DeviceType::Smartphone).await;
    let png_err = open_error(png, DeviceType::Smartphone).await;

    assert_eq!(
        zip_err.to_string(),
        "the file is not a CSV text file: it contains binary data (a NUL byte at offset 5)"
    );
    assert!(matches!(png_err, FileError::Binary { offset: 8 }), "{png_err:?}");
}

#[tokio::test]
async fn a_nul_byte_deep_in_the_file_is_found_where_it_is() {
    let mut data = format!("imei\n{}", format!("{IMEI_A}\n").repeat(200)).into_bytes();
    let at = data.len();
    data.extend_from_slice(b"49015\x00\n");

    let err = open_error(&data, DeviceType::Smartphone).await;

    assert!(
        matches!(err, FileError::Binary { offset } if offset == at as u64 + 5),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_utf16_file_is_refused_with_a_hint() {
    let data = b"\xFF\xFEi\x00m\x00e\x00i\x00\n\x00";

    let err = open_error(data, DeviceType::Smartphone).await;

    assert_eq!(
        err.to_string(),
        "the file is UTF-16 text, not UTF-8; save it as \"CSV UTF-8\" and upload it again"
    );
}

#[tokio::test]
async fn a_latin1_file_is_refused_naming_the_line_and_offset() {
    // "café" written in Latin-1: a lone 0xE9 at offset 10 + 16 + 3.
    let mut bytes = format!("imei,note\n{IMEI_A},caf").into_bytes();
    bytes.extend_from_slice(b"\xE9\n");
    let mut with_bom = UTF8_BOM.to_vec();
    with_bom.extend_from_slice(&bytes);

    let err = open_error(&bytes, DeviceType::Smartphone).await;
    let bom_err = open_error(&with_bom, DeviceType::Smartphone).await;

    assert_eq!(
        err.to_string(),
        "the file is not UTF-8 text: invalid byte sequence on line 2 (offset 29); \
         save it as \"CSV UTF-8\" and upload it again"
    );
    assert!(
        matches!(bom_err, FileError::NotUtf8 { line: 2, offset: 32 }),
        "offsets count the BOM: {bom_err:?}"
    );
}

#[tokio::test]
async fn invalid_utf8_in_the_header_and_a_sequence_cut_by_the_end_of_file_are_refused() {
    let header = open_error(b"im\xC3\x28ei\n1\n", DeviceType::Smartphone).await;
    let cut = open_error(b"imei\r\n49\r\n\"x\"\r\n\xE2\x82", DeviceType::Smartphone).await;

    assert!(
        matches!(header, FileError::NotUtf8 { line: 1, offset: 2 }),
        "{header:?}"
    );
    assert!(
        matches!(cut, FileError::NotUtf8 { line: 4, offset: 15 }),
        "{cut:?}"
    );
}

#[tokio::test]
async fn a_header_without_the_key_column_names_it_its_aliases_and_the_columns_found() {
    let phone = open_error(b"serialNumber,note\nAB12CD34,x\n", DeviceType::Smartphone).await;
    let tablet = open_error(b"imei, imei2\n1,2\n", DeviceType::Tablet).await;

    assert!(phone.to_string().starts_with("the header has no imei column"));
    assert_eq!(
        phone.to_string(),
        "the header has no imei column, which SMARTPHONE files need (also accepted: deviceUid, \
         IMEI); columns found: \"serialNumber\", \"note\""
    );
    assert_eq!(
        tablet.to_string(),
        "the header has no serialNumber column, which TABLET files need (also accepted: \
         serial_number, deviceUid); columns found: \"imei\", \"imei2\""
    );
}

#[tokio::test]
async fn a_carrier_file_needs_an_iccid_column_and_reads_the_imei_beside_it() {
    use crate::domain::KeyKind;
    let Err(err) = CsvFile::open(Cursor::new(b"imei\n490154203237518\n".to_vec()), KeyKind::Iccid).await
    else {
        panic!("a carrier file without iccid opened")
    };
    assert_eq!(
        err.to_string(),
        "the header has no iccid column, which CARRIER_STATUS files need (also accepted: ICCID); \
         columns found: \"imei\""
    );
    let file = CsvFile::open(
        Cursor::new(b"IMEI,ICCID,servicePlan\n490154203237518,89014103211118510720, m2m 5GB \n".to_vec()),
        KeyKind::Iccid,
    )
    .await
    .unwrap();
    assert_eq!(file.plan_column(), Some(2));
    let rows = read_all(file).await.unwrap();
    assert_eq!(
        rows,
        [CsvRow {
            plan: Some("m2m 5GB".into()),
            ..row(1, "89014103211118510720", Some("490154203237518"))
        }]
    );
    // Only a line's file has the column.
    let file = CsvFile::open(
        Cursor::new(b"imei,servicePlan\n490154203237518,x\n".to_vec()),
        DeviceType::Smartphone,
    )
    .await
    .unwrap();
    assert_eq!(file.plan_column(), None);
}

#[tokio::test]
async fn a_long_header_is_listed_truncated() {
    let long = "x".repeat(100);
    let mut names: Vec<String> = (0..24).map(|i| format!("c{i}")).collect();
    names.insert(0, long);
    let data = format!("{}\n1\n", names.join(","));

    let err = open_error(data.as_bytes(), DeviceType::Tablet).await;

    let FileError::MissingKeyColumn { found, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        found,
        &format!(
            "\"{}\"…, \"c0\", \"c1\", \"c2\", \"c3\", \"c4\", \"c5\", \"c6\", \"c7\", \"c8\", and 15 more",
            "x".repeat(40)
        )
    );
}

#[tokio::test]
async fn a_semicolon_or_tab_separated_header_gets_a_hint() {
    let semicolons = open_error(b"imei;imei2\n1;2\n", DeviceType::Smartphone).await;
    let tabs = open_error(b"serialNumber\tnote\n1\t2\n", DeviceType::Tablet).await;

    assert!(
        semicolons
            .to_string()
            .ends_with("columns found: \"imei;imei2\" (the columns seem to be separated by semicolons; separate them by commas)"),
        "{semicolons}"
    );
    assert!(tabs.to_string().contains("separated by tabs"), "{tabs}");
}

#[tokio::test]
async fn a_header_without_data_rows_fails_validation() {
    for data in ["imei\n", "imei,imei2\r\n\r\n\n"] {
        let err = validate(Cursor::new(data), DeviceType::Smartphone, 10)
            .await
            .unwrap_err();

        assert!(matches!(err, FileError::NoDataRows), "{data:?}");
        assert_eq!(err.to_string(), "the file has a header row but no data rows");
    }
}

#[tokio::test]
async fn more_rows_than_the_maximum_fail_validation_naming_the_maximum() {
    let data = format!("imei\n{IMEI_A}\n{IMEI_B}\n{IMEI_A}\n");

    let at_max = validate(Cursor::new(data.clone()), DeviceType::Smartphone, 3).await;
    let over = validate(Cursor::new(data), DeviceType::Smartphone, 2)
        .await
        .unwrap_err();

    assert_eq!(at_max.unwrap(), 3);
    assert!(matches!(over, FileError::TooManyRows { max: 2 }));
    assert_eq!(
        over.to_string(),
        "the file has more than 2 data rows, the most one upload may have"
    );
    assert_eq!(
        FileError::TooManyRows { max: 1_000_000 }.to_string(),
        "the file has more than 1,000,000 data rows, the most one upload may have"
    );
}

#[tokio::test]
async fn validation_stops_reading_as_soon_as_the_maximum_is_exceeded() {
    let mut endless = Endless {
        header: b"imei\n",
        body: b"490154203237518\n",
        served: 0,
    };

    let err = validate(&mut endless, DeviceType::Smartphone, 1_000)
        .await
        .unwrap_err();

    assert!(matches!(err, FileError::TooManyRows { max: 1_000 }));
    assert!(
        endless.served < 1_002 * 16 + 2 * BUFFER_BYTES as u64,
        "{}",
        endless.served
    );
}

#[tokio::test]
async fn an_unclosed_quote_fails_the_file_at_the_line_it_opens() {
    let data = format!("imei,note\n{IMEI_A},ok\n{IMEI_B},\"open\n{IMEI_A},x\n");

    let err = validate(Cursor::new(data), DeviceType::Smartphone, 10)
        .await
        .unwrap_err();

    assert_eq!(
        err.to_string(),
        "the file is not valid CSV at line 3: a quoted cell starts there and is never closed"
    );
    let header = open_error(b"\"imei\n", DeviceType::Smartphone).await;
    assert!(
        matches!(header, FileError::Malformed { line: 1, .. }),
        "{header:?}"
    );
}

#[tokio::test]
async fn a_quote_left_open_stops_reading_after_the_row_limit() {
    let mut endless = Endless {
        header: b"imei,note\n490154203237518,ok\n490154203237518,\"",
        body: b"abc\n",
        served: 0,
    };

    let err = validate(&mut endless, DeviceType::Smartphone, 1_000_000)
        .await
        .unwrap_err();

    assert_eq!(
        err.to_string(),
        "the file is not valid CSV at line 3: a quoted cell starts there and is still open \
         after 65,536 bytes (is its closing quote missing?)"
    );
    assert!(endless.served < (MAX_ROW_BYTES + 2 * BUFFER_BYTES) as u64);
}

#[tokio::test]
async fn a_row_over_the_limit_is_refused() {
    let data = format!("imei,note\n{IMEI_A},ok\n{IMEI_A},{}\n", "x".repeat(MAX_ROW_BYTES));
    let at_limit = format!("imei,note\n{IMEI_A},{}\n", "x".repeat(MAX_ROW_BYTES - 16));

    let err = validate(Cursor::new(data), DeviceType::Smartphone, 10)
        .await
        .unwrap_err();
    let ok = validate(Cursor::new(at_limit), DeviceType::Smartphone, 10).await;

    assert_eq!(
        err.to_string(),
        "the file is not valid CSV at line 3: the row is longer than 65,536 bytes"
    );
    assert_eq!(ok.unwrap(), 1);
}

#[tokio::test]
async fn a_failing_stream_is_a_transient_io_error() {
    let mid_file = Trickle::failing(format!("imei\n{IMEI_A}\n{IMEI_B}\n"));
    let at_start = Trickle::failing("");

    let err = validate(mid_file, DeviceType::Smartphone, 10).await.unwrap_err();
    let open_err = CsvFile::open(at_start, DeviceType::Smartphone)
        .await
        .err()
        .unwrap();

    assert!(matches!(err, FileError::Io(_)), "{err:?}");
    assert!(err.is_transient());
    assert!(open_err.is_transient());
    assert_eq!(err.to_string(), "the file could not be read from storage");
    let bad_file = open_error(b"", DeviceType::Smartphone).await;
    assert!(!bad_file.is_transient());
    assert!(
        !FileError::Malformed {
            line: 1,
            reason: String::new()
        }
        .is_transient()
    );
}

#[tokio::test]
async fn reading_in_tiny_chunks_splitting_bom_crlf_and_utf8_gives_the_same_records() {
    let data = format!(
        "\u{feff}imei,imei2,note\r\n{IMEI_A},,caf\u{e9} \u{1F600}\r\n\"{IMEI_B}\",{IMEI_A},\"a,\r\nb \"\"c\"\"\"\r\n\r\n,,\u{20AC}\r\n"
    );
    let expected = records(data.as_bytes(), DeviceType::Smartphone).await.unwrap();
    assert_eq!(expected.len(), 3);
    assert_eq!(expected[0].1[2], "caf\u{e9} \u{1F600}");

    for chunk in 1..=7 {
        let mut file = CsvFile::open(Trickle::new(data.clone(), chunk), DeviceType::Smartphone)
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some((n, record)) = file.next_record().await.unwrap() {
            got.push((n, record.iter().map(str::to_owned).collect::<Vec<_>>()));
        }

        assert_eq!(file.headers(), ["imei", "imei2", "note"], "chunk {chunk}");
        assert_eq!(got, expected, "chunk {chunk}");
    }
}

#[tokio::test]
async fn invalid_utf8_split_across_reads_is_found_at_its_offset() {
    // A three-byte sequence whose third byte is not a continuation byte.
    let data = b"imei\n49015\xE2\x82A\n".to_vec();

    for chunk in 1..=4 {
        let err = read_rows(Trickle::new(data.clone(), chunk), DeviceType::Smartphone)
            .await
            .unwrap_err();

        assert!(
            matches!(err, FileError::NotUtf8 { line: 2, offset: 10 }),
            "chunk {chunk}: {err:?}"
        );
    }
}

#[tokio::test]
async fn reading_verbatim_keeps_a_bounded_window_of_the_file() {
    let mut data = b"imei,note\r\n".to_vec();
    for i in 0..100_000 {
        data.extend_from_slice(format!("{i},\"n, {i}\"\r\n").as_bytes());
    }
    let mut file = CsvFile::open_verbatim(Cursor::new(data), DeviceType::Smartphone)
        .await
        .unwrap();
    assert_eq!(file.verbatim(), b"imei,note");
    assert_eq!(file.header_line_break(), "\r\n");
    let mut record = StringRecord::new();
    let mut largest = 0;
    while let Some(n) = file.read_into(&mut record).await.unwrap() {
        assert_eq!(file.verbatim(), format!("{},\"n, {}\"", n - 1, n - 1).as_bytes());
        largest = largest.max(file.csv.get_ref().tape.as_ref().unwrap().bytes.len());
    }
    assert!(largest <= 3 * BUFFER_BYTES, "the window grew to {largest} bytes");
}

#[tokio::test]
async fn validate_counts_a_large_file() {
    let mut data = String::from("imei,imei2,note\r\n");
    for i in 0..200_000u32 {
        data.push_str(&format!("{i:015},,\"row {i}\"\r\n"));
    }
    let bytes = data.into_bytes();

    let count = validate(Cursor::new(bytes.clone()), DeviceType::Smartphone, 1_000_000)
        .await
        .unwrap();
    let over = validate(Cursor::new(bytes), DeviceType::Smartphone, 199_999).await;

    assert_eq!(count, 200_000);
    assert!(matches!(over, Err(FileError::TooManyRows { max: 199_999 })));
}

#[test]
fn thousands_are_separated_by_commas() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1_000), "1,000");
    assert_eq!(thousands(65_536), "65,536");
    assert_eq!(thousands(1_234_567), "1,234,567");
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

/// A file as a client would write it, and what reading it must give.
#[derive(Debug)]
struct Generated {
    device_type: DeviceType,
    header: Vec<String>,
    key: usize,
    key2: Option<usize>,
    rows: Vec<Vec<String>>,
}

fn any_cell() -> impl Strategy<Value = String> {
    "[ -~\r\n\t\u{e9}\u{20AC}\u{1F600}]{0,12}"
}

fn any_file() -> impl Strategy<Value = Generated> {
    (
        prop_oneof![Just(DeviceType::Smartphone), Just(DeviceType::Tablet)],
        0usize..3,
        any::<bool>(),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        prop_oneof![Just(""), Just(" "), Just("\t")],
        any::<bool>(),
    )
        .prop_flat_map(|(device_type, extras, with_imei2, key_at, alias, pad, upper)| {
            let (names, _) = column_names(device_type.into());
            let mut name = names[alias.index(names.len())].to_owned();
            if upper {
                name = name.to_uppercase();
            }
            let mut header: Vec<String> = (0..extras).map(|i| format!("note{i}")).collect();
            let key = key_at.index(header.len() + 1);
            header.insert(key, format!("{pad}{name}{pad}"));
            if with_imei2 {
                header.push("imei2".to_owned());
            }
            let width = header.len();
            let rows = prop::collection::vec(prop::collection::vec(any_cell(), width), 0..30);
            (Just((device_type, header, key, with_imei2)), rows)
        })
        .prop_map(|((device_type, header, key, with_imei2), rows)| Generated {
            device_type,
            key2: (with_imei2 && device_type == DeviceType::Smartphone).then_some(header.len() - 1),
            header,
            key,
            rows,
        })
}

fn write(file: &Generated, crlf: bool, bom: bool) -> Vec<u8> {
    let terminator = if crlf {
        csv::Terminator::CRLF
    } else {
        csv::Terminator::Any(b'\n')
    };
    let mut out = if bom { UTF8_BOM.to_vec() } else { Vec::new() };
    let mut writer = csv::WriterBuilder::new()
        .terminator(terminator)
        .from_writer(&mut out);
    writer.write_record(&file.header).unwrap();
    for row in &file.rows {
        writer.write_record(row).unwrap();
    }
    writer.flush().unwrap();
    drop(writer);
    out
}

/// Reads `bytes` whole, cutting it into chunks of `chunk_size` rows at the offsets the
/// dispatcher would record, then reads each chunk on its own from its byte range, as a
/// worker does: the rows and their numbers must be the same.
fn split_reads_match(
    bytes: &[u8],
    device_type: DeviceType,
    chunk_size: usize,
    trickle: usize,
) -> Result<(), TestCaseError> {
    let (whole, ranges, columns) = block_on(async {
        let mut csv = CsvFile::open(Trickle::new(bytes.to_vec(), trickle), device_type).await?;
        let (mut whole, mut ranges) = (Vec::new(), Vec::new());
        let mut start = csv.offset();
        let mut in_chunk = 0;
        while let Some(row) = csv.next_row().await? {
            whole.push(row);
            in_chunk += 1;
            if in_chunk == chunk_size {
                ranges.push((start, csv.offset(), whole.len() - in_chunk));
                start = csv.offset();
                in_chunk = 0;
            }
        }
        if in_chunk > 0 {
            ranges.push((start, csv.offset(), whole.len() - in_chunk));
        }
        Ok::<_, FileError>((whole, ranges, csv.key_columns()))
    })
    .map_err(|e| TestCaseError::fail(format!("whole read: {e}")))?;
    for (start, end, first) in ranges {
        let part = bytes[start as usize..end as usize].to_vec();
        let first_row = whole[first].row_number;
        let got = block_on(async {
            let mut csv = CsvFile::resume(
                Trickle::new(part, trickle),
                start,
                columns.0,
                columns.1,
                first_row,
            );
            let mut got = Vec::new();
            while let Some(row) = csv.next_row().await? {
                got.push(row);
            }
            Ok::<_, FileError>(got)
        })
        .map_err(|e| TestCaseError::fail(format!("range {start}..{end}: {e}")))?;
        let expected = &whole[first..(first + chunk_size).min(whole.len())];
        prop_assert_eq!(&got[..], expected, "range {}..{}", start, end);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn rows_written_by_the_csv_crate_read_back_with_their_keys_and_numbers(
        file in any_file(),
        crlf in any::<bool>(),
        bom in any::<bool>(),
        chunk in 0usize..12,
    ) {
        let bytes = write(&file, crlf, bom);

        let got = block_on(async {
            let reader: Pin<Box<dyn AsyncRead + Send>> = if chunk == 0 {
                Box::pin(Cursor::new(bytes))
            } else {
                Box::pin(Trickle::new(bytes, chunk))
            };
            let mut csv = CsvFile::open(reader, file.device_type).await?;
            let mut got = Vec::new();
            while let Some((n, record)) = csv.next_record().await? {
                let row = csv.row_of(n, &record);
                got.push((row, record.iter().map(str::to_owned).collect::<Vec<_>>()));
            }
            Ok::<_, FileError>((csv.headers().to_vec(), got))
        });

        let (headers, got) = got.unwrap();
        prop_assert_eq!(&headers, &file.header);
        prop_assert_eq!(got.len(), file.rows.len());
        for (i, ((row, record), written)) in got.iter().zip(&file.rows).enumerate() {
            let expected = CsvRow {
                row_number: i as i32 + 1,
                uid: written[file.key].trim().to_owned(),
                uid2: file.key2.map(|k| written[k].trim().to_owned()).filter(|s| !s.is_empty()),
                plan: None,
            };
            prop_assert_eq!(row, &expected);
            prop_assert_eq!(record, written);
        }
    }

    #[test]
    fn chunks_read_from_their_byte_ranges_give_the_rows_of_a_whole_read(
        file in any_file(),
        crlf in any::<bool>(),
        bom in any::<bool>(),
        blank_lines in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        chunk_size in 1usize..6,
        trickle in 1usize..12,
    ) {
        let mut bytes = write(&file, crlf, bom);
        // Empty lines (skipped, unnumbered) at line starts after the header, where a
        // chunk boundary may fall.
        let header_end = bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| i + 1);
        let starts: Vec<usize> = (header_end..=bytes.len())
            .filter(|&i| i == bytes.len() || bytes[i - 1] == b'\n')
            .collect();
        let mut at: Vec<usize> = blank_lines.iter().map(|ix| starts[ix.index(starts.len())]).collect();
        at.sort_unstable();
        for &i in at.iter().rev() {
            bytes.splice(i..i, if crlf { b"\r\n".to_vec() } else { b"\n".to_vec() });
        }
        split_reads_match(&bytes, file.device_type, chunk_size, trickle)?;
    }

    #[test]
    fn any_text_read_in_chunks_gives_the_rows_of_a_whole_read(
        soup in "[a ,\"\r\n]{0,80}",
        chunk_size in 1usize..4,
    ) {
        let data = format!("imei,x\n{soup}");
        // Only files that read at all: a quote left open fails the upload before any chunk.
        if block_on(records(data.as_bytes(), DeviceType::Smartphone)).is_ok() {
            split_reads_match(data.as_bytes(), DeviceType::Smartphone, chunk_size, 7)?;
        }
    }

    #[test]
    fn any_text_reads_as_the_csv_crate_reads_it_and_fails_exactly_when_a_quote_is_left_open(
        soup in "[a ,\"\r\n]{0,80}",
    ) {
        let data = format!("imei,x\n{soup}");
        // The csv crate's records, header skipped. Adding `"`, a line break and `b` closes
        // an open quoted cell and adds exactly the record ["b"]; in any other state the
        // quote lands inside a cell or opens a new one that swallows the rest.
        let theirs = |text: &str| -> Vec<Vec<String>> {
            csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(text.as_bytes())
                .records()
                .skip(1)
                .map(|r| r.unwrap().iter().map(str::to_owned).collect())
                .collect()
        };
        let mut closed = theirs(&data);
        closed.push(vec!["b".to_owned()]);
        let left_open = theirs(&format!("{data}\"\nb")) == closed;

        let ours = block_on(records(data.as_bytes(), DeviceType::Smartphone));

        match ours {
            Ok(ours) => {
                prop_assert!(!left_open);
                let ours: Vec<Vec<String>> = ours.into_iter().map(|(_, r)| r).collect();
                prop_assert_eq!(ours, theirs(&data));
            }
            Err(FileError::Malformed { .. }) => prop_assert!(left_open),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}
