//! Logging and tracing setup: `RUST_LOG`-style filtering, text or JSON lines, always on
//! stderr so commands like `schema` and `token` keep stdout clean; OpenTelemetry traces over
//! OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, with the W3C trace context carried from
//! a request to the jobs it queues; and the span every pipeline step runs in, so that
//! `grep <uploadId>` over the logs of every process follows one upload.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::http::HeaderMap;
use entity::prelude::Upload;
use entity::upload;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use sea_orm::{ConnectionTrait, EntityTrait, QuerySelect};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The header (and job field) of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Whether spans are exported: only then is there a trace context to carry.
static EXPORTING: OnceLock<bool> = OnceLock::new();

/// Keeps the trace exporter of a process; dropping it sends the spans still buffered.
#[must_use = "dropping it stops exporting traces"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take()
            && let Err(e) = tracer.shutdown()
        {
            tracing::warn!(error = %e, "trace exporter did not flush");
        }
    }
}

/// Installs the process's subscriber; a second call (tests start many apps in one process)
/// changes nothing.
pub fn init(json: bool) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn,aws_config=warn,tower_http=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        // The fields of every enclosing span (request id, upload id, tenant) on each line.
        fmt.json().with_current_span(true).with_span_list(true).boxed()
    } else {
        fmt.boxed()
    };
    let (tracer, exporter_error) = match otlp_tracer() {
        Ok(tracer) => (tracer, None),
        Err(e) => (None, Some(e)),
    };
    let otel = tracer
        .as_ref()
        .map(|t| tracing_opentelemetry::layer().with_tracer(t.tracer("fleetload")));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(fmt)
        .try_init()
        .is_ok();
    if !installed {
        return Telemetry { tracer: None };
    }
    EXPORTING.get_or_init(|| tracer.is_some());
    if let Some(e) = exporter_error {
        tracing::warn!(error = %e, "OTLP trace exporter not started; no traces are sent");
    } else if tracer.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    Telemetry { tracer }
}

/// A tracer provider exporting over OTLP (HTTP/protobuf) when an endpoint is configured;
/// the exporter reads the standard `OTEL_EXPORTER_OTLP_*` and `OTEL_BSP_*` variables.
fn otlp_tracer() -> Result<Option<SdkTracerProvider>, opentelemetry_otlp::ExporterBuildError> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|key| std::env::var_os(key).is_some_and(|v| !v.is_empty()));
    if !configured {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("fleetload");
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// The W3C `traceparent` of the current span, to be carried by what it queues; `None`
/// when traces are not exported.
pub fn traceparent() -> Option<String> {
    if !EXPORTING.get().copied().unwrap_or(false) {
        return None;
    }
    let cx = Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` (not entered yet) a child of the span a job's `traceparent` names; a
/// missing or malformed one leaves `span` the root of a trace of its own.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    adopt(span, &carrier);
}

/// Makes a request's span (not entered yet) a child of the caller's span, when the request
/// carries a W3C `traceparent` header.
pub fn continue_request_trace(span: &Span, headers: &HeaderMap) {
    if headers.contains_key(TRACEPARENT) {
        adopt(span, &opentelemetry_http::HeaderExtractor(headers));
    }
}

fn adopt(span: &Span, carrier: &dyn opentelemetry::propagation::Extractor) {
    if !EXPORTING.get().copied().unwrap_or(false) {
        return;
    }
    let cx = TraceContextPropagator::new().extract(carrier);
    if cx.span().span_context().is_valid() {
        // Fails only when the span was entered already: it then stays a trace of its own.
        let _ = span.set_parent(cx);
    }
}

/// The span of one pipeline `step` (dispatch, chunk, webhook, report, sweep) of the upload
/// whose database key is `upload_pk`: its public id (`upload_id`, the UUID clients know)
/// and tenant are looked up by key, one small read; a failed read leaves them empty rather
/// than holding up the step. A job's step continues the trace of its `traceparent`.
pub async fn upload_span(
    db: &impl ConnectionTrait,
    step: &'static str,
    upload_pk: i64,
    traceparent: Option<&str>,
) -> Span {
    let ids: Option<(String, String)> = Upload::find_by_id(upload_pk)
        .select_only()
        .column(upload::Column::PublicId)
        .column(upload::Column::TenantId)
        .into_tuple()
        .one(db)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(upload_pk, error = %e, "no public id for the log span");
            None
        });
    let span = tracing::info_span!(
        "upload",
        step,
        upload_pk,
        upload_id = tracing::field::Empty,
        tenant_id = tracing::field::Empty
    );
    if let Some((public_id, tenant_id)) = ids {
        span.record("upload_id", public_id.as_str());
        span.record("tenant_id", tenant_id.as_str());
    }
    continue_trace(&span, traceparent);
    span
}
