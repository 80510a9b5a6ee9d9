//! `fleetload upload FILE --action A`: prepare → send the file → finalize, then follow the
//! upload to its end, print the summary and exit with its outcome. The file goes in one POST,
//! or above `--multipart-threshold` in parts (src/client/multipart.rs), which `--resume`
//! continues after an interruption.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use bytesize::ByteSize;
use serde_json::{Value, json};

use super::follow::{Display, follow};
use super::listing::plain;
use super::multipart::Transfer;
use super::resume_command::resume_command;
use super::transfer_progress::TransferProgress;
use super::{Client, ClientArgs, ClientError, report_error};

#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// The CSV file (SPEC §4: a header line, then one device per row).
    pub file: PathBuf,
    /// The action to apply to each device (`assignActionId`), e.g. `register-prepaid`.
    #[arg(long, required_unless_present = "resume")]
    pub action: Option<String>,
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
    /// Files larger than this go as a multipart upload, in parts that can be resumed
    /// (bytes, or e.g. `64MiB`, `500KB`); smaller ones in one POST.
    #[arg(long, default_value = "64MiB")]
    pub multipart_threshold: ByteSize,
    /// The size of each part of a multipart upload (default: the server's, 8 MiB); a resumed
    /// upload keeps the part size it was prepared with.
    #[arg(long)]
    pub part_size: Option<ByteSize>,
    /// Parts sent at once (1 to 16).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub parallel: u16,
    /// Continue the interrupted multipart upload UPLOAD_ID with the same FILE: only the parts
    /// the store does not hold are sent, after checking the ones it holds are this file's.
    #[arg(long, value_name = "UPLOAD_ID")]
    pub resume: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

const PREPARE: &str = "mutation($t: String!, $a: String!, $n: Int!, $d: Int!, $w: String, $ws: String) { \
    prepareBatchUpload(tenantId: $t, assignActionId: $a, rowCount: $n, deviceType: $d, workflowId: $w, targetWorkspaceId: $ws) \
    { uploadId fileUpload { url fields } } }";
const FINALIZE: &str = "mutation($t: String!, $id: String!, $w: String) { finalizeBatchUpload(tenantId: $t, uploadId: $id, workflowId: $w) }";
const REPORT: &str = "query($t: String!, $id: String!) { upload(tenantId: $t, uploadId: $id) { errorReport { url } errorReportStatus } }";

/// The server's code for a multipart upload whose parts are one object already.
const ALREADY_ASSEMBLED: &str = "MULTIPART_ALREADY_COMPLETED";

/// How long `--report` waits for the background builder to store a pending report.
const REPORT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// Exit code 0 for COMPLETED, 2 for COMPLETED_WITH_ERRORS, 1 for anything else.
pub async fn upload(client: &Client, args: &UploadArgs) -> Result<ExitCode, ClientError> {
    let size = std::fs::metadata(&args.file)
        .map_err(|e| ClientError::new("BAD_USER_INPUT", format!("{}: {e}", args.file.display())))?
        .len();
    if args.resume.is_none() && size <= args.multipart_threshold.as_u64() {
        return single_post(client, args).await;
    }
    multipart(client, args, size).await
}

/// The file in one POST, as a browser's form sends it.
async fn single_post(client: &Client, args: &UploadArgs) -> Result<ExitCode, ClientError> {
    let rows = count_rows(&args.file)?;
    let prepared = client.gql(PREPARE, prepare_vars(args, rows)).await?;
    let payload = &prepared["prepareBatchUpload"];
    let upload_id = plain(&payload["uploadId"]);
    println!("upload {upload_id}: {rows} rows prepared");
    post_file(client, &payload["fileUpload"], &args.file).await?;
    finalize(client, args, &upload_id).await?;
    follow_to_end(client, args, &upload_id, rows).await
}

/// The file in parts, `--parallel` at a time. Until the upload is finalized, an interruption
/// (ctrl-c, or a part that keeps failing) prints the `--resume` command and exits with 1.
async fn multipart(client: &Client, args: &UploadArgs, size: u64) -> Result<ExitCode, ClientError> {
    let tenant = &args.client.tenant;
    let (transfer, rows) = match &args.resume {
        Some(upload_id) => {
            let transfer = match Transfer::resume(client, tenant, upload_id, &args.file, size).await {
                // An earlier run assembled the file and stopped before finalizing.
                Err(err) if err.code == ALREADY_ASSEMBLED => {
                    println!("upload {upload_id}: its parts are assembled already");
                    finalize(client, args, upload_id).await?;
                    return follow_to_end(client, args, upload_id, 0).await;
                }
                other => other?,
            };
            println!(
                "upload {upload_id}: resuming, {}, {} to send",
                transfer.stored_summary(),
                transfer.parts_to_send()
            );
            (transfer, 0)
        }
        None => {
            let rows = count_rows(&args.file)?;
            let part_size = args.part_size.map(|s| s.as_u64());
            let transfer =
                Transfer::prepare(client, prepare_vars(args, rows), &args.file, size, part_size).await?;
            println!(
                "upload {}: {rows} rows prepared, {size} bytes in {} part(s)",
                transfer.upload_id,
                transfer.total_parts()
            );
            (transfer, rows)
        }
    };
    let upload_id = transfer.upload_id.clone();
    let progress = TransferProgress::new(std::io::stdout().is_terminal(), size, transfer.stored_bytes());
    let finalized = AtomicBool::new(false);
    let continue_hint = |transfer: &Transfer| {
        let argv: Vec<String> = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        eprintln!(
            "upload {upload_id}: {}; to continue, run:\n  {}",
            transfer.stored_summary(),
            resume_command(&argv, &upload_id)
        );
    };
    let work = async {
        transfer
            .send(client, usize::from(args.parallel), &progress)
            .await?;
        progress.finish();
        transfer.complete(client).await?;
        finalize(client, args, &upload_id).await?;
        finalized.store(true, Ordering::SeqCst);
        follow_to_end(client, args, &upload_id, rows).await
    };
    // Once this handler is installed ctrl-c no longer kills the process: it is watched until
    // the end, while the upload is followed too.
    tokio::select! {
        result = work => match result {
            Err(err) if !finalized.load(Ordering::SeqCst) => {
                progress.abandon();
                let code = report_error(&err);
                continue_hint(&transfer);
                Ok(code)
            }
            other => other,
        },
        _ = tokio::signal::ctrl_c() => {
            progress.abandon();
            if finalized.load(Ordering::SeqCst) {
                eprintln!(
                    "interrupted: upload {upload_id} goes on on the server; `fleetload status {upload_id}` shows it"
                );
            } else {
                eprint!("interrupted: ");
                continue_hint(&transfer);
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn prepare_vars(args: &UploadArgs, rows: u64) -> Value {
    json!({ "t": args.client.tenant, "a": args.action, "n": rows, "d": args.device_type,
            "w": args.workflow, "ws": args.workspace })
}

/// Hands the sent file to processing.
async fn finalize(client: &Client, args: &UploadArgs, upload_id: &str) -> Result<(), ClientError> {
    let finalized = client
        .gql(
            FINALIZE,
            json!({ "t": args.client.tenant, "id": upload_id, "w": args.workflow }),
        )
        .await?;
    println!(
        "upload {upload_id}: file sent, {}",
        plain(&finalized["finalizeBatchUpload"])
    );
    Ok(())
}

/// Follows the processing to its end and prints the summary (and the report if asked).
async fn follow_to_end(
    client: &Client,
    args: &UploadArgs,
    upload_id: &str,
    rows: u64,
) -> Result<ExitCode, ClientError> {
    let tenant = &args.client.tenant;
    let mut display = if std::io::stdout().is_terminal() {
        Display::bar(rows)
    } else {
        Display::lines()
    };
    let last = follow(client, tenant, upload_id, &mut display).await?;
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
        save_report(client, tenant, upload_id, path).await?;
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
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    Err(ClientError::new("UPLOAD_FAILED", store_refusal(status, &text)))
}

/// What a store's refusal says; it answers like S3:
/// `<Error><Code>EntityTooLarge</Code><Message>…</Message></Error>`.
pub(super) fn store_refusal(status: reqwest::StatusCode, text: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].to_owned())
    };
    format!(
        "the store refused it (HTTP {status}, {}: {})",
        tag("Code").unwrap_or_else(|| "no code".into()),
        tag("Message").unwrap_or_default()
    )
}

async fn save_report(client: &Client, tenant: &str, upload_id: &str, path: &Path) -> Result<(), ClientError> {
    // Reports are built in the background once an upload ends: wait while it is pending.
    let waited = std::time::Instant::now();
    let data = loop {
        let data = client
            .gql(REPORT, json!({ "t": tenant, "id": upload_id }))
            .await?;
        let pending = data["upload"]["errorReportStatus"] == "PENDING";
        if !pending || waited.elapsed() > REPORT_PATIENCE {
            break data;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<super::UploadArgs, clap::Error> {
        let mut all = vec!["fleetload", "upload", "devices.csv"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)?.command {
            Some(Command::Upload(args)) => Ok(*args),
            other => panic!("not an upload: {other:?}"),
        }
    }

    #[test]
    fn sizes_are_bytes_or_human_units() {
        let args = parse(&["--action", "a"]).unwrap();
        assert_eq!(args.multipart_threshold.as_u64(), 64 * 1024 * 1024);
        assert_eq!(args.parallel, 4);
        let args = parse(&[
            "--action",
            "a",
            "--multipart-threshold",
            "16KiB",
            "--part-size",
            "5 MiB",
        ])
        .unwrap();
        assert_eq!(args.multipart_threshold.as_u64(), 16 * 1024);
        assert_eq!(args.part_size.map(|s| s.as_u64()), Some(5 * 1024 * 1024));
        let args = parse(&["--action", "a", "--multipart-threshold", "1000"]).unwrap();
        assert_eq!(args.multipart_threshold.as_u64(), 1000);
        assert!(parse(&["--action", "a", "--multipart-threshold", "lots"]).is_err());
    }

    #[test]
    fn parallel_is_bounded() {
        assert_eq!(
            parse(&["--action", "a", "--parallel", "16"]).unwrap().parallel,
            16
        );
        assert!(parse(&["--action", "a", "--parallel", "0"]).is_err());
        assert!(parse(&["--action", "a", "--parallel", "17"]).is_err());
    }

    #[test]
    fn resume_needs_no_action_and_takes_the_first_run_s_arguments() {
        let args = parse(&["--resume", "0190"]).unwrap();
        assert_eq!((args.resume.as_deref(), args.action), (Some("0190"), None));
        assert!(parse(&[]).is_err(), "--action or --resume");
        // The printed command repeats the first run's arguments.
        let args = parse(&["--action", "a", "--part-size", "8MiB", "--resume", "0190"]).unwrap();
        assert_eq!(args.resume.as_deref(), Some("0190"));
    }
}
