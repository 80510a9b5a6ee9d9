//! `fleetload upload`, `status` and `uploads`: the real binary against a real server, with
//! each exit code, the error report, and the progress bar under a pseudo-terminal (tmux).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::helpers::{Backend, DEMO_WORKFLOW, TestApp, csv, imeis, spawn_app_with};

async fn app() -> TestApp {
    spawn_app_with(Backend::Sqlite, |s| s.workers = Some(2)).await
}

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fleetload")
}

/// The client's arguments for `app`: its URL, and its data dir for the dev token.
fn base_args(app: &TestApp) -> Vec<String> {
    base_args_for(app, &app.url)
}

/// The same against `server`, which may be another address of the app.
pub(crate) fn base_args_for(app: &TestApp, server: &str) -> Vec<String> {
    vec![
        "--data-dir".into(),
        app.data_dir.path().display().to_string(),
        "--server".into(),
        server.to_owned(),
    ]
}

/// The binary with `args`, the client's arguments after the subcommand (`--server` is one
/// of its own flags), and no token or server from the environment.
pub(crate) fn command(base: Vec<String>, args: &[&str]) -> tokio::process::Command {
    let mut all = vec![args[0].to_owned()];
    all.extend(base);
    all.extend(args[1..].iter().map(|s| s.to_string()));
    let mut command = tokio::process::Command::new(bin());
    command
        .args(&all)
        .env_remove("FLEETLOAD_TOKEN")
        .env_remove("FLEETLOAD_SERVER");
    command
}

pub(crate) async fn run(app: &TestApp, args: &[&str]) -> Output {
    command(base_args(app), args)
        .output()
        .await
        .expect("the fleetload binary runs")
}

pub(crate) fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub(crate) fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `n` valid IMEIs with `bad` rows (1-based numbers) replaced by invalid keys.
pub(crate) fn devices(seed: u64, n: usize, bad: &[usize]) -> Vec<u8> {
    let mut keys = imeis(seed, n);
    for &row in bad {
        keys[row - 1] = format!("bad{row}");
    }
    csv("imei", &keys)
}

pub(crate) fn upload_id(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .nth(1)
        .map(|s| s.trim_end_matches(':').to_owned())
        .expect("upload <id>: …")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_exit_codes_report_status_and_uploads() {
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();

    // COMPLETED: exit 0, plain lines (stdout is a pipe), a summary.
    let good = write(dir.path(), "good.csv", &devices(11, 300, &[]));
    let out = run(
        &app,
        &[
            "upload",
            good.to_str().unwrap(),
            "--action",
            "register-prepaid",
            "--workflow",
            DEMO_WORKFLOW,
            "--workspace",
            "demo-east",
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("300 rows prepared"), "{stdout}");
    assert!(
        stdout.contains("COMPLETED: 300 of 300 rows processed, 300 succeeded, 0 failed"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\u{1b}'),
        "no terminal escapes when stdout is not a terminal: {stdout}"
    );
    let first = upload_id(&stdout);

    // COMPLETED_WITH_ERRORS: exit 2, the failed rows listed, and the error report saved.
    let mixed = write(dir.path(), "mixed.csv", &devices(12, 500, &[3, 250, 500]));
    let report = dir.path().join("errors.csv");
    let out = run(
        &app,
        &[
            "upload",
            mixed.to_str().unwrap(),
            "--action",
            "register-prepaid",
            "--workflow",
            DEMO_WORKFLOW,
            "--report",
            report.to_str().unwrap(),
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stdout.contains("COMPLETED_WITH_ERRORS: 500 of 500 rows processed, 497 succeeded, 3 failed"),
        "{stdout}"
    );
    assert!(stdout.contains("row 250: bad250 INVALID_DEVICE_UID"), "{stdout}");
    let lines: Vec<String> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0], "imei,rowNumber,errorCode,message");
    assert!(lines[1].starts_with("bad3,3,INVALID_DEVICE_UID,"), "{lines:?}");

    // FAILED (a file without the key column): exit 1.
    let headerless = write(dir.path(), "wrong.csv", b"serialNumber\nR52N80ABCDE\n");
    let out = run(
        &app,
        &[
            "upload",
            headerless.to_str().unwrap(),
            "--action",
            "register-prepaid",
            "--workflow",
            DEMO_WORKFLOW,
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(": FAILED:"), "{stdout}");

    // Errors: exit 1 with the code on stderr.
    let out = run(
        &app,
        &["upload", good.to_str().unwrap(), "--action", "no-such-action"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("error: ACTION_NOT_FOUND:"),
        "{}",
        text(&out).1
    );
    let out = run(
        &app,
        &[
            "upload",
            good.to_str().unwrap(),
            "--action",
            "register-prepaid",
            "--token",
            "forged.token.here",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("error: UNAUTHENTICATED:"),
        "{}",
        text(&out).1
    );
    let out = run(
        &app,
        &[
            "upload",
            "/nonexistent/devices.csv",
            "--action",
            "register-prepaid",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("error: BAD_USER_INPUT:"),
        "{}",
        text(&out).1
    );
    let out = run(
        &app,
        &[
            "upload",
            good.to_str().unwrap(),
            "--action",
            "register-prepaid",
            "--tenant",
            "acme",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("error: FORBIDDEN:"),
        "alice in acme: {}",
        text(&out).1
    );
    let out = tokio::process::Command::new(bin())
        .args([
            "uploads",
            "--data-dir",
            app.data_dir.path().to_str().unwrap(),
            "--server",
            "http://127.0.0.1:9",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("error: SERVER_UNREACHABLE:"),
        "{}",
        text(&out).1
    );

    // A usage error is an error too (clap's own code would be 2, which means COMPLETED_WITH_ERRORS).
    let out = run(&app, &["upload", good.to_str().unwrap(), "--no-such-flag"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);
    for first in ["0", "501", "-1"] {
        let out = run(&app, &["uploads", "--first", first]).await;
        assert_eq!(out.status.code(), Some(1), "--first {first}");
    }

    // status: one upload; an unknown id is exit 1.
    let out = run(&app, &["status", &first]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("status") && l.ends_with("COMPLETED")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("succeeded") && l.ends_with(" 300")),
        "{stdout}"
    );
    let out = run(&app, &["status", "01a00000-0000-7000-8000-000000000000"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("error: UPLOAD_NOT_FOUND:"),
        "{}",
        text(&out).1
    );

    // uploads: the newest first; bob (acme) sees none of alice's.
    let out = run(&app, &["uploads"]).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout.contains(&first), "{stdout}");
    let row = stdout.lines().find(|l| l.starts_with(&first)).unwrap();
    assert!(row.contains("demo-east"), "--workspace: {row}");
    assert!(
        stdout.contains("COMPLETED_WITH_ERRORS") && stdout.contains("FAILED"),
        "{stdout}"
    );
    assert!(stdout.contains("(3 in all)"), "{stdout}");
    let out = run(&app, &["uploads", "--user", "bob", "--tenant", "acme"]).await;
    assert!(text(&out).0.contains("(0 in all)"), "{}", text(&out).0);
}

/// tmux, or `None` (with a loud message) outside CI; under CI it must be there.
pub(crate) fn tmux() -> Option<&'static str> {
    let found = std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("tmux");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "tmux is required under CI (.ci/run installs it)"
    );
    eprintln!("\n*** SKIPPED: tmux is not installed (apt-get install -y tmux) ***\n");
    None
}

/// Runs the binary with `args` (as shell words) in a detached tmux session of 160 × 20, waits
/// for it to exit, and answers its exit code (`None` after two minutes) and the final pane.
pub(crate) async fn in_terminal(tmux: &str, args: &str, dir: &Path) -> (Option<String>, String) {
    static SESSIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let session = format!("fleetload-test-{}-{n}", std::process::id());
    let done = dir.join(format!("exit-code-{n}"));
    // Written aside and renamed: the test polls for the file and must never read it half written.
    let command = format!(
        "{} {args}; echo $? > {done}.part && mv {done}.part {done}; sleep 600",
        bin(),
        done = done.display()
    );
    let status = tokio::process::Command::new(tmux)
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "160",
            "-y",
            "20",
            &command,
        ])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "tmux new-session");
    let mut code = None;
    for _ in 0..1200 {
        if let Ok(text) = std::fs::read_to_string(&done) {
            code = Some(text.trim().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pane = tokio::process::Command::new(tmux)
        .args(["capture-pane", "-p", "-t", &session])
        .output()
        .await
        .unwrap();
    let _ = tokio::process::Command::new(tmux)
        .args(["kill-session", "-t", &session])
        .status()
        .await;
    (code, String::from_utf8_lossy(&pane.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_under_a_terminal_draws_the_progress_bar() {
    let Some(tmux) = tmux() else { return };
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "big.csv", &devices(13, 20_000, &[17]));
    let (code, pane) = in_terminal(
        tmux,
        &format!(
            "upload {} {} --action register-prepaid --workflow {DEMO_WORKFLOW}",
            base_args(&app).join(" "),
            file.display(),
        ),
        dir.path(),
    )
    .await;
    assert_eq!(
        code.as_deref(),
        Some("2"),
        "exit code under a terminal; pane:\n{pane}"
    );
    let bar = pane
        .lines()
        .find(|l| l.contains("20000/20000 rows 100%"))
        .unwrap_or_else(|| panic!("no finished bar in the pane:\n{pane}"));
    assert!(bar.contains("[================================]"), "{bar}");
    assert!(
        bar.contains("COMPLETED_WITH_ERRORS")
            && bar.contains("19999 ok · 1 failed")
            && bar.contains("rows/s"),
        "{bar}"
    );
    assert!(
        pane.contains("COMPLETED_WITH_ERRORS: 20000 of 20000 rows processed"),
        "{pane}"
    );
}

/// `fleetload migrate [--demo-data]` with only `DATABASE_URL` and a data dir set.
async fn migrate(database_url: &str, data_dir: &Path, demo: bool) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("migrate");
    if demo {
        cmd.arg("--demo-data");
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("FLEETLOAD_") || key == "DATABASE_URL" {
            cmd.env_remove(key);
        }
    }
    let output = cmd
        .env("DATABASE_URL", database_url)
        .env("FLEETLOAD_DATA_DIR", data_dir)
        .output()
        .await
        .expect("the fleetload binary runs");
    let (stdout, stderr) = text(&output);
    (output.status.success(), stdout, stderr)
}

/// `fleetload migrate --demo-data` on PostgreSQL (the README tour's step there) says what it
/// seeded, and a second run says it added nothing; without the flag it seeds nothing.
#[tokio::test]
async fn migrate_prints_what_it_seeded() {
    let pg = crate::helpers::PgDatabase::create().await;
    let data_dir = tempfile::tempdir().unwrap();

    let (ok, stdout, stderr) = migrate(&pg.url, data_dir.path(), false).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("no demo data seeded"), "{stdout}");

    let (ok, stdout, stderr) = migrate(&pg.url, data_dir.path(), true).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("demo data: 3 tenant(s), 8 action(s), 3 workflow(s) inserted"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = migrate(&pg.url, data_dir.path(), true).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("demo data: 0 tenant(s), 0 action(s), 0 workflow(s) inserted"),
        "{stdout}"
    );
}
