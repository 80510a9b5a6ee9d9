//! The console and GraphiQL in a real browser: tests/browser/console.spec.mjs drives Debian's
//! Chromium (playwright-core, every other origin blocked) against this server;
//! tests/browser/multipart.spec.mjs uploads a file in parts from a page on another origin. Outside CI it
//! is skipped, loudly, when Chromium, Node or the npm packages are missing; under CI
//! (`CI=true`, where .ci/run installs them) it fails instead.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::helpers::{Backend, csv, imeis, spawn_app_with};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// What is missing to run the browser, if anything.
fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} (apt-get install -y chromium)"));
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node (apt-get install -y nodejs npm)".into());
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some("playwright-core (cd tests/browser && npm ci)".into());
    }
    None
}

/// Whether the browser can run; under CI it must.
fn browser_ready() -> bool {
    let Some(what) = missing() else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "the browser test needs {what} under CI"
    );
    eprintln!("\n*** SKIPPED the browser test: {what} is missing ***\n");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_and_graphiql_in_chromium() {
    if !browser_ready() {
        return;
    }
    let app = spawn_app_with(Backend::Sqlite, |s| s.workers = Some(2)).await;
    let files = tempfile::tempdir().unwrap();

    // 20,000 rows, every 541st from row 7 on invalid.
    let mut keys = imeis(21, 20_000);
    let bad: Vec<usize> = (7..=20_000).step_by(541).collect();
    for &row in &bad {
        keys[row - 1] = "12345".into();
    }
    std::fs::write(files.path().join("upload.csv"), csv("imei", &keys)).unwrap();
    let expected =
        json!({ "rows": 20_000, "bad": bad.len(), "good": 20_000 - bad.len(), "firstBadRow": bad[0] });
    std::fs::write(files.path().join("upload.json"), expected.to_string()).unwrap();
    // Large enough to be cancelled while it runs (and the README's screenshot of a running
    // upload), with a bad row every 997 so its latest errors show.
    let mut keys = imeis(22, 300_000);
    for row in (500..=300_000).step_by(997) {
        keys[row - 1] = format!("bad-{row}");
    }
    std::fs::write(files.path().join("cancel.csv"), csv("imei", &keys)).unwrap();

    let shots = std::env::var_os("FLEETLOAD_SCREENSHOTS").map_or_else(
        || std::env::temp_dir().join("fleetload-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&shots).unwrap();
    let status = tokio::process::Command::new("node")
        .current_dir(browser_dir())
        .arg("console.spec.mjs")
        .arg(&app.url)
        .arg(files.path())
        .arg(&shots)
        .status()
        .await
        .expect("node runs");
    assert!(status.success(), "the browser test failed (its output is above)");
    eprintln!("screenshots in {}", shots.display());
}

/// A frontend on another origin uploads a file in parts (tests/browser/multipart.spec.mjs):
/// the part PUTs and their `ETag`s must pass CORS in a real browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_on_another_origin_uploads_in_parts_in_chromium() {
    if !browser_ready() {
        return;
    }
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.workers = Some(2);
        s.multipart_min_part_bytes = 1024;
    })
    .await;
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("parts.csv");
    std::fs::write(&path, csv("imei", &imeis(23, 300))).unwrap();
    let status = tokio::process::Command::new("node")
        .current_dir(browser_dir())
        .arg("multipart.spec.mjs")
        .arg(&app.url)
        .arg(app.alice())
        .arg(&path)
        .status()
        .await
        .expect("node runs");
    assert!(status.success(), "the browser test failed (its output is above)");
}
