//! The simulator's HTTP face: the carrier API of issue 14 and the `/_sim/` admin routes. Each
//! handler checks its input, decides under one short lock on the carrier, and only then waits
//! (slow and timeout faults) or answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::carrier::{Action, Admission, Fault, Outcome};
use super::{Faults, Shared, SimState};

/// An action call of 100 devices with long ids is about 25 KiB.
const API_BODY_LIMIT: usize = 64 * 1024;
/// Seeding 10,000 devices.
const ADMIN_BODY_LIMIT: usize = 1024 * 1024;
/// Devices one action call may list; more and the whole call is refused (400).
pub const MAX_DEVICES_PER_ACTION: usize = 100;
const MAX_SEED_DEVICES: usize = 10_000;
const MAX_REJECT_ICCIDS: usize = 100_000;
const MAX_NAME: usize = 128;
const MAX_DEVICE_IDS: usize = 4;
const MAX_DEVICE_ID: usize = 64;
/// Slow and timeout faults are held at most this long.
const MAX_HOLD_MS: u64 = 10 * 60 * 1000;
const SESSION_HEADER: &str = "vz-m2m-token";

pub(super) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/ts/v1/oauth2/token", post(token))
        .route("/api/m2m/v1/session/login", post(login))
        .route("/api/m2m/v1/devices/actions/{action}", post(action))
        .route("/api/m2m/v1/devices/{iccid}", get(device))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT));
    let admin = Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/faults", post(set_faults))
        .route("/_sim/devices", post(seed_devices))
        .route("/_sim/devices/{iccid}", get(admin_device))
        .route("/_sim/expire-tokens", post(expire_tokens))
        .route("/_sim/reset-stats", post(reset_stats))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT));
    api.merge(admin).with_state(shared)
}

async fn token(
    State(sim): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    sim.carrier().count_request();
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return oauth_error(rejection.status(), "invalid_request"),
    };
    let grant = url::form_urlencoded::parse(&body[..]).find(|(k, _)| k == "grant_type");
    if grant.is_none_or(|(_, v)| v != "client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let issued = basic_credentials(&headers)
        .and_then(|(id, secret)| sim.carrier().issue_access_token(&id, &secret, Instant::now()));
    match issued {
        Some((token, ttl)) => Json(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ttl.as_secs(),
        }))
        .into_response(),
        None => {
            sim.carrier().count_unauthorized();
            oauth_error(StatusCode::UNAUTHORIZED, "invalid_client")
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Login {
    account_name: String,
}

async fn login(
    State(sim): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    sim.carrier().count_request();
    let login = parse_json::<Login>(body).and_then(|l| check_name("accountName", &l.account_name));
    let mut carrier = sim.carrier();
    let now = Instant::now();
    // The token is checked first: an unauthenticated caller learns nothing about its body.
    if !carrier.access_valid(bearer(&headers), now) {
        carrier.count_unauthorized();
        return Err(unauthorized());
    }
    login?;
    let (token, ttl) = carrier.login(bearer(&headers), now).ok_or_else(unauthorized)?;
    Ok(Json(json!({ "sessionToken": token, "expiresIn": ttl.as_secs() })).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActionRequest {
    account_name: String,
    service_plan: Option<String>,
    devices: Vec<ActionDevice>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActionDevice {
    device_ids: Vec<DeviceId>,
    client_request_id: String,
}

#[derive(Deserialize)]
struct DeviceId {
    kind: String,
    id: String,
}

/// The devices of a checked action call: `(iccid, clientRequestId)` in request order.
fn check_action(request: ActionRequest) -> Result<Vec<(String, String)>, Refusal> {
    check_name("accountName", &request.account_name)?;
    if let Some(plan) = &request.service_plan {
        check_name("servicePlan", plan)?;
    }
    if request.devices.is_empty() || request.devices.len() > MAX_DEVICES_PER_ACTION {
        return Err(bad_request(&format!(
            "devices must list 1 to {MAX_DEVICES_PER_ACTION} devices"
        )));
    }
    request
        .devices
        .into_iter()
        .map(|device| {
            check_name("clientRequestId", &device.client_request_id)?;
            if device.device_ids.is_empty() || device.device_ids.len() > MAX_DEVICE_IDS {
                return Err(bad_request(&format!(
                    "deviceIds must list 1 to {MAX_DEVICE_IDS} ids"
                )));
            }
            if device.device_ids.iter().any(|d| {
                d.kind.is_empty() || d.kind.len() > 16 || d.id.is_empty() || d.id.len() > MAX_DEVICE_ID
            }) {
                return Err(bad_request(&format!(
                    "a device id has a kind of 1 to 16 and an id of 1 to {MAX_DEVICE_ID} characters"
                )));
            }
            let mut iccids = device.device_ids.into_iter().filter(|d| d.kind == "iccid");
            match (iccids.next(), iccids.next()) {
                (Some(iccid), None) if is_iccid(&iccid.id) => Ok((iccid.id, device.client_request_id)),
                _ => Err(bad_request(
                    "each device needs exactly one deviceId of kind iccid (19 or 20 digits)",
                )),
            }
        })
        .collect()
}

async fn action(
    State(sim): State<Arc<Shared>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let Some(action) = Action::parse(&action) else {
        sim.carrier().count_request();
        return Err(error(StatusCode::NOT_FOUND, "NotFound", "no such action"));
    };
    let devices = parse_json::<ActionRequest>(body).and_then(check_action);
    let (admission, answer) = {
        let mut carrier = sim.carrier();
        let now = Instant::now();
        let client = admit(&mut carrier, &headers, now)?;
        let devices = devices?;
        let admission = carrier.admit(&client, now);
        let answer = matches!(admission, Admission::Serve { .. }).then(|| {
            let results: Vec<Value> = devices
                .iter()
                .map(|(iccid, key)| match carrier.apply(action, iccid, key, now) {
                    Outcome::Accepted => json!({ "iccid": iccid, "status": "ACCEPTED" }),
                    Outcome::Rejected { code, message } => json!({
                        "iccid": iccid, "status": "REJECTED", "errorCode": code, "errorMessage": message,
                    }),
                })
                .collect();
            json!({ "requestId": carrier.new_request_id().to_string(), "results": results })
        });
        (admission, answer)
    };
    answer_after(&sim, admission, answer).await
}

async fn device(
    State(sim): State<Arc<Shared>>,
    Path(iccid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let (admission, answer) = {
        let mut carrier = sim.carrier();
        let now = Instant::now();
        carrier.count_get();
        let client = admit(&mut carrier, &headers, now)?;
        if !is_iccid(&iccid) {
            return Err(bad_request("an iccid is 19 or 20 digits"));
        }
        let admission = carrier.admit(&client, now);
        let answer = match admission {
            Admission::Serve { .. } => {
                let device = carrier.lookup(&iccid, now).ok_or_else(not_found)?;
                Some(serde_json::to_value(device).expect("a device serializes"))
            }
            Admission::Fault(_) => None,
        };
        (admission, answer)
    };
    answer_after(&sim, admission, answer).await
}

/// Counts a device-endpoint arrival and checks both tokens: the client, or the 401 answer.
fn admit(carrier: &mut super::Carrier, headers: &HeaderMap, now: Instant) -> Result<String, Refusal> {
    carrier.count_request();
    carrier.arrive(now);
    let session = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok());
    carrier
        .authorize(bearer(headers), session, now)
        .ok_or_else(unauthorized)
}

/// Answers an admitted request: the fault it drew, or `answer` (after the slow delay).
async fn answer_after(
    sim: &Shared,
    admission: Admission,
    answer: Option<Value>,
) -> Result<Response, Refusal> {
    match admission {
        Admission::Fault(Fault::RateLimited(secs)) => {
            let refusal = error(
                StatusCode::TOO_MANY_REQUESTS,
                "RateLimitExceeded",
                "rate limit exceeded",
            );
            let mut response = refusal.into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            Ok(response)
        }
        Admission::Fault(Fault::ServerError) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "internal error",
        )),
        Admission::Fault(Fault::Timeout(hold)) => {
            hold_for(sim, hold).await;
            Ok(dropped())
        }
        Admission::Serve { delay } => {
            if let Some(delay) = delay {
                hold_for(sim, delay).await;
            }
            Ok(Json(answer.unwrap_or(Value::Null)).into_response())
        }
    }
}

/// Waits, cut short when the simulator stops so a held request never blocks its shutdown.
async fn hold_for(sim: &Shared, duration: Duration) {
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        () = sim.stop.cancelled() => {}
    }
}

/// A response whose body fails at once: hyper closes the connection instead of answering,
/// which is what a client that has not given up yet sees of a dropped request.
fn dropped() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, _>(std::io::Error::other("request dropped by the simulator"))
    });
    let mut response = Response::new(Body::from_stream(failing));
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response
}

async fn stats(State(sim): State<Arc<Shared>>) -> Response {
    Json(sim.carrier().stats(Instant::now())).into_response()
}

async fn set_faults(
    State(sim): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let faults = parse_json::<Faults>(body).and_then(check_faults)?;
    let mut carrier = sim.carrier();
    carrier.set_faults(faults);
    Ok(Json(carrier.faults().clone()).into_response())
}

fn check_faults(faults: Faults) -> Result<Faults, Refusal> {
    let probabilities = [faults.p_429, faults.p_500, faults.p_slow, faults.p_timeout];
    if !probabilities.iter().all(|p| (0.0..=1.0).contains(p)) {
        return Err(bad_request("probabilities are between 0 and 1"));
    }
    if faults.retry_after_secs > 3600 || faults.slow_ms > MAX_HOLD_MS || faults.timeout_ms > MAX_HOLD_MS {
        return Err(bad_request(&format!(
            "retry_after_secs is at most 3600, slow_ms and timeout_ms at most {MAX_HOLD_MS}"
        )));
    }
    if faults.reject_iccids.len() > MAX_REJECT_ICCIDS || !faults.reject_iccids.iter().all(|i| is_iccid(i)) {
        return Err(bad_request(&format!(
            "reject_iccids lists at most {MAX_REJECT_ICCIDS} iccids of 19 or 20 digits"
        )));
    }
    Ok(faults)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Seed {
    devices: Vec<SeedDevice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedDevice {
    iccid: String,
    state: SimState,
}

async fn seed_devices(
    State(sim): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let seed = parse_json::<Seed>(body)?;
    if seed.devices.len() > MAX_SEED_DEVICES || !seed.devices.iter().all(|d| is_iccid(&d.iccid)) {
        return Err(bad_request(&format!(
            "devices lists at most {MAX_SEED_DEVICES} devices with iccids of 19 or 20 digits"
        )));
    }
    let mut carrier = sim.carrier();
    let now = Instant::now();
    for device in &seed.devices {
        carrier.seed(&device.iccid, device.state, now);
    }
    Ok(Json(json!({ "seeded": seed.devices.len() })).into_response())
}

async fn admin_device(
    State(sim): State<Arc<Shared>>,
    Path(iccid): Path<String>,
) -> Result<Response, Refusal> {
    let device = sim
        .carrier()
        .device(&iccid, Instant::now())
        .ok_or_else(not_found)?;
    Ok(Json(device).into_response())
}

async fn expire_tokens(State(sim): State<Arc<Shared>>) -> Response {
    let expired = sim.carrier().expire_tokens();
    Json(json!({ "expired": expired })).into_response()
}

async fn reset_stats(State(sim): State<Arc<Shared>>) -> Response {
    sim.carrier().reset_stats();
    StatusCode::NO_CONTENT.into_response()
}

fn is_iccid(id: &str) -> bool {
    (19..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

fn check_name(field: &str, value: &str) -> Result<(), Refusal> {
    let ok = !value.is_empty() && value.chars().count() <= MAX_NAME && !value.chars().any(char::is_control);
    ok.then_some(())
        .ok_or_else(|| bad_request(&format!("{field} must be 1 to {MAX_NAME} characters")))
}

fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, Refusal> {
    let body =
        body.map_err(|rejection| error(rejection.status(), "InvalidRequest", &rejection.body_text()))?;
    serde_json::from_slice(&body).map_err(|err| bad_request(&format!("invalid JSON body: {err}")))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let encoded = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let (id, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// A refused request: its status and the carrier's `{"errorCode", "errorMessage"}` body.
#[derive(Debug)]
pub(super) struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({ "errorCode": self.code, "errorMessage": self.message });
        (self.status, Json(body)).into_response()
    }
}

fn error(status: StatusCode, code: &'static str, message: &str) -> Refusal {
    Refusal {
        status,
        code,
        message: message.to_owned(),
    }
}

fn bad_request(message: &str) -> Refusal {
    error(StatusCode::BAD_REQUEST, "InvalidRequest", message)
}

fn not_found() -> Refusal {
    error(StatusCode::NOT_FOUND, "DeviceNotFound", "device not found")
}

fn unauthorized() -> Refusal {
    error(
        StatusCode::UNAUTHORIZED,
        "UnauthorizedAccess",
        "the access or session token is unknown or expired",
    )
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({ "error": code }))).into_response()
}
