//! A real S3 API for the S3 tests: moto's standalone server (`pip install 'moto[server]'`).
//!
//! CI may start one shared server and point `FLEETLOAD_TEST_MOTO_URL` at it; otherwise each
//! test starts its own `moto_server` child on a free port and kills it when done. Tests stay
//! independent either way: each works in a bucket of its own.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;

/// The access key of [`sdk_config`]'s static credentials; it shows in every POST policy.
pub const ACCESS_KEY_ID: &str = "test";
pub const SECRET_ACCESS_KEY: &str = "test";
pub const REGION: &str = "us-east-1";

/// How long a freshly started moto may take to answer.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// An S3 endpoint: our own `moto_server` child (killed on drop) or the shared one of CI.
pub struct MotoServer {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub url: String,
    child: Option<Child>,
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The shared server of `FLEETLOAD_TEST_MOTO_URL`, else a new `moto_server` child that
/// answers HTTP by the time this returns.
pub async fn s3_endpoint() -> MotoServer {
    if let Ok(url) = std::env::var("FLEETLOAD_TEST_MOTO_URL") {
        let url = url.trim_end_matches('/').to_owned();
        wait_until_answering(&url, None).await;
        return MotoServer { url, child: None };
    }

    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot start moto_server ({err}): the S3 tests need it. Install it with \
                 `pip install 'moto[server]'`, or set FLEETLOAD_TEST_MOTO_URL to a running one"
            )
        });
    // Owned by the guard first, so a moto that never answers is still killed.
    let mut server = MotoServer {
        url: format!("http://127.0.0.1:{port}"),
        child: Some(child),
    };
    wait_until_answering(&server.url, server.child.as_mut()).await;
    server
}

/// A port nobody listens on right now (the OS picks it; the listener is dropped at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free local port")
        .port()
}

async fn wait_until_answering(url: &str, mut child: Option<&mut Child>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        // Any HTTP answer (moto lists buckets at `/`) means it serves.
        if http.get(url).send().await.is_ok() {
            return;
        }
        if let Some(child) = child.as_deref_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("moto_server exited early ({status}); is `moto[server]` fully installed?");
        }
        assert!(
            started.elapsed() < STARTUP_LIMIT,
            "no S3 endpoint answered at {url} within {STARTUP_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// AWS configuration for `endpoint` with static test credentials: nothing is read from the
/// process environment or profile files, so a developer's real AWS setup never leaks in.
pub fn sdk_config(endpoint: &str) -> SdkConfig {
    let credentials = Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "static");
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .endpoint_url(endpoint)
        .build()
}

/// A path-style S3 client for the endpoint of `sdk` (moto serves buckets under its path).
pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Creates a bucket no other test uses and returns its name.
pub async fn create_bucket(sdk: &SdkConfig) -> String {
    let bucket = format!("fltest-{}", uuid::Uuid::new_v4().simple());
    s3_client(sdk)
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "creating bucket {bucket}: {}",
                aws_sdk_s3::error::DisplayErrorContext(err)
            )
        });
    bucket
}

/// Creates an SQS queue no other test or bench uses (`{prefix}-<uuid>`) and returns its URL.
pub async fn create_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> String {
    sqs.create_queue()
        .queue_name(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned()
}

/// A fresh queue with a fresh dead-letter queue of its own, to which messages move after
/// `max_receives` receives (no redrive policy with `None`), and `attributes` besides.
/// Returns the URLs of the queue and of its dead-letter queue.
pub async fn create_queue_with_dead_letter(
    sqs: &aws_sdk_sqs::Client,
    max_receives: Option<u32>,
    attributes: &[(aws_sdk_sqs::types::QueueAttributeName, String)],
) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dlq_url = create_queue(sqs, "fltest-dlq").await;
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap();
    let mut create = sqs
        .create_queue()
        .queue_name(format!("fltest-{}", uuid::Uuid::new_v4().simple()));
    if let Some(count) = max_receives {
        create = create.attributes(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": count}).to_string(),
        );
    }
    for (name, value) in attributes {
        create = create.attributes(name.clone(), value);
    }
    let url = create.send().await.unwrap().queue_url().unwrap().to_owned();
    (url, dlq_url)
}
