//! The carrier's HTTP API (ThingSpace-style, described in docs/carrier.md): an OAuth access
//! token plus a session token, batched line actions with a per-device idempotency key, and a
//! line's status. Every call gives back what the audit trail keeps of
//! it: never a token or a secret.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::domain::carrier_line::Operation;

/// Longest text of a request or an answer the audit trail keeps.
const SUMMARY_CHARS: usize = 500;
/// Largest answer body read from the carrier.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The tokens every device call carries.
#[derive(Clone)]
pub struct Tokens {
    pub access: SecretString,
    pub session: SecretString,
    /// The earlier of the two expiries.
    pub expires_at: DateTime<Utc>,
}

/// Why a call did not give an answer about the devices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The carrier refused the credentials or a token (401/403).
    #[error("the carrier refused the credentials: {0}")]
    Unauthorized(String),
    /// 429: nothing was applied; try again after the carrier's delay.
    #[error("the carrier's rate limit was hit")]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx: the carrier failed; whether it applied anything is not known.
    #[error("the carrier failed with HTTP {0}: {1}")]
    Server(u16, String),
    /// No answer in time, or the connection broke: whether it applied anything is not known.
    #[error("no answer from the carrier: {0}")]
    NoAnswer(String),
    /// Another 4xx for the whole request: the carrier will not take it as sent.
    #[error("the carrier refused the request with HTTP {0}: {1}")]
    Refused(u16, String),
    /// An answer that is not what the API promises.
    #[error("the carrier's answer could not be read: {0}")]
    BadAnswer(String),
}

/// A device of an action call: its line and, when known, its IMEI.
#[derive(Clone, Debug)]
pub struct Line<'a> {
    pub iccid: &'a str,
    pub imei: Option<&'a str>,
    /// Our idempotency key for this device's row.
    pub client_request_id: &'a str,
}

/// The carrier's answer for one device of an action call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceAnswer {
    Accepted,
    Rejected { code: String, message: String },
}

/// A line as the carrier reports it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LineState {
    pub iccid: String,
    pub state: String,
    pub msisdn: Option<String>,
    pub ip_address: Option<String>,
    pub last_client_request_id: Option<String>,
}

/// What the audit trail keeps of one call.
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub operation: &'static str,
    pub request: String,
    pub http_status: Option<u16>,
    pub outcome: &'static str,
    pub response: String,
    pub duration: Duration,
}

#[derive(Clone)]
pub struct CarrierClient {
    http: reqwest::Client,
}

impl CarrierClient {
    /// `timeout` bounds each call as a whole: connect, send and the answer.
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http })
    }

    /// OAuth client credentials, then the session login of `account`.
    pub async fn login(
        &self,
        base: &Url,
        client_id: &str,
        client_secret: &SecretString,
        account: &str,
    ) -> (Result<Tokens, CallError>, Vec<CallRecord>) {
        let mut records = Vec::new();
        let started = Instant::now();
        let sent = self
            .http
            .post(endpoint(base, "api/ts/v1/oauth2/token"))
            .basic_auth(client_id, Some(client_secret.expose_secret()))
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await;
        #[derive(Deserialize)]
        struct Access {
            access_token: String,
            expires_in: i64,
        }
        let request = format!("client_credentials for client {}", clip(client_id));
        let access = answer::<Access>(sent).await;
        records.push(record("TOKEN", request, &access, started, |_| {
            "token issued".into()
        }));
        let access = match access.result {
            Ok(a) => a,
            Err(e) => return (Err(e), records),
        };

        let started = Instant::now();
        let sent = self
            .http
            .post(endpoint(base, "api/m2m/v1/session/login"))
            .bearer_auth(&access.access_token)
            .json(&serde_json::json!({ "accountName": account }))
            .send()
            .await;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Session {
            session_token: String,
            expires_in: i64,
        }
        let session = answer::<Session>(sent).await;
        records.push(record(
            "SESSION",
            format!("session login for account {}", clip(account)),
            &session,
            started,
            |_| "session issued".into(),
        ));
        let tokens = session.result.map(|s| {
            let seconds = access.expires_in.min(s.expires_in).clamp(0, 366 * 86_400);
            Tokens {
                access: access.access_token.into(),
                session: s.session_token.into(),
                expires_at: Utc::now() + chrono::Duration::seconds(seconds),
            }
        });
        (tokens, records)
    }

    /// One action call for up to a batch of lines: an answer per line, in their order.
    pub async fn act(
        &self,
        base: &Url,
        tokens: &Tokens,
        operation: Operation,
        account: &str,
        service_plan: Option<&str>,
        lines: &[Line<'_>],
    ) -> (Result<Vec<DeviceAnswer>, CallError>, CallRecord) {
        let devices: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| {
                let mut ids = vec![serde_json::json!({"kind": "iccid", "id": l.iccid})];
                if let Some(imei) = l.imei {
                    ids.push(serde_json::json!({"kind": "imei", "id": imei}));
                }
                serde_json::json!({"deviceIds": ids, "clientRequestId": l.client_request_id})
            })
            .collect();
        let mut body = serde_json::json!({ "accountName": account, "devices": devices });
        if let Some(plan) = service_plan {
            body["servicePlan"] = plan.into();
        }
        let started = Instant::now();
        let sent = self
            .authorized(
                self.http.post(endpoint(
                    base,
                    &format!("api/m2m/v1/devices/actions/{}", operation.path()),
                )),
                tokens,
            )
            .json(&body)
            .send()
            .await;
        #[derive(Deserialize)]
        struct Answer {
            results: Vec<Result_>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Result_ {
            iccid: String,
            status: String,
            error_code: Option<String>,
            error_message: Option<String>,
        }
        let got = answer::<Answer>(sent).await;
        let plan = service_plan
            .map(|p| format!(" on plan {}", clip(p)))
            .unwrap_or_default();
        let request = format!(
            "{} of {} line(s){plan}: {}",
            operation.as_str(),
            lines.len(),
            clip(&lines.iter().map(|l| l.iccid).collect::<Vec<_>>().join(","))
        );
        let rec = record(operation.as_str(), request, &got, started, |a: &Answer| {
            let accepted = a.results.iter().filter(|r| r.status == "ACCEPTED").count();
            format!("{accepted} accepted, {} rejected", a.results.len() - accepted)
        });
        let result = got.result.and_then(|a| {
            if a.results.len() != lines.len() || a.results.iter().zip(lines).any(|(r, l)| r.iccid != l.iccid)
            {
                return Err(CallError::BadAnswer(
                    "the results do not match the devices sent".into(),
                ));
            }
            Ok(a.results
                .into_iter()
                .map(|r| match r.status.as_str() {
                    "ACCEPTED" => DeviceAnswer::Accepted,
                    _ => DeviceAnswer::Rejected {
                        code: clip(r.error_code.as_deref().unwrap_or("Rejected")),
                        message: clip(r.error_message.as_deref().unwrap_or("rejected by the carrier")),
                    },
                })
                .collect())
        });
        (result, rec)
    }

    /// The line's status at the carrier; `None` when the carrier does not know it.
    pub async fn line(
        &self,
        base: &Url,
        tokens: &Tokens,
        iccid: &str,
    ) -> (Result<Option<LineState>, CallError>, CallRecord) {
        let started = Instant::now();
        let sent = self
            .authorized(
                self.http
                    .get(endpoint(base, &format!("api/m2m/v1/devices/{iccid}"))),
                tokens,
            )
            .send()
            .await;
        let got = answer::<LineState>(sent).await;
        let not_found = got.status == Some(404);
        let rec = record(
            "STATUS",
            format!("status of {iccid}"),
            &got,
            started,
            |l: &LineState| format!("state {}", clip(&l.state)),
        );
        let result = match got.result {
            Ok(line) => Ok(Some(line)),
            Err(CallError::Refused(404, _)) if not_found => Ok(None),
            Err(e) => Err(e),
        };
        (result, rec)
    }

    fn authorized(&self, request: reqwest::RequestBuilder, tokens: &Tokens) -> reqwest::RequestBuilder {
        request
            .bearer_auth(tokens.access.expose_secret())
            .header("VZ-M2M-Token", tokens.session.expose_secret())
    }
}

fn endpoint(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
    url.set_path(&joined);
    url
}

struct Answered<T> {
    status: Option<u16>,
    result: Result<T, CallError>,
    /// The body's start, for the audit trail of a failed call.
    body: String,
}

async fn answer<T: serde::de::DeserializeOwned>(sent: reqwest::Result<reqwest::Response>) -> Answered<T> {
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            return Answered {
                status: None,
                result: Err(CallError::NoAnswer(without_url(&e))),
                body: String::new(),
            };
        }
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    let bytes = match read_bounded(response).await {
        Ok(b) => b,
        Err(e) => {
            return Answered {
                status: Some(status.as_u16()),
                result: Err(e),
                body: String::new(),
            };
        }
    };
    let body = clip(&String::from_utf8_lossy(&bytes));
    let code = status.as_u16();
    let result = match code {
        200..=299 => serde_json::from_slice::<T>(&bytes).map_err(|e| CallError::BadAnswer(e.to_string())),
        401 | 403 => Err(CallError::Unauthorized(body.clone())),
        429 => Err(CallError::RateLimited { retry_after }),
        500..=599 => Err(CallError::Server(code, body.clone())),
        _ => Err(CallError::Refused(code, body.clone())),
    };
    Answered {
        status: Some(code),
        result,
        body,
    }
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, CallError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| CallError::NoAnswer(without_url(&e)))?
    {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(CallError::BadAnswer(format!(
                "an answer over {MAX_ANSWER_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// reqwest's errors name the URL; ours carry no secret in a URL, but the text is kept short.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    kind.to_owned()
}

fn record<T>(
    operation: &'static str,
    request: String,
    got: &Answered<T>,
    started: Instant,
    ok: impl Fn(&T) -> String,
) -> CallRecord {
    let (outcome, response) = match &got.result {
        Ok(value) => ("OK", ok(value)),
        Err(CallError::Unauthorized(_)) => ("UNAUTHORIZED", got.body.clone()),
        Err(CallError::RateLimited { retry_after }) => (
            "RATE_LIMITED",
            retry_after.map_or_else(
                || "no Retry-After".into(),
                |d| format!("Retry-After {} s", d.as_secs()),
            ),
        ),
        Err(CallError::Server(..)) => ("SERVER_ERROR", got.body.clone()),
        Err(CallError::NoAnswer(why)) => ("NO_ANSWER", why.clone()),
        Err(CallError::Refused(..)) => ("REFUSED", got.body.clone()),
        Err(CallError::BadAnswer(why)) => ("BAD_ANSWER", clip(why)),
    };
    CallRecord {
        operation,
        request,
        http_status: got.status,
        outcome,
        response,
        duration: started.elapsed(),
    }
}

fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(SUMMARY_CHARS).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}
