//! Helpers every bench shares: a throwaway PostgreSQL database, peak memory, a browser-like upload.
#![allow(dead_code)] // each bench uses some of them

use serde_json::Value;

/// The process's peak resident memory so far (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

pub async fn fresh_pg_database(admin: &str) -> Option<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await.ok()?;
    let name = format!("flbench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .ok()?;
    Some(format!("{}/{name}", admin.rsplit_once('/')?.0))
}

pub async fn drop_pg_database(admin: &str, url: &str) {
    use sqlx::Connection;
    let name = url.rsplit('/').next().unwrap();
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

pub async fn upload(http: &reqwest::Client, file_upload: &Value, bytes: Vec<u8>) {
    let fields: Value = serde_json::from_str(file_upload["fields"].as_str().unwrap()).unwrap();
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields.as_object().unwrap() {
        form = form.text(k.clone(), v.as_str().unwrap().to_owned());
    }
    form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name("d.csv"));
    let resp = http
        .post(file_upload["url"].as_str().unwrap())
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
}

/// A server started on port 0 with `settings`, and a token for alice (demo, READ+UPDATE).
pub struct Started {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub base: String,
    pub token: String,
    pub state: fleetload::state::AppState,
}

pub async fn start(mut settings: fleetload::config::Settings) -> Started {
    use fleetload::auth::{Permission, mint_token};
    settings.listen = "127.0.0.1:0".parse().unwrap();
    let secret = fleetload::startup::jwt_secret(&settings).unwrap();
    let permissions = [Permission::Read, Permission::Update];
    let token = mint_token(&secret, "alice", "demo", &permissions, "fleetload", None, 3600).unwrap();
    let app = fleetload::startup::Application::build(settings).await.unwrap();
    let base = app.public_url().as_str().trim_end_matches('/').to_owned();
    let state = app.state().clone();
    tokio::spawn(app.run_until(std::future::pending()));
    Started { base, token, state }
}
