//! Test harness: spawns the application on a fresh database (SQLite file or a new
//! PostgreSQL database) and talks to it like a client.

#![allow(dead_code)]

use std::sync::Once;

use std::sync::Arc;

use fleetload::auth::{Permission, mint_token};
use fleetload::config::Settings;
use fleetload::pipeline::{Pipeline, Step};
use fleetload::startup::{Application, jwt_secret};
use fleetload::state::AppState;
use secrecy::SecretString;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// Which database an app runs on; the same test bodies run on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each `async fn name(app: TestApp)` body once on SQLite and once on PostgreSQL, as
/// `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($(#[$meta:meta])* async fn $name:ident($app:ident: TestApp) $body:block $($rest:tt)*) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn body($app: $crate::helpers::TestApp) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                body($crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                body($crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await).await
            }
        }
        $crate::on_both_backends! { $($rest)* }
    };
    () => {};
}

static TRACING: Once = Once::new();

/// Logs only when `TEST_LOG` is set, so passing tests stay quiet.
pub fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            // Kept for the whole test process.
            std::mem::forget(fleetload::telemetry::init(false));
        }
    });
}

pub const DEMO_WORKFLOW: &str = "68a5ae7a4cb9e87b88b7d344";
pub const INVENTORY_WORKFLOW: &str = "68a5ae7a4cb9e87b88b7d345";
pub const ACME_WORKFLOW: &str = "68a5ae7a4cb9e87b88b7d346";

/// A running server and a client for it. Dropping it stops the server and removes its
/// database and data dir.
pub struct TestApp {
    pub url: String,
    /// Where the server listens (`url` is its public URL, which a test may put elsewhere).
    pub address: std::net::SocketAddr,
    pub http: reqwest::Client,
    pub state: AppState,
    pub pipeline: Arc<Pipeline>,
    /// The pipeline's own pool (the API's is `state.db`).
    pub worker_db: sea_orm::DatabaseConnection,
    pub settings: Settings,
    pub data_dir: TempDir,
    pub backend: Backend,
    secret: SecretString,
    stop: Option<oneshot::Sender<()>>,
    _pg: Option<PgDatabase>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Spawns an app after `configure` adjusted its settings.
pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_full(backend, configure, None).await
}

pub async fn spawn_app_full(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
    aws: Option<aws_config::SdkConfig>,
) -> TestApp {
    init_tracing();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::embedded(data_dir.path());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.public_url = None;
    settings.database_url = None;
    settings.s3_bucket = None;
    settings.jwks_url = None;
    settings.jwt_secret = None;
    settings.jwt_issuer = None;
    settings.jwt_audience = "fleetload".into();
    settings.db_max_connections = 8;
    // Tests drain the pipeline step by step; a test that wants background workers sets them.
    settings.workers = Some(0);
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let pg = PgDatabase::create().await;
            settings.database_url = Some(pg.url.clone().into());
            // A database other than the embedded default is seeded only when asked.
            settings.demo_data = true;
            Some(pg)
        }
    };
    configure(&mut settings);
    start(backend, settings, data_dir, pg, aws).await
}

async fn start(
    backend: Backend,
    settings: Settings,
    data_dir: TempDir,
    pg: Option<PgDatabase>,
    aws: Option<aws_config::SdkConfig>,
) -> TestApp {
    let secret = jwt_secret(&settings).expect("jwt secret");
    let app = Application::build_with_aws(settings.clone(), aws)
        .await
        .expect("app builds");
    let url = app.public_url().as_str().trim_end_matches('/').to_owned();
    let address = app.address();
    let state = app.state().clone();
    let pipeline = app.pipeline().clone();
    let worker_db = app.worker_db().clone();
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        url,
        address,
        http: reqwest::Client::new(),
        state,
        pipeline,
        worker_db,
        settings,
        data_dir,
        backend,
        secret,
        stop: Some(stop),
        _pg: pg,
    }
}

/// What outlives a server process: its settings, data dir and database.
pub struct Persisted {
    backend: Backend,
    /// The next process may be configured differently (another chunk size, workers on).
    pub settings: Settings,
    data_dir: TempDir,
    pg: Option<PgDatabase>,
}

/// Starts a new server process on what an earlier one left behind.
pub async fn respawn(parts: Persisted) -> TestApp {
    let Persisted {
        backend,
        settings,
        data_dir,
        pg,
    } = parts;
    start(backend, settings, data_dir, pg, None).await
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestApp {
    /// Stops the server (as if its process died) and keeps its database and data dir.
    pub fn into_parts(mut self) -> Persisted {
        let data_dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().expect("temp dir"));
        Persisted {
            backend: self.backend,
            settings: self.settings.clone(),
            data_dir,
            pg: self._pg.take(),
        }
    }

    /// A token for `user` with root tenant `tenant`, signed with this app's secret.
    pub fn token_with(&self, user: &str, tenant: &str, permissions: &[Permission]) -> String {
        mint_token(&self.secret, user, tenant, permissions, "fleetload", None, 3600).unwrap()
    }

    /// alice: tenant `demo`, READ+UPDATE (SPEC §7).
    pub fn alice(&self) -> String {
        self.token_with("alice", "demo", &[Permission::Read, Permission::Update])
    }

    /// alice's token, expired longer ago than the verifier's leeway.
    pub fn expired_alice(&self) -> String {
        let permissions = [Permission::Read, Permission::Update];
        mint_token(
            &self.secret,
            "alice",
            "demo",
            &permissions,
            "fleetload",
            None,
            -300,
        )
        .unwrap()
    }

    /// bob: tenant `acme`, READ+UPDATE (SPEC §7).
    pub fn bob(&self) -> String {
        self.token_with("bob", "acme", &[Permission::Read, Permission::Update])
    }

    /// POSTs a GraphQL request with the token as `Authorization: Bearer …`.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut req = self.http.post(format!("{}/graphql", self.url));
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        let resp = req
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "HTTP {}", resp.status());
        resp.json().await.unwrap()
    }

    /// The old frontend's prepare for `rows` rows; returns the whole payload.
    pub async fn prepare(&self, token: &str, vars: Value) -> Value {
        let body = self.gql(Some(token), PREPARE, vars).await;
        assert!(body.get("errors").is_none(), "prepare failed: {body}");
        body["data"]["prepareBatchUpload"].clone()
    }

    /// Prepares a REGISTER upload in `demo` as alice and returns `(uploadId, fileUpload)`.
    pub async fn prepare_demo(&self) -> (String, Value) {
        let payload = self
            .prepare(
                &self.alice(),
                json!({"tenantId": "demo", "assignActionId": "register-prepaid", "rowCount": 2, "deviceType": 1}),
            )
            .await;
        (
            payload["uploadId"].as_str().unwrap().to_owned(),
            payload["fileUpload"].clone(),
        )
    }

    /// Uploads `bytes` as the browser would: the returned fields, then `file`.
    pub async fn post_file(&self, file_upload: &Value, bytes: Vec<u8>) -> reqwest::Response {
        post_form(&self.http, file_upload, bytes).await
    }

    /// finalize exactly as the old frontend sends it: no selection set.
    pub async fn finalize(&self, token: &str, tenant: &str, upload_id: &str) -> Value {
        self.gql(
            Some(token),
            FINALIZE,
            json!({"tenantId": tenant, "uploadId": upload_id}),
        )
        .await
    }

    /// Runs pipeline jobs, then the error reports they queued, until none is left; returns
    /// how many pipeline jobs ran.
    pub async fn drain(&self) -> usize {
        let ran = drain(&self.pipeline).await;
        self.build_reports().await;
        ran
    }

    /// Builds the error reports that are due, as a worker process's background loop does;
    /// returns how many it built.
    pub async fn build_reports(&self) -> usize {
        let builder =
            fleetload::uploads::ReportBuilder::new(self.worker_db.clone(), self.state.storage.clone());
        let mut built = 0;
        while builder.try_build_next().await.expect("database reachable") == fleetload::uploads::Built::Done {
            built += 1;
            assert!(built < 10_000, "the report builder never runs dry");
        }
        built
    }

    /// prepare → POST the file → finalize, as alice in `demo` unless `vars` say otherwise;
    /// returns the upload id. `vars` are prepare's variables over a REGISTER default.
    pub async fn upload_csv(&self, token: &str, vars: Value, csv: impl Into<Vec<u8>>) -> String {
        let mut all =
            json!({"tenantId": "demo", "assignActionId": "register-prepaid", "rowCount": 1, "deviceType": 1});
        all.as_object_mut()
            .unwrap()
            .extend(vars.as_object().unwrap().clone());
        let tenant = all["tenantId"].as_str().unwrap().to_owned();
        let payload = self.prepare(token, all).await;
        let upload_id = payload["uploadId"].as_str().unwrap().to_owned();
        let resp = self.post_file(&payload["fileUpload"], csv.into()).await;
        assert!(resp.status().is_success(), "upload refused: {}", resp.status());
        let body = self.finalize(token, &tenant, &upload_id).await;
        assert_eq!(body["data"]["finalizeBatchUpload"], "QUEUED", "{body}");
        upload_id
    }

    /// The upload's status and counters as a client reads them.
    pub async fn upload_state(&self, token: &str, tenant: &str, upload_id: &str) -> Value {
        let body = self
            .gql(
                Some(token),
                "query($t: String!, $id: String!) { upload(tenantId: $t, uploadId: $id) { status totalRows processedRows succeeded failed failureReason startedAt finishedAt } }",
                json!({"t": tenant, "id": upload_id}),
            )
            .await;
        assert!(body.get("errors").is_none(), "{body}");
        body["data"]["upload"].clone()
    }

    /// The upload's row straight from the database.
    pub async fn upload_row(&self, upload_id: &str) -> entity::upload::Model {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        entity::prelude::Upload::find()
            .filter(entity::upload::Column::PublicId.eq(upload_id))
            .one(&self.state.db)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no upload {upload_id}"))
    }

    /// Result rows of an upload straight from the database: `(row, uid, outcome, code)`.
    pub async fn results(&self, upload_id: &str) -> Vec<(i32, String, String, Option<String>)> {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
        let upload = self.upload_row(upload_id).await;
        entity::prelude::BatchResult::find()
            .filter(entity::batch_result::Column::UploadId.eq(upload.id))
            .order_by_asc(entity::batch_result::Column::RowNumber)
            .all(&self.state.db)
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                let outcome = if r.outcome == entity::batch_result::Outcome::Success {
                    "SUCCESS"
                } else {
                    "FAIL"
                };
                (r.row_number, r.device_uid, outcome.to_owned(), r.error_code)
            })
            .collect()
    }

    pub async fn count_jobs(&self) -> u64 {
        use sea_orm::{EntityTrait, PaginatorTrait};
        entity::prelude::Job::find().count(&self.state.db).await.unwrap()
    }
}

/// POSTs a multipart form of `fileUpload.fields` plus `file`, as a browser does.
pub async fn post_form(http: &reqwest::Client, file_upload: &Value, bytes: Vec<u8>) -> reqwest::Response {
    let fields: Value =
        serde_json::from_str(file_upload["fields"].as_str().expect("fields is a JSON string")).unwrap();
    let mut form = reqwest::multipart::Form::new();
    for (name, value) in fields.as_object().unwrap() {
        form = form.text(name.clone(), value.as_str().unwrap().to_owned());
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(bytes)
            .file_name("devices.csv")
            .mime_str("text/csv")
            .unwrap(),
    );
    http.post(file_upload["url"].as_str().unwrap())
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// The first error's `extensions.code`, checking that AppSync's `errorType` agrees.
pub fn error_code(body: &Value) -> String {
    let ext = &body["errors"][0]["extensions"];
    assert_eq!(
        ext["code"], ext["errorType"],
        "code and errorType differ in {body}"
    );
    ext["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
        .to_owned()
}

/// The prepare mutation exactly as the old frontend writes it (seed 000).
pub const PREPARE: &str = r#"
mutation prepareBatchUpload(
  $tenantId: String!
  $assignActionId: String!
  $rowCount: Int!
  $deviceType: Int!
  $workflowId: String
  $brandId: Int
  $provisionType: String
  $targetWorkspaceId: String
) {
  prepareBatchUpload(
    tenantId: $tenantId
    assignActionId: $assignActionId
    rowCount: $rowCount
    deviceType: $deviceType
    workflowId: $workflowId
    brandId: $brandId
    provisionType: $provisionType
    targetWorkspaceId: $targetWorkspaceId
  ) {
    uploadId
    fileUpload {
      url
      fields
      expiresAt
    }
  }
}"#;

/// The finalize mutation exactly as the old frontend writes it: a leaf, no selection set.
pub const FINALIZE: &str = r#"
mutation finalizeBatchUpload(
  $tenantId: String!
  $uploadId: String!
  $workflowId: String
  $simControlName: String
  $simControlId: String
  $billingDetail: AWSJSON
) {
  finalizeBatchUpload(
    tenantId: $tenantId
    uploadId: $uploadId
    workflowId: $workflowId
    simControlName: $simControlName
    simControlId: $simControlId
    billingDetail: $billingDetail
  )
}"#;

/// A PostgreSQL database of its own for one test, dropped afterwards.
pub struct PgDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

impl PgDatabase {
    pub async fn create() -> Self {
        use sqlx::Connection;
        let admin_url = std::env::var("FLEETLOAD_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("fltest_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("PostgreSQL at FLEETLOAD_TEST_PG_URL (default 127.0.0.1:5432, database test)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin_url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
        Self {
            url: format!("{base}/{name}"),
            name,
            admin_url,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside any runtime guarantee: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Runs `pipeline`'s jobs until none is left; returns how many ran.
pub async fn drain(pipeline: &Pipeline) -> usize {
    let mut ran = 0;
    while pipeline.try_execute_next().await.expect("queue reachable") == Step::Done {
        ran += 1;
        assert!(ran < 100_000, "the pipeline never runs dry");
    }
    ran
}

/// `n` distinct valid IMEIs starting from `seed` (Luhn check digit appended).
pub fn imeis(seed: u64, n: usize) -> Vec<String> {
    (0..n as u64)
        .map(|i| {
            let body = format!("{:014}", 35_000_000_000_000u64 + seed * 10_000_000 + i);
            let check = fleetload::domain::device_uid::luhn_check_digit(&body);
            format!("{body}{check}")
        })
        .collect()
}

/// A CSV of the given key column and rows (LF line ends).
pub fn csv(header: &str, keys: &[String]) -> Vec<u8> {
    let mut out = String::with_capacity(keys.len() * 17 + header.len() + 1);
    out.push_str(header);
    out.push('\n');
    for k in keys {
        out.push_str(k);
        out.push('\n');
    }
    out.into_bytes()
}
