//! Traces across processes: an API process and a `fleetload worker`, both exporting over
//! OTLP to a receiver the test runs, share one trace from the client's `traceparent` through
//! the job that carries it to the worker's steps, on the job table and on SQS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::operability::{Process, mixed_csv, serve_with};

/// A span as an OTLP receiver got it: ids in lowercase hex.
#[derive(Clone, Debug)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: std::collections::HashMap<String, String>,
}

/// An OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf), as a collector would run it;
/// it keeps every span it is sent.
async fn otlp_receiver() -> (String, Arc<std::sync::Mutex<Vec<ExportedSpan>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;

    fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
        match value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Any::StringValue(s)) => s.clone(),
            Some(Any::IntValue(i)) => i.to_string(),
            Some(Any::BoolValue(b)) => b.to_string(),
            other => format!("{other:?}"),
        }
    }

    let spans = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = spans.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: bytes::Bytes| {
            let kept = kept.clone();
            async move {
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                };
                let mut kept = kept.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .map(|kv| text(&kv.value))
                        .unwrap_or_default();
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        kept.push(ExportedSpan {
                            service: service.clone(),
                            name: span.name,
                            trace_id: hex::encode(span.trace_id),
                            span_id: hex::encode(span.span_id),
                            parent_span_id: hex::encode(span.parent_span_id),
                            attributes: span
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), text(&kv.value)))
                                .collect(),
                        });
                    }
                }
                // An empty ExportTraceServiceResponse: everything accepted.
                (axum::http::StatusCode::OK, Vec::new())
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

/// The trace of the request that finalizes an upload reaches, through the job table, the
/// spans of a `fleetload worker` in another process: the dispatch job carries the request's
/// `traceparent`, the worker's dispatch span is its child, and the chunks (queued by the
/// dispatch step) stay in the same trace. A malformed `traceparent` starts a new trace and
/// nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_spans_continue_the_trace_of_the_request_that_queued_the_upload() {
    trace_crosses_processes(Vec::new()).await;
}

/// The same with the chunks on SQS (moto): they carry the trace context as a message
/// attribute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_sent_through_sqs_carry_the_trace_context_as_a_message_attribute() {
    let moto = crate::moto::s3_endpoint().await;
    let sdk = crate::moto::sdk_config(&moto.url);
    let queue = crate::moto::create_queue(&aws_sdk_sqs::Client::new(&sdk), "fltrace").await;
    trace_crosses_processes(vec![
        ("FLEETLOAD_SQS_QUEUE_URL", queue),
        ("FLEETLOAD_SQS_ENDPOINT_URL", moto.url.clone()),
        ("AWS_ACCESS_KEY_ID", crate::moto::ACCESS_KEY_ID.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", crate::moto::SECRET_ACCESS_KEY.to_owned()),
        ("AWS_REGION", crate::moto::REGION.to_owned()),
    ])
    .await;
}

/// An API process (no workers) and a `fleetload worker` on one embedded data dir, both
/// exporting to a test OTLP receiver, with `queue_env` on both.
async fn trace_crosses_processes(queue_env: Vec<(&'static str, String)>) {
    const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CLIENT_SPAN: &str = "00f067aa0ba902b7";
    let dir = tempfile::tempdir().unwrap();
    let (otlp, spans) = otlp_receiver().await;
    let otel = |service: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("FLEETLOAD_CHUNK_SIZE", "3".to_owned()),
        ]
        .into_iter()
        .chain(queue_env.iter().cloned())
        .collect::<Vec<_>>()
    };
    let mut api_env = otel("fleetload-api");
    api_env.push(("FLEETLOAD_WORKERS", "0".into()));
    let (api, client) = serve_with(dir.path(), api_env).await;

    // A garbled trace context is ignored, not an error.
    let resp = client
        .gql(
            "{ batchUploadTemplate(deviceType: 1) }",
            json!({}),
            &[("traceparent", "00-not-a-trace-01")],
        )
        .await;
    assert_eq!(resp.status(), 200);

    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let id = client
        .queue_upload(mixed_csv(), 7, &[("traceparent", traceparent.as_str())])
        .await;

    // No worker runs yet: the dispatch job waits in the job table with the request's
    // trace context (the server's request span, a child of the client's span).
    let db = fleetload::db::connect(&fleetload::config::Settings::embedded(dir.path().join("data")))
        .await
        .unwrap();
    let queued: Option<String> = {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
        entity::prelude::Job::find()
            .filter(entity::job::Column::Queue.eq("dispatch"))
            .select_only()
            .column(entity::job::Column::Traceparent)
            .into_tuple()
            .one(&db)
            .await
            .unwrap()
            .expect("the dispatch job is queued")
    };
    let queued = queued.expect("the dispatch job carries a traceparent");
    let parts: Vec<&str> = queued.split('-').collect();
    assert_eq!(parts.len(), 4, "{queued}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", CLIENT_TRACE, "01"),
        "{queued}"
    );
    let queued_by = parts[2].to_owned();
    assert_ne!(queued_by, CLIENT_SPAN);

    let worker_dir = dir.path().join("worker");
    std::fs::create_dir_all(&worker_dir).unwrap();
    let mut worker_env = otel("fleetload-worker");
    worker_env.extend([
        (
            "FLEETLOAD_DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        ("FLEETLOAD_WORKERS", "1".to_owned()),
    ]);
    let worker = Process::spawn("worker", &worker_env, &worker_dir.join("worker.log"));
    client.wait_completed(&id).await;

    // Spans are exported every 100 ms; wait (bounded) for the ones this test looks for.
    let started = Instant::now();
    let (api_spans, dispatch, chunks) = loop {
        let all = spans.lock().unwrap().clone();
        let in_trace = |service: &str| -> Vec<ExportedSpan> {
            all.iter()
                .filter(|s| s.service == service && s.trace_id == CLIENT_TRACE)
                .cloned()
                .collect()
        };
        let api_spans = in_trace("fleetload-api");
        let worker_spans = in_trace("fleetload-worker");
        let step = |name: &str| -> Vec<ExportedSpan> {
            worker_spans
                .iter()
                .filter(|s| s.name == "upload" && s.attributes.get("step").map(String::as_str) == Some(name))
                .cloned()
                .collect()
        };
        let (dispatch, chunks) = (step("dispatch"), step("chunk"));
        // 7 rows in chunks of 3: three chunk jobs.
        let request = api_spans
            .iter()
            .any(|s| s.name == "request" && s.parent_span_id == CLIENT_SPAN);
        if request
            && api_spans.iter().any(|s| s.span_id == queued_by)
            && !dispatch.is_empty()
            && chunks.len() >= 3
        {
            break (api_spans, dispatch, chunks);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "spans in the client's trace: {all:#?}\napi logs:\n{}\nworker logs:\n{}",
            api.logs(),
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The API's request span is the client's span's child, and the span the job names
    // (the finalize resolver's) lies within it.
    let request = api_spans
        .iter()
        .find(|s| s.name == "request" && s.parent_span_id == CLIENT_SPAN)
        .unwrap();
    let mut span = api_spans.iter().find(|s| s.span_id == queued_by).unwrap();
    while span.span_id != request.span_id {
        span = api_spans
            .iter()
            .find(|s| s.span_id == span.parent_span_id)
            .unwrap_or_else(|| panic!("{span:#?} is not within the request: {api_spans:#?}"));
    }
    // The worker's dispatch span is the child of the span that queued it, and names the upload.
    assert_eq!(dispatch[0].parent_span_id, queued_by, "{dispatch:#?}");
    assert_eq!(dispatch[0].attributes.get("upload_id"), Some(&id));
    assert_eq!(
        dispatch[0].attributes.get("tenant_id").map(String::as_str),
        Some("demo")
    );
    // The chunks were queued inside the dispatch step: each continues a span of the worker
    // in this trace.
    let worker_spans: Vec<ExportedSpan> = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.service == "fleetload-worker" && s.trace_id == CLIENT_TRACE)
        .cloned()
        .collect();
    for chunk in &chunks {
        assert!(
            worker_spans.iter().any(|s| s.span_id == chunk.parent_span_id),
            "{chunk:#?}"
        );
    }
}
