//! S3 storage against a real S3 API (moto): the browser's POST goes straight to the bucket
//! with the policy fleetload signed, and finalize sees the object there.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::moto::{self, MotoServer};

const CSV: &[u8] = b"imei\r\n490154203237518\r\n";

/// An app whose objects live in a fresh bucket of a running S3 endpoint.
pub struct S3App {
    // Fields drop in order: the app stops before its S3 endpoint goes away.
    pub app: TestApp,
    pub bucket: String,
    pub s3: aws_sdk_s3::Client,
    pub moto: MotoServer,
}

pub async fn spawn_on_s3(backend: Backend) -> S3App {
    spawn_on_s3_with(backend, |_| {}).await
}

/// [`spawn_on_s3`] after `configure` adjusted the settings.
pub async fn spawn_on_s3_with(
    backend: Backend,
    configure: impl FnOnce(&mut fleetload::config::Settings),
) -> S3App {
    let moto = moto::s3_endpoint().await;
    let sdk = moto::sdk_config(&moto.url);
    let bucket = moto::create_bucket(&sdk).await;
    let endpoint = url::Url::parse(&moto.url).unwrap();
    let app = spawn_app_full(
        backend,
        |s| {
            s.s3_bucket = Some(bucket.clone());
            s.s3_endpoint_url = Some(endpoint);
            s.s3_force_path_style = true;
            configure(s);
        },
        Some(sdk.clone()),
    )
    .await;
    S3App {
        app,
        bucket,
        s3: moto::s3_client(&sdk),
        moto,
    }
}

/// Runs each `async fn name(s3: S3App)` body on SQLite and on PostgreSQL, both with S3.
macro_rules! on_both_backends_with_s3 {
    ($(async fn $name:ident($s3:ident: S3App) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn body($s3: S3App) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                body(spawn_on_s3(Backend::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                body(spawn_on_s3(Backend::Postgres).await).await
            }
        }
    )*};
}

fn fields_of(file_upload: &Value) -> Value {
    serde_json::from_str(file_upload["fields"].as_str().expect("fields is a JSON string")).unwrap()
}

async fn object_bytes(s3: &S3App, key: &str) -> Vec<u8> {
    let object = s3
        .s3
        .get_object()
        .bucket(&s3.bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetObject {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
    object.body.collect().await.unwrap().into_bytes().to_vec()
}

async fn status_of(app: &TestApp, upload_id: &str) -> String {
    let body = app
        .gql(
            Some(&app.alice()),
            "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { status } }",
            json!({"id": upload_id}),
        )
        .await;
    body["data"]["upload"]["status"]
        .as_str()
        .unwrap_or_else(|| panic!("no status in {body}"))
        .to_owned()
}

on_both_backends_with_s3! {
    async fn the_drop_in_flow_uploads_straight_to_the_bucket_and_queues_once(s3: S3App) {
        let app = &s3.app;
        let (upload_id, file_upload) = app.prepare_demo().await;
        assert_eq!(file_upload["url"], format!("{}/{}", s3.moto.url, s3.bucket));
        let key = fields_of(&file_upload)["key"].as_str().unwrap().to_owned();

        let resp = app.post_file(&file_upload, CSV.to_vec()).await;
        let status = resp.status();
        assert!(status.is_success(), "S3 refused the POST: HTTP {status}: {}", resp.text().await.unwrap());
        assert_eq!(object_bytes(&s3, &key).await, CSV);

        let body = app.finalize(&app.alice(), "demo", &upload_id).await;

        assert_eq!(body, json!({"data": {"finalizeBatchUpload": "QUEUED"}}));
        assert_eq!(status_of(app, &upload_id).await, "QUEUED");
        assert_eq!(app.count_jobs().await, 1);
    }

    async fn finalizing_before_the_file_is_in_the_bucket_is_refused_and_the_upload_stays_prepared(s3: S3App) {
        let app = &s3.app;
        let (upload_id, _) = app.prepare_demo().await;

        let body = app.finalize(&app.alice(), "demo", &upload_id).await;

        assert_eq!(error_code(&body), "UPLOAD_NOT_UPLOADED");
        assert_eq!(status_of(app, &upload_id).await, "PREPARED");
        assert_eq!(app.count_jobs().await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_post_policy_pins_the_key_the_size_range_the_bucket_and_the_expiry() {
    let s3 = spawn_on_s3(Backend::Sqlite).await;
    let app = &s3.app;

    let (_, file_upload) = app.prepare_demo().await;

    let fields = fields_of(&file_upload);
    for name in [
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-signature",
    ] {
        assert!(fields[name].is_string(), "missing {name} in {fields}");
    }
    assert_eq!(fields["x-amz-algorithm"], "AWS4-HMAC-SHA256");
    let credential = fields["x-amz-credential"].as_str().unwrap();
    assert!(
        credential.starts_with(&format!("{}/", moto::ACCESS_KEY_ID)),
        "{credential}"
    );
    assert!(
        credential.ends_with(&format!("/{}/s3/aws4_request", moto::REGION)),
        "{credential}"
    );
    let key = fields["key"].as_str().unwrap();
    let policy: Value =
        serde_json::from_slice(&STANDARD.decode(fields["policy"].as_str().unwrap()).unwrap()).unwrap();
    let conditions = policy["conditions"].as_array().unwrap();
    assert!(conditions.contains(&json!(["eq", "$key", key])), "{policy}");
    assert!(
        conditions.contains(&json!(["content-length-range", 1, app.settings.max_upload_bytes])),
        "{policy}"
    );
    assert!(conditions.contains(&json!({"bucket": s3.bucket})), "{policy}");
    let instant = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert_eq!(instant(&policy["expiration"]), instant(&file_upload["expiresAt"]));
    // moto does not check POST signatures, so check it as S3 does (SigV4, AWS's documented
    // derivation), with the secret of the test credentials.
    let day = fields["x-amz-date"].as_str().unwrap()[..8].to_owned();
    assert_eq!(
        fields["x-amz-signature"].as_str().unwrap(),
        sigv4_post_signature(
            moto::SECRET_ACCESS_KEY,
            &day,
            moto::REGION,
            fields["policy"].as_str().unwrap()
        )
    );
}

/// The signature S3 expects on a POST policy: HMAC-SHA256 over the base64 policy with the
/// key derived from the secret, day, region and service, in lower hex.
fn sigv4_post_signature(secret: &str, day: &str, region: &str, policy_b64: &str) -> String {
    use hmac::{Hmac, Mac};
    let hmac = |key: &[u8], data: &str| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().to_vec()
    };
    let key = ["s3", "aws4_request"].into_iter().fold(
        hmac(&hmac(format!("AWS4{secret}").as_bytes(), day), region),
        |key, part| hmac(&key, part),
    );
    hex::encode(hmac(&key, policy_b64))
}
