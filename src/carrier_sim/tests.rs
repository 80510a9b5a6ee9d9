//! The simulator over real HTTP on port 0, as the carrier client of issue 14 will see it.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{CarrierSim, Faults, SimConfig, SimState, SimStats};
use crate::domain::device_uid::luhn_check_digit;

/// A Luhn-valid 19-digit ICCID.
fn iccid(n: u32) -> String {
    let body = format!("8901260{n:011}");
    format!("{body}{}", luhn_check_digit(&body))
}

/// Same length, wrong check digit.
fn bad_luhn_iccid(n: u32) -> String {
    let good = iccid(n);
    let last = good.as_bytes()[18] - b'0';
    format!("{}{}", &good[..18], (last + 1) % 10)
}

async fn start(config: SimConfig) -> CarrierSim {
    CarrierSim::start(config).await.expect("simulator starts")
}

/// Long enough that a test's next calls still find an activation pending on a loaded
/// machine, short enough to wait for.
const ACTIVATION: Duration = Duration::from_millis(800);

fn fast() -> SimConfig {
    SimConfig {
        activation_delay: ACTIVATION,
        ..SimConfig::default()
    }
}

/// A signed-in carrier client.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    access: String,
    session: String,
}

impl Client {
    async fn sign_in(sim: &CarrierSim) -> Self {
        Self::sign_in_as(sim, "demo-client", "demo-secret").await
    }

    async fn sign_in_as(sim: &CarrierSim, id: &str, secret: &str) -> Self {
        let http = reqwest::Client::new();
        let base = sim.url().to_owned();
        let (status, body) = token(&http, &base, Some((id, secret)), "grant_type=client_credentials").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let access = body["access_token"].as_str().unwrap().to_owned();
        let login = http
            .post(format!("{base}/api/m2m/v1/session/login"))
            .bearer_auth(&access)
            .json(&json!({ "accountName": "0000123456-00001" }))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), StatusCode::OK);
        let body: Value = login.json().await.unwrap();
        let session = body["sessionToken"].as_str().unwrap().to_owned();
        Self {
            http,
            base,
            access,
            session,
        }
    }

    async fn action_body(&self, action: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/api/m2m/v1/devices/actions/{action}", self.base))
            .bearer_auth(&self.access)
            .header("VZ-M2M-Token", &self.session)
            .json(body)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    /// One call for `devices` as `(iccid, clientRequestId)`.
    async fn action(&self, action: &str, devices: &[(&str, &str)]) -> (StatusCode, Value) {
        self.action_body(action, &action_body(devices)).await
    }

    /// The status of one device's single-device call: "ACCEPTED" or its errorCode.
    async fn one(&self, action: &str, iccid: &str, key: &str) -> String {
        let (status, body) = self.action(action, &[(iccid, key)]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let result = &body["results"][0];
        assert_eq!(result["iccid"], iccid);
        match result["status"].as_str().unwrap() {
            "ACCEPTED" => "ACCEPTED".into(),
            _ => result["errorCode"].as_str().unwrap().into(),
        }
    }

    async fn get(&self, iccid: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}/api/m2m/v1/devices/{iccid}", self.base))
            .bearer_auth(&self.access)
            .header("VZ-M2M-Token", &self.session)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap_or(Value::Null))
    }
}

fn action_body(devices: &[(&str, &str)]) -> Value {
    let devices: Vec<Value> = devices
        .iter()
        .map(|(iccid, key)| {
            json!({
                "deviceIds": [{ "kind": "iccid", "id": iccid }, { "kind": "imei", "id": "490154203237518" }],
                "clientRequestId": key,
            })
        })
        .collect();
    json!({ "accountName": "0000123456-00001", "servicePlan": "m2m-basic", "devices": devices })
}

async fn token(
    http: &reqwest::Client,
    base: &str,
    credentials: Option<(&str, &str)>,
    form: &str,
) -> (StatusCode, Value) {
    let mut request = http
        .post(format!("{base}/api/ts/v1/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned());
    if let Some((id, secret)) = credentials {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn tokens_are_issued_for_valid_client_credentials_only() {
    let sim = start(SimConfig::default()).await;
    let http = reqwest::Client::new();
    let form = "grant_type=client_credentials";
    for credentials in [
        None,
        Some(("demo-client", "wrong")),
        Some(("other", "demo-secret")),
    ] {
        let (status, body) = token(&http, sim.url(), credentials, form).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, json!({ "error": "invalid_client" }));
    }
    let (status, body) = token(
        &http,
        sim.url(),
        Some(("demo-client", "demo-secret")),
        "grant_type=password",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type");

    let (status, body) = token(&http, sim.url(), Some(("demo-client", "demo-secret")), form).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3600);
    let access = body["access_token"].as_str().unwrap();

    let login = async |bearer: &str, body: Value| {
        let response = http
            .post(format!("{}/api/m2m/v1/session/login", sim.url()))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    let (status, body) = login("not-a-token", json!({ "accountName": "a" })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errorCode"], "UnauthorizedAccess");
    let (status, _) = login(access, json!({ "accountName": "" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = login(access, json!({ "accountName": "a".repeat(129) })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = login(access, json!({ "accountName": "0000123456-00001" })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["expiresIn"], 3600);
    assert!(!body["sessionToken"].as_str().unwrap().is_empty());

    let stats = sim.stats();
    assert_eq!((stats.tokens_issued, stats.sessions_issued), (1, 1));
    assert_eq!(stats.unauthorized, 4);
    assert_eq!(stats.requests_total, 9);
}

#[tokio::test]
async fn device_endpoints_need_both_live_tokens_of_one_client() {
    let sim = start(SimConfig {
        clients: vec![("a".into(), "sa".into()), ("b".into(), "sb".into())],
        access_token_ttl: Duration::from_secs(1),
        ..fast()
    })
    .await;
    let device = iccid(1);
    sim.seed_device(&device, SimState::Inventory);
    let a = Client::sign_in_as(&sim, "a", "sa").await;
    let b = Client::sign_in_as(&sim, "b", "sb").await;

    let send = async |access: &str, session: Option<&str>| {
        let mut request = a
            .http
            .post(format!("{}/api/m2m/v1/devices/actions/activate", sim.url()))
            .bearer_auth(access)
            .json(&action_body(&[(&device, "k1")]));
        if let Some(session) = session {
            request = request.header("VZ-M2M-Token", session);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    for (access, session) in [
        (a.access.as_str(), None),
        (a.access.as_str(), Some("unknown")),
        ("unknown", Some(a.session.as_str())),
        // The session of another client does not go with this access token.
        (a.access.as_str(), Some(b.session.as_str())),
    ] {
        let (status, body) = send(access, session).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["errorCode"], "UnauthorizedAccess");
    }
    assert_eq!(sim.state(&device), Some(SimState::Inventory));

    // The access token's lifetime ends: 401 and nothing applied, with a live session.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = send(&a.access, Some(&a.session)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(sim.state(&device), Some(SimState::Inventory));

    // Expired at once by the handle; new tokens work.
    let a = Client::sign_in_as(&sim, "a", "sa").await;
    sim.expire_tokens();
    let (status, _) = a.get(&device).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = a.action("activate", &[(&device, "k1")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errorCode"], "UnauthorizedAccess");
    assert_eq!(sim.state(&device), Some(SimState::Inventory));
    let a = Client::sign_in_as(&sim, "a", "sa").await;
    assert_eq!(a.one("activate", &device, "k1").await, "ACCEPTED");
    let stats = sim.stats();
    assert_eq!(stats.applied_per_device.get(&device), Some(&1));
    assert_eq!(stats.unauthorized, 7);
}

#[tokio::test]
async fn actions_follow_the_transition_matrix() {
    let sim = start(fast()).await;
    let c = Client::sign_in(&sim).await;
    let (fresh, unknown) = (iccid(10), iccid(11));

    assert_eq!(c.one("add", &fresh, "add-1").await, "ACCEPTED");
    assert_eq!(sim.state(&fresh), Some(SimState::Inventory));
    assert_eq!(c.one("add", &fresh, "add-2").await, "DeviceExists");
    assert_eq!(c.one("activate", &unknown, "u-1").await, "DeviceNotFound");
    assert_eq!(c.one("deactivate", &unknown, "u-2").await, "DeviceNotFound");
    assert_eq!(sim.state(&unknown), None);
    assert_eq!(c.one("deactivate", &fresh, "d-1").await, "InvalidStateTransition");

    assert_eq!(c.one("activate", &fresh, "a-1").await, "ACCEPTED");
    assert_eq!(sim.state(&fresh), Some(SimState::PendingActivation));
    // Already pending: accepted, the running activation stands.
    assert_eq!(c.one("activate", &fresh, "a-2").await, "ACCEPTED");
    assert_eq!(c.one("deactivate", &fresh, "d-2").await, "InvalidStateTransition");
    tokio::time::sleep(ACTIVATION + Duration::from_millis(100)).await;
    assert_eq!(sim.state(&fresh), Some(SimState::Active));
    assert_eq!(c.one("activate", &fresh, "a-3").await, "InvalidStateTransition");
    assert_eq!(c.one("add", &fresh, "add-3").await, "DeviceExists");

    let line = sim.device(&fresh).unwrap();
    assert_eq!(c.one("deactivate", &fresh, "d-3").await, "ACCEPTED");
    let device = sim.device(&fresh).unwrap();
    assert_eq!(device.state, SimState::Deactivated);
    assert_eq!((device.msisdn, device.ip_address), (None, None));
    assert_eq!(c.one("deactivate", &fresh, "d-4").await, "InvalidStateTransition");

    // Reactivated: a new line, never the old one.
    assert_eq!(c.one("activate", &fresh, "a-4").await, "ACCEPTED");
    tokio::time::sleep(ACTIVATION + Duration::from_millis(100)).await;
    let device = sim.device(&fresh).unwrap();
    assert_eq!(device.state, SimState::Active);
    assert_ne!(device.msisdn, line.msisdn);
    assert_ne!(device.ip_address, line.ip_address);

    let stats = sim.stats();
    // add-1, a-1, a-2, d-3, a-4.
    assert_eq!(stats.applied_per_device.get(&fresh), Some(&5));
    assert_eq!(stats.accepted_calls_per_device.get(&fresh), Some(&5));
    assert!(!stats.applied_per_device.contains_key(&unknown));
    assert_eq!(stats.replays, 0);
}

#[tokio::test]
async fn one_call_answers_every_device_in_order() {
    let sim = start(fast()).await;
    let c = Client::sign_in(&sim).await;
    let (inventory, active, unknown, rejected) = (iccid(20), iccid(21), iccid(22), iccid(23));
    sim.seed_device(&inventory, SimState::Inventory);
    sim.seed_device(&active, SimState::Active);
    sim.seed_device(&rejected, SimState::Inventory);
    sim.set_faults(Faults {
        reject_iccids: HashSet::from([rejected.clone()]),
        ..Faults::default()
    });
    let (status, body) = c
        .action(
            "activate",
            &[
                (&inventory, "r-1"),
                (&active, "r-2"),
                (&unknown, "r-3"),
                (&rejected, "r-4"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(uuid::Uuid::parse_str(body["requestId"].as_str().unwrap()).is_ok());
    assert_eq!(
        body["results"],
        json!([
            { "iccid": inventory, "status": "ACCEPTED" },
            { "iccid": active, "status": "REJECTED", "errorCode": "InvalidStateTransition",
              "errorMessage": "the device's state does not allow this action" },
            { "iccid": unknown, "status": "REJECTED", "errorCode": "DeviceNotFound", "errorMessage": "device not found" },
            { "iccid": rejected, "status": "REJECTED", "errorCode": "InvalidDevice",
              "errorMessage": "device rejected by carrier policy" },
        ])
    );
    assert_eq!(sim.state(&rejected), Some(SimState::Inventory));
    let stats = sim.stats();
    assert_eq!(stats.applied_per_device.len(), 1);
    assert_eq!(stats.applied_per_device.get(&inventory), Some(&1));
    // The reject list applies to every action, add included.
    assert_eq!(c.one("add", &rejected, "r-5").await, "InvalidDevice");
}

#[tokio::test]
async fn activation_completes_later_with_a_line() {
    let sim = start(fast()).await;
    let c = Client::sign_in(&sim).await;
    let device = iccid(30);
    sim.seed_device(&device, SimState::Deactivated);
    assert_eq!(c.one("activate", &device, "row-30").await, "ACCEPTED");
    let (status, body) = c.get(&device).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "iccid": device, "state": "pending activation", "msisdn": null, "ipAddress": null,
                "lastClientRequestId": "row-30" })
    );
    tokio::time::sleep(ACTIVATION + Duration::from_millis(100)).await;
    let (status, body) = c.get(&device).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "active");
    let msisdn = body["msisdn"].as_str().unwrap();
    assert!(
        msisdn.len() == 10 && msisdn.bytes().all(|b| b.is_ascii_digit()),
        "{msisdn}"
    );
    body["ipAddress"].as_str().unwrap().parse::<Ipv4Addr>().unwrap();
    assert_eq!(body["lastClientRequestId"], "row-30");

    let (status, body) = c.get(&iccid(31)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errorCode"], "DeviceNotFound");
    let (status, _) = c.get("12345").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(sim.stats().get_requests, 4);
}

#[tokio::test]
async fn a_replayed_request_id_is_accepted_and_not_applied_again() {
    let sim = start(fast()).await;
    let c = Client::sign_in(&sim).await;
    let (device, other) = (iccid(40), iccid(41));
    sim.seed_device(&device, SimState::Inventory);
    sim.seed_device(&other, SimState::Inventory);
    assert_eq!(c.one("activate", &device, "upload-1/row-7").await, "ACCEPTED");
    assert_eq!(c.one("activate", &device, "upload-1/row-7").await, "ACCEPTED");
    tokio::time::sleep(ACTIVATION + Duration::from_millis(100)).await;
    let line = sim.device(&device).unwrap();
    assert_eq!(line.state, SimState::Active);
    // Even now that activating again is an invalid transition, the replay is ACCEPTED and
    // changes nothing.
    assert_eq!(c.one("activate", &device, "upload-1/row-7").await, "ACCEPTED");
    assert_eq!(sim.device(&device), Some(line));
    // The key belongs to its device: on another device it is a first call.
    assert_eq!(c.one("activate", &other, "upload-1/row-7").await, "ACCEPTED");

    let stats = sim.stats();
    assert_eq!(stats.applied_per_device.get(&device), Some(&1));
    assert_eq!(stats.accepted_calls_per_device.get(&device), Some(&3));
    assert_eq!(stats.applied_per_device.get(&other), Some(&1));
    assert_eq!(stats.replays, 2);
}

#[tokio::test]
async fn faulted_requests_apply_nothing() {
    let sim = start(fast()).await;
    let c = Client::sign_in(&sim).await;
    let device = iccid(50);
    sim.seed_device(&device, SimState::Inventory);

    sim.set_faults(Faults {
        p_429: 1.0,
        retry_after_secs: 7,
        ..Faults::default()
    });
    let response = c
        .http
        .post(format!("{}/api/m2m/v1/devices/actions/activate", sim.url()))
        .bearer_auth(&c.access)
        .header("VZ-M2M-Token", &c.session)
        .json(&action_body(&[(&device, "k")]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], "RateLimitExceeded");
    let (status, _) = c.get(&device).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    sim.set_faults(Faults {
        p_500: 1.0,
        ..Faults::default()
    });
    let (status, body) = c.action("activate", &[(&device, "k")]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["errorCode"], "InternalError");

    sim.set_faults(Faults {
        p_timeout: 1.0,
        timeout_ms: 3000,
        ..Faults::default()
    });
    let started = Instant::now();
    let err = c
        .http
        .post(format!("{}/api/m2m/v1/devices/actions/activate", sim.url()))
        .bearer_auth(&c.access)
        .header("VZ-M2M-Token", &c.session)
        .json(&action_body(&[(&device, "k")]))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    sim.set_faults(Faults::default());
    assert_eq!(sim.state(&device), Some(SimState::Inventory));
    let stats = sim.stats();
    assert!(stats.applied_per_device.is_empty() && stats.accepted_calls_per_device.is_empty());
    assert_eq!((stats.served_429, stats.served_500, stats.timeouts), (2, 1, 1));
    assert_eq!(stats.rate_limited, 0);
    // The same key after the faults is a first call, applied once.
    assert_eq!(c.one("activate", &device, "k").await, "ACCEPTED");
    assert_eq!(sim.stats().replays, 0);
}

#[tokio::test]
async fn a_held_request_never_blocks_shutdown() {
    let sim = start(fast()).await;
    let c = Client::sign_in(&sim).await;
    sim.set_faults(Faults {
        p_timeout: 1.0,
        timeout_ms: 600_000,
        ..Faults::default()
    });
    let request = c
        .http
        .get(format!("{}/api/m2m/v1/devices/{}", c.base, iccid(55)))
        .bearer_auth(&c.access)
        .header("VZ-M2M-Token", &c.session);
    let held = tokio::spawn(async move {
        match request.send().await {
            Ok(response) => Some((response.status(), response.bytes().await.is_ok())),
            Err(_) => None,
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    sim.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    // The held request got no answer it could read as one: no response, or a 504 whose body
    // breaks off.
    match held.await.unwrap() {
        None | Some((StatusCode::GATEWAY_TIMEOUT, false)) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_slow_answer_is_applied_then_held() {
    let sim = start(fast()).await;
    let c = Client::sign_in(&sim).await;
    let device = iccid(60);
    sim.seed_device(&device, SimState::Inventory);
    sim.set_faults(Faults {
        p_slow: 1.0,
        slow_ms: 400,
        ..Faults::default()
    });
    let call = {
        let (c, device) = (c.clone(), device.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let status = c.one("activate", &device, "slow-1").await;
            (status, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Applied before the answer: a client that gave up now would find it done.
    assert_eq!(sim.state(&device), Some(SimState::PendingActivation));
    let (status, elapsed) = call.await.unwrap();
    assert_eq!(status, "ACCEPTED");
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
}

#[tokio::test]
async fn the_rate_limit_answers_429_over_the_limit_and_the_peak_is_measured() {
    let sim = start(SimConfig {
        rate_limit_per_sec: Some(5),
        ..fast()
    })
    .await;
    let c = Client::sign_in(&sim).await;
    let device = iccid(70);
    sim.seed_device(&device, SimState::Inventory);
    let mut ok = 0;
    for _ in 0..8 {
        let response = c
            .http
            .get(format!("{}/api/m2m/v1/devices/{device}", sim.url()))
            .bearer_auth(&c.access)
            .header("VZ-M2M-Token", &c.session)
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(response.headers()["retry-after"], "1"),
            other => panic!("{other}"),
        }
    }
    // Eight requests well within a second: five admitted.
    assert_eq!(ok, 5);
    let stats = sim.stats();
    assert_eq!((stats.served_429, stats.rate_limited), (3, 3));
    assert_eq!(stats.max_requests_in_any_second, 8);

    // A rate-limited action applies nothing.
    let (status, _) = c.action("activate", &[(&device, "k")]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sim.state(&device), Some(SimState::Inventory));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(c.one("activate", &device, "k").await, "ACCEPTED");
}

#[tokio::test]
async fn the_peak_rate_is_over_a_sliding_second() {
    let sim = start(fast()).await;
    let c = Client::sign_in(&sim).await;
    let device = iccid(80);
    sim.seed_device(&device, SimState::Inventory);
    // 3 requests, a pause longer than the window, then 2: the peak is 3, not 5.
    for _ in 0..3 {
        c.get(&device).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..2 {
        c.get(&device).await;
    }
    assert_eq!(sim.stats().max_requests_in_any_second, 3);
    sim.reset_stats();
    assert_eq!(sim.stats(), SimStats::default());
}

#[tokio::test]
async fn bad_action_requests_are_refused_whole() {
    let sim = start(fast()).await;
    let c = Client::sign_in(&sim).await;
    let keys: Vec<(String, String)> = (0..101).map(|n| (iccid(1000 + n), format!("k{n}"))).collect();
    for (device, _) in &keys {
        sim.seed_device(device, SimState::Inventory);
    }
    let pairs: Vec<(&str, &str)> = keys.iter().map(|(i, k)| (i.as_str(), k.as_str())).collect();

    let (status, body) = c.action("activate", &pairs).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errorCode"], "InvalidRequest");
    let (status, body) = c.action("activate", &pairs[..100]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["results"].as_array().unwrap().len(), 100);

    let device = iccid(2000);
    let with_ids = |ids: Value| json!({ "accountName": "acct", "devices": [{ "deviceIds": ids, "clientRequestId": "k" }] });
    let bad_bodies = [
        json!({ "accountName": "acct", "devices": [] }),
        json!({ "accountName": "", "devices": [] }),
        json!({ "accountName": "a".repeat(129), "devices": action_body(&[(&device, "k")])["devices"] }),
        json!({ "accountName": "acct", "servicePlan": "p".repeat(129), "devices": action_body(&[(&device, "k")])["devices"] }),
        json!({ "devices": action_body(&[(&device, "k")])["devices"] }),
        with_ids(json!([])),
        with_ids(json!([{ "kind": "imei", "id": "490154203237518" }])),
        with_ids(json!([{ "kind": "iccid", "id": "123" }])),
        with_ids(json!([{ "kind": "iccid", "id": format!("{device}x") }])),
        with_ids(json!([{ "kind": "iccid", "id": device }, { "kind": "iccid", "id": iccid(2001) }])),
        with_ids(json!([{ "kind": "iccid", "id": device }, { "kind": "imei", "id": "9".repeat(65) }])),
        json!({ "accountName": "acct", "devices": [{ "deviceIds": [{ "kind": "iccid", "id": device }], "clientRequestId": "" }] }),
        json!({ "accountName": "acct", "devices": [{ "deviceIds": [{ "kind": "iccid", "id": device }], "clientRequestId": "k".repeat(129) }] }),
        json!({ "accountName": "acct", "devices": [{ "deviceIds": [{ "kind": "iccid", "id": device }] }] }),
    ];
    for body in &bad_bodies {
        let (status, answer) = c.action_body("add", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert_eq!(answer["errorCode"], "InvalidRequest");
    }
    assert_eq!(sim.state(&device), None);

    let raw = async |body: Vec<u8>| {
        c.http
            .post(format!("{}/api/m2m/v1/devices/actions/add", sim.url()))
            .bearer_auth(&c.access)
            .header("VZ-M2M-Token", &c.session)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(raw(b"{not json".to_vec()).await, StatusCode::BAD_REQUEST);
    assert_eq!(raw(vec![b' '; 65 * 1024]).await, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = c.action("suspend", &[(&device, "k")]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errorCode"], "NotFound");
    // An unauthenticated caller is told 401 whatever its body.
    let response = reqwest::Client::new()
        .post(format!("{}/api/m2m/v1/devices/actions/add", sim.url()))
        .json(&json!({ "devices": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let stats = sim.stats();
    assert_eq!(stats.applied_per_device.len(), 100);
}

#[tokio::test]
async fn auto_provisioning_creates_unknown_luhn_valid_devices() {
    let sim = start(SimConfig {
        auto_provision: true,
        ..fast()
    })
    .await;
    let c = Client::sign_in(&sim).await;
    let (seen, activated, invalid) = (iccid(90), iccid(91), bad_luhn_iccid(92));
    let (status, body) = c.get(&seen).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "inventory");
    assert_eq!(c.one("activate", &activated, "k").await, "ACCEPTED");
    assert_eq!(sim.state(&activated), Some(SimState::PendingActivation));
    let (status, _) = c.get(&invalid).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(c.one("activate", &invalid, "k").await, "DeviceNotFound");
    // Only GET and activate provision.
    assert_eq!(c.one("deactivate", &iccid(93), "k").await, "DeviceNotFound");
    assert_eq!(sim.state(&iccid(93)), None);
}

#[tokio::test]
async fn the_same_seed_draws_the_same_faults() {
    let draws = async |seed: u64| {
        let sim = start(SimConfig { seed, ..fast() }).await;
        let c = Client::sign_in(&sim).await;
        sim.set_faults(Faults {
            p_429: 0.3,
            p_500: 0.3,
            ..Faults::default()
        });
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(c.get(&iccid(1)).await.0.as_u16());
        }
        statuses
    };
    let first = draws(7).await;
    assert_eq!(first, draws(7).await);
    assert_ne!(first, draws(8).await);
    assert!(first.contains(&429) && first.contains(&500) && first.contains(&404));
}

#[tokio::test]
async fn the_admin_routes_drive_the_simulator() {
    let sim = start(fast()).await;
    let c = Client::sign_in(&sim).await;
    let http = reqwest::Client::new();
    let admin = |path: &str| format!("{}/_sim/{path}", sim.url());
    let post = async |path: &str, body: Value| {
        let response = http.post(admin(path)).json(&body).send().await.unwrap();
        (
            response.status(),
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let device = iccid(100);

    let (status, body) = post(
        "devices",
        json!({ "devices": [{ "iccid": device, "state": "active" }] }),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "seeded": 1 })));
    let seeded: Value = http
        .get(admin(&format!("devices/{device}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seeded["state"], "active");
    assert!(seeded["msisdn"].is_string());
    for bad in [
        json!({ "devices": [{ "iccid": "1", "state": "active" }] }),
        json!({ "devices": [{ "iccid": device, "state": "suspended" }] }),
        json!({ "devices": (0..10_001).map(|n| json!({ "iccid": iccid(n), "state": "active" })).collect::<Vec<_>>() }),
    ] {
        assert_eq!(post("devices", bad).await.0, StatusCode::BAD_REQUEST);
    }
    let missing = http
        .get(admin(&format!("devices/{}", iccid(101))))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let (status, body) = post("faults", json!({ "p_500": 1.0 })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["p_500"], 1.0);
    assert_eq!(body["retry_after_secs"], 1);
    assert_eq!(c.get(&device).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    for bad in [
        json!({ "p_500": 1.5 }),
        json!({ "p_429": -0.1 }),
        json!({ "timeout_ms": 600_001 }),
        json!({ "reject_iccids": ["12"] }),
        json!({ "p_501": 0.5 }),
    ] {
        assert_eq!(post("faults", bad).await.0, StatusCode::BAD_REQUEST);
    }
    assert_eq!(c.get(&device).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(post("faults", json!({})).await.0, StatusCode::OK);
    assert_eq!(c.get(&device).await.0, StatusCode::OK);

    let (status, body) = post("expire-tokens", json!({})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "expired": 2 })));
    assert_eq!(c.get(&device).await.0, StatusCode::UNAUTHORIZED);

    let stats: SimStats = http
        .get(admin("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats, sim.stats());
    assert_eq!(
        (stats.served_500, stats.unauthorized, stats.get_requests),
        (2, 1, 4)
    );
    assert_eq!(post("reset-stats", json!({})).await.0, StatusCode::NO_CONTENT);
    assert_eq!(sim.stats(), SimStats::default());
}
