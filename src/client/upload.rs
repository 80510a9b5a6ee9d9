//! `fleetload upload FILE --action A`: prepare → POST the file → finalize, then follow the
//! upload to its end, print the summary and exit with its outcome.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Value, json};

use super::follow::{Display, follow};
use super::listing::plain;
use super::{Client, ClientArgs, ClientError};

#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// The CSV file (SPEC §4: a header line, then one device per row).
    pub file: PathBuf,
    /// The action to apply to each device (`assignActionId`), e.g. `register-prepaid`.
    #[arg(long)]
    pub action: String,
    /// The workflow the action assigns devices to (24 hex digits).
    #[arg(long)]
    pub workflow: Option<String>,
    /// The workspace the devices go to (default: `--tenant`).
    #[arg(long)]
    pub workspace: Option<String>,
    /// 1 (SMARTPHONE, IMEI) or 2 (TABLET, serial number).
    #[arg(long, default_value_t = 1)]
    pub device_type: i32,
    /// Save the error report (the failed rows as written, plus why) to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

const PREPARE: &str = "mutation($t: String!, $a: String!, $n: Int!, $d: Int!, $w: String, $ws: String) { \
    prepareBatchUpload(tenantId: $t, assignActionId: $a, rowCount: $n, deviceType: $d, workflowId: $w, targetWorkspaceId: $ws) \
    { uploadId fileUpload { url fields } } }";
const FINALIZE: &str = "mutation($t: String!, $id: String!, $w: String) { finalizeBatchUpload(tenantId: $t, uploadId: $id, workflowId: $w) }";
const REPORT: &str =
    "query($t: String!, $id: String!) { upload(tenantId: $t, uploadId: $id) { errorReport { url } } }";

/// Exit code 0 for COMPLETED, 2 for COMPLETED_WITH_ERRORS, 1 for anything else.
pub async fn upload(client: &Client, args: &UploadArgs) -> Result<ExitCode, ClientError> {
    let tenant = &args.client.tenant;
    let rows = count_rows(&args.file)?;
    let prepared = client
        .gql(
            PREPARE,
            json!({ "t": tenant, "a": args.action, "n": rows, "d": args.device_type,
                    "w": args.workflow, "ws": args.workspace }),
        )
        .await?;
    let payload = &prepared["prepareBatchUpload"];
    let upload_id = plain(&payload["uploadId"]);
    println!("upload {upload_id}: {rows} rows prepared");
    post_file(client, &payload["fileUpload"], &args.file).await?;
    let finalized = client
        .gql(
            FINALIZE,
            json!({ "t": tenant, "id": upload_id, "w": args.workflow }),
        )
        .await?;
    println!(
        "upload {upload_id}: file sent, {}",
        plain(&finalized["finalizeBatchUpload"])
    );

    let mut display = if std::io::stdout().is_terminal() {
        Display::bar(rows)
    } else {
        Display::lines()
    };
    let last = follow(client, tenant, &upload_id, &mut display).await?;
    let status = plain(&last["status"]);
    println!(
        "upload {upload_id}: {status}: {} of {} rows processed, {} succeeded, {} failed",
        plain(&last["processedRows"]),
        plain(&last["totalRows"]),
        plain(&last["succeeded"]),
        plain(&last["failed"]),
    );
    for error in last["recentErrors"].as_array().into_iter().flatten() {
        println!(
            "  row {}: {} {}: {}",
            plain(&error["rowNumber"]),
            plain(&error["deviceUid"]),
            plain(&error["errorCode"]),
            plain(&error["message"]),
        );
    }
    if let Some(path) = &args.report {
        save_report(client, tenant, &upload_id, path).await?;
    }
    Ok(match status.as_str() {
        "COMPLETED" => ExitCode::SUCCESS,
        "COMPLETED_WITH_ERRORS" => ExitCode::from(2),
        _ => ExitCode::from(1),
    })
}

/// Data rows of the file, as the server will count them (records after the header).
fn count_rows(path: &Path) -> Result<u64, ClientError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ClientError::new("BAD_USER_INPUT", format!("{}: {e}", path.display())))?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));
    let mut record = csv::ByteRecord::new();
    let mut rows = 0u64;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => rows += 1,
            Ok(false) => return Ok(rows),
            Err(e) => {
                return Err(ClientError::new(
                    "BAD_USER_INPUT",
                    format!("{} is not a CSV file: {e}", path.display()),
                ));
            }
        }
    }
}

/// POSTs the policy's fields and then the file, streamed, as a browser form does.
async fn post_file(client: &Client, file_upload: &Value, path: &Path) -> Result<(), ClientError> {
    let url = plain(&file_upload["url"]);
    let fields: Value = serde_json::from_str(file_upload["fields"].as_str().unwrap_or("{}"))
        .map_err(|e| ClientError::new("BAD_RESPONSE", format!("upload fields: {e}")))?;
    let mut form = reqwest::multipart::Form::new();
    for (name, value) in fields.as_object().into_iter().flatten() {
        form = form.text(name.clone(), plain(value));
    }
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ClientError::new("BAD_USER_INPUT", format!("{}: {e}", path.display())))?;
    let length = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let name = path
        .file_name()
        .map_or_else(|| "devices.csv".to_owned(), |n| n.to_string_lossy().into_owned());
    let part = reqwest::multipart::Part::stream_with_length(body, length)
        .file_name(name)
        .mime_str("text/csv")
        .expect("a valid mime type");
    let response = client
        .http
        .post(&url)
        .multipart(form.part("file", part))
        .send()
        .await
        .map_err(|e| ClientError::new("UPLOAD_FAILED", format!("POST {url}: {e}")))?;
    if response.status().is_success() {
        return Ok(());
    }
    // The store answers like S3: <Error><Code>EntityTooLarge</Code><Message>…</Message></Error>.
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].to_owned())
    };
    Err(ClientError::new(
        "UPLOAD_FAILED",
        format!(
            "the store refused the file (HTTP {status}, {}: {})",
            tag("Code").unwrap_or_else(|| "no code".into()),
            tag("Message").unwrap_or_default()
        ),
    ))
}

async fn save_report(client: &Client, tenant: &str, upload_id: &str, path: &Path) -> Result<(), ClientError> {
    let data = client
        .gql(REPORT, json!({ "t": tenant, "id": upload_id }))
        .await?;
    let Some(url) = data["upload"]["errorReport"]["url"].as_str() else {
        println!("no error report: no row failed");
        return Ok(());
    };
    // A relative link is the embedded store's; S3's are absolute.
    let url = client
        .base
        .join(url)
        .map_err(|e| ClientError::new("BAD_RESPONSE", e.to_string()))?;
    let response = client
        .http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| ClientError::new("REPORT_DOWNLOAD_FAILED", e.to_string()))?;
    if !response.status().is_success() {
        return Err(ClientError::new(
            "REPORT_DOWNLOAD_FAILED",
            format!("GET {url}: HTTP {}", response.status()),
        ));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ClientError::new("REPORT_DOWNLOAD_FAILED", e.to_string()))?;
    std::fs::write(path, &bytes)
        .map_err(|e| ClientError::new("BAD_USER_INPUT", format!("{}: {e}", path.display())))?;
    println!("error report: {} ({} bytes)", path.display(), bytes.len());
    Ok(())
}
