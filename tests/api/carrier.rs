//! Carrier actions (issue 14) against the carrier simulator: exact counts under faults,
//! exactly one applied call per device whatever fails or dies, the shared rate limit and
//! token, verification by polling, and the audit trail.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleetload::auth::Permission;
use fleetload::carrier_sim::{CarrierSim, Faults, SimConfig, SimState};
use sea_orm::{EntityTrait, Set};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_backends;
use crate::operability::{Process, free_port, wait_ready};
use crate::processes::{WorkerProcess, database_url, wait_until_finished};

/// The carrier secret key of these tests' apps and of the worker processes they start, so
/// each opens what another sealed.
pub const CARRIER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub const CLIENT_SECRET: &str = "s3cr3t-carrier-client-secret-do-not-log";

/// `n` distinct valid 20-digit ICCIDs from `seed`.
pub fn iccids(seed: u64, n: usize) -> Vec<String> {
    (0..n as u64)
        .map(|i| {
            let body = format!("8901{:015}", seed * 100_000_000 + i);
            let check = fleetload::domain::device_uid::luhn_check_digit(&body);
            format!("{body}{check}")
        })
        .collect()
}

pub fn admin(app: &TestApp) -> String {
    app.token_with(
        "root",
        "demo",
        &[Permission::Read, Permission::Update, Permission::Admin],
    )
}

/// The shared key, and fast verification: the first poll right after acceptance.
pub fn quick(s: &mut fleetload::config::Settings) {
    s.carrier_secret_key = Some(CARRIER_KEY.to_owned().into());
    s.carrier_verify_delay_ms = 0;
    s.carrier_verify_interval_ms = 50;
    s.carrier_verify_timeout_secs = 30;
    s.carrier_call_timeout_ms = 2_000;
    s.carrier_max_attempts = 12;
}

/// A carrier account `sim` of `demo` at the simulator and an action `activate-lines`
/// (CARRIER_STATUS → `target`) on it.
pub async fn carrier_action(app: &TestApp, sim_url: &str, rate: u32, batch: u32, target: &str) {
    let body = app
        .gql(
            Some(&admin(app)),
            "mutation($i: CreateCarrierAccountInput!) { createCarrierAccount(input: $i) { id hasClientSecret } }",
            json!({"i": {
                "tenantId": "demo", "id": "sim", "name": "Simulated carrier", "baseUrl": sim_url,
                "clientId": "demo-client", "clientSecret": CLIENT_SECRET, "accountNumber": "0000123456-00001",
                "rateLimitPerSecond": rate, "batchSize": batch
            }}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let body = app
        .gql(
            Some(&admin(app)),
            "mutation($s: CarrierStatus!) { createAction(tenantId: \"demo\", id: \"activate-lines\", name: \"Lines\", \
             kind: CARRIER_STATUS, targetCarrierStatus: $s, carrierAccountId: \"sim\") { id kind targetCarrierStatus carrierAccountId } }",
            json!({"s": target}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
}

pub fn sim_config() -> SimConfig {
    SimConfig {
        clients: vec![("demo-client".into(), CLIENT_SECRET.into())],
        activation_delay: Duration::ZERO,
        ..SimConfig::default()
    }
}

/// Smartphones of `tenant` with these ICCIDs, at `status` on our side (None: NEW).
pub async fn devices_with_lines(app: &TestApp, tenant: &str, iccids: &[String], status: Option<&str>) {
    let now = chrono::Utc::now();
    let status = status.map(|s| {
        <entity::carrier_status::CarrierStatus as sea_orm::ActiveEnum>::try_from_value(&s.to_owned())
            .expect("a status")
    });
    for lines in iccids.chunks(500) {
        let models = lines.iter().map(|iccid| entity::device::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            device_type: Set(1),
            uid: Set(imei_of(iccid)),
            state: Set(entity::device::state::READY_FOR_USE),
            service_type: Set(2),
            iccid: Set(Some(iccid.clone())),
            carrier_status: Set(status),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        });
        entity::prelude::Device::insert_many(models)
            .exec_without_returning(&app.state.db)
            .await
            .unwrap();
    }
}

/// A distinct IMEI for each ICCID: its last 14 digits and the check digit.
fn imei_of(iccid: &str) -> String {
    let body = &iccid[iccid.len() - 15..iccid.len() - 1];
    format!("{body}{}", fleetload::domain::device_uid::luhn_check_digit(body))
}

pub async fn upload_lines(app: &TestApp, iccids: &[String]) -> String {
    app.upload_csv(
        &app.alice(),
        json!({"assignActionId": "activate-lines", "rowCount": iccids.len()}),
        csv("iccid", iccids),
    )
    .await
}

/// Runs the chunks, then the carrier executor, until the upload ends (bounded).
pub async fn run_to_end(app: &TestApp, id: &str, limit: Duration) -> Value {
    app.drain().await;
    let executor = app.pipeline.carrier().expect("a carrier executor");
    let started = Instant::now();
    loop {
        let state = app.upload_state(&app.alice(), "demo", id).await;
        if ["COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED"]
            .contains(&state["status"].as_str().unwrap())
        {
            app.build_reports().await;
            return state;
        }
        assert!(started.elapsed() < limit, "not finished after {limit:?}: {state}");
        if !executor.step().await.expect("carrier step") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn codes(results: &[(i32, String, String, Option<String>)]) -> std::collections::BTreeMap<String, usize> {
    let mut by = std::collections::BTreeMap::new();
    for r in results {
        *by.entry(r.3.clone().unwrap_or_else(|| r.2.clone())).or_default() += 1;
    }
    by
}

/// Every device the carrier accepted was applied once: none twice, no replay.
fn assert_once(sim: &CarrierSim, accepted: &[String]) {
    let stats = sim.stats();
    for iccid in accepted {
        assert_eq!(
            stats.applied_per_device.get(iccid),
            Some(&1),
            "{iccid} applied {:?} times",
            stats.applied_per_device.get(iccid)
        );
        assert_eq!(
            stats.accepted_calls_per_device.get(iccid),
            Some(&1),
            "{iccid} sent again after it was accepted"
        );
    }
    assert!(
        stats.applied_per_device.values().all(|&n| n <= 1),
        "a device applied twice"
    );
    assert_eq!(
        stats.replays, 0,
        "a row was sent again after the carrier applied it"
    );
}

on_both_backends! {
    async fn a_carrier_upload_activates_each_line_once_and_verifies_it(app: TestApp) {
        // Rebuilt with quick verification: the harness's app has the defaults.
        let app = respawn_with(app, quick).await;
        let sim = CarrierSim::start(sim_config()).await.unwrap();
        let lines = iccids(1, 250);
        for l in &lines {
            sim.seed_device(l, SimState::Inventory);
        }
        devices_with_lines(&app, "demo", &lines, Some("INVENTORY")).await;
        carrier_action(&app, sim.url(), 1000, 100, "ACTIVE").await;

        let id = upload_lines(&app, &lines).await;
        let upload = run_to_end(&app, &id, Duration::from_secs(120)).await;

        assert_eq!(upload["status"], "COMPLETED", "{upload} {:?} {}", codes(&app.results(&id).await), first_message(&app, &id).await);
        assert_eq!((upload["processedRows"].clone(), upload["succeeded"].clone()), (json!(250), json!(250)));
        assert_once(&sim, &lines);
        // Three action calls of at most 100 lines, one login.
        let stats = sim.stats();
        assert_eq!((stats.tokens_issued, stats.sessions_issued), (1, 1));
        let device = sim.device(&lines[0]).unwrap();
        assert_eq!(device.state, SimState::Active);
        let stored = entity::prelude::Device::find()
            .all(&app.state.db)
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.iccid.as_deref() == Some(lines[0].as_str()))
            .unwrap();
        assert_eq!(stored.carrier_status, Some(entity::carrier_status::CarrierStatus::Active));
        assert_eq!(stored.msisdn, device.msisdn);
        assert!(stored.ip_address.is_some());

        // The audit trail: a login, three batches, a status poll (or more) per line.
        let by_operation = calls_by_operation(&app).await;
        assert_eq!(
            (by_operation["TOKEN"], by_operation["SESSION"], by_operation["ACTIVATE"]),
            (1, 1, 3),
            "{by_operation:?}"
        );
        assert!(by_operation["STATUS"] >= 250, "{by_operation:?}");
        let calls = app
            .gql(
                Some(&app.alice()),
                "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { awaitingCarrier carrierCalls(first: 5) { totalCount edges { node { operation rowNumbers httpStatus outcome request response durationMs } } pageInfo { hasNextPage } } } }",
                json!({"id": id}),
            )
            .await;
        let upload = &calls["data"]["upload"];
        assert_eq!(upload["awaitingCarrier"], 0, "{calls}");
        assert_eq!(
            upload["carrierCalls"]["totalCount"],
            by_operation.values().sum::<i64>(),
            "{calls}"
        );
        let nodes = upload["carrierCalls"]["edges"].as_array().unwrap();
        let ops: Vec<&str> = nodes.iter().map(|e| e["node"]["operation"].as_str().unwrap()).collect();
        assert_eq!(ops[..3], ["TOKEN", "SESSION", "ACTIVATE"], "{calls}");
        assert_eq!(nodes[2]["node"]["rowNumbers"].as_array().unwrap().len(), 100);
        assert_eq!(nodes[2]["node"]["httpStatus"], 200);
        assert!(!calls.to_string().contains(CLIENT_SECRET));
    }

    async fn invalid_transitions_and_unknown_lines_are_decided_without_any_call(app: TestApp) {
        let app = respawn_with(app, quick).await;
        let sim = CarrierSim::start(sim_config()).await.unwrap();
        let lines = iccids(2, 4);
        // ACTIVE → ACTIVE and NEW → ACTIVE are not moves of the matrix; acme's line is not ours.
        devices_with_lines(&app, "demo", &lines[..1], Some("ACTIVE")).await;
        devices_with_lines(&app, "demo", &lines[1..2], None).await;
        devices_with_lines(&app, "acme", &lines[2..3], Some("INVENTORY")).await;
        carrier_action(&app, sim.url(), 100, 10, "ACTIVE").await;
        let mut rows = lines.clone();
        // The last line with its check digit changed: not Luhn-valid.
        let (body, check) = lines[3].split_at(19);
        rows.push(format!("{body}{}", (check.parse::<u8>().unwrap() + 1) % 10));
        rows.push(lines[0].clone()); // a repeat

        let id = upload_lines(&app, &rows).await;
        let upload = run_to_end(&app, &id, Duration::from_secs(30)).await;

        assert_eq!(upload["status"], "COMPLETED_WITH_ERRORS", "{upload}");
        let results = app.results(&id).await;
        let got: Vec<Option<&str>> = results.iter().map(|r| r.3.as_deref()).collect();
        assert_eq!(
            got,
            [
                Some("INVALID_STATUS_TRANSITION"),
                Some("INVALID_STATUS_TRANSITION"),
                Some("DEVICE_OWNED_BY_OTHER_TENANT"),
                Some("DEVICE_NOT_FOUND"),
                Some("INVALID_DEVICE_UID"),
                Some("DUPLICATE_IN_FILE"),
            ]
        );
        assert_eq!(sim.stats().requests_total, 0, "a row decided by the rules reached the carrier");
    }

    async fn a_new_sim_is_added_at_the_carrier_and_attached_to_the_smartphone_of_its_imei(app: TestApp) {
        let app = respawn_with(app, quick).await;
        let sim = CarrierSim::start(sim_config()).await.unwrap();
        // Three smartphones without SIMs; a fourth already has one.
        let phones = imeis(9, 4);
        let now = chrono::Utc::now();
        for (i, imei) in phones.iter().enumerate() {
            entity::prelude::Device::insert(entity::device::ActiveModel {
                tenant_id: Set("demo".into()),
                device_type: Set(1),
                uid: Set(imei.clone()),
                state: Set(entity::device::state::READY_FOR_USE),
                service_type: Set(2),
                iccid: Set((i == 3).then(|| iccids(10, 1).remove(0))),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            })
            .exec_without_returning(&app.state.db)
            .await
            .unwrap();
        }
        carrier_action(&app, sim.url(), 100, 10, "INVENTORY").await;
        let sims = iccids(11, 5);
        let file = format!(
            "iccid,imei\n{},{}\n{},{}\n{},{}\n{},{}\n{},\n",
            sims[0], phones[0], sims[1], phones[1], sims[2], phones[1], sims[3], phones[3], sims[4]
        );

        let id = app
            .upload_csv(&app.alice(), json!({"assignActionId": "activate-lines", "rowCount": 5}), file)
            .await;
        let upload = run_to_end(&app, &id, Duration::from_secs(60)).await;

        assert_eq!(upload["status"], "COMPLETED_WITH_ERRORS", "{upload}");
        let results = app.results(&id).await;
        let got: Vec<Option<&str>> = results.iter().map(|r| r.3.as_deref()).collect();
        // Rows 1 and 2 take phones 0 and 1; row 3 names phone 1 again with another SIM; phone 3
        // has another SIM; row 5 has no IMEI to find a device by.
        assert_eq!(
            got,
            [None, None, Some("DEVICE_NOT_FOUND"), Some("DEVICE_NOT_FOUND"), Some("DEVICE_NOT_FOUND")]
        );
        let stored = entity::prelude::Device::find().all(&app.state.db).await.unwrap();
        for (phone, sim_id) in [(&phones[0], &sims[0]), (&phones[1], &sims[1])] {
            let device = stored.iter().find(|d| &d.uid == phone).unwrap();
            assert_eq!(device.iccid.as_ref(), Some(sim_id));
            assert_eq!(device.carrier_status, Some(entity::carrier_status::CarrierStatus::Inventory));
        }
        assert!(stored.iter().find(|d| d.uid == phones[2]).unwrap().iccid.is_none());
        assert_once(&sim, &sims[..2]);
        assert_eq!(sim.state(&sims[0]), Some(SimState::Inventory));
    }

    async fn each_call_carries_one_service_plan_and_a_bad_plan_fails_its_row(app: TestApp) {
        let app = respawn_with(app, quick).await;
        let sim = CarrierSim::start(sim_config()).await.unwrap();
        let lines = iccids(12, 6);
        for l in &lines {
            sim.seed_device(l, SimState::Inventory);
        }
        devices_with_lines(&app, "demo", &lines, Some("INVENTORY")).await;
        carrier_action(&app, sim.url(), 100, 10, "ACTIVE").await;
        let plans = ["m2m-5gb", "", "m2m-5gb", "iot-basic", &"x".repeat(65), ""];
        let mut file = String::from("iccid,servicePlan\n");
        for (line, plan) in lines.iter().zip(plans) {
            file.push_str(&format!("{line},{plan}\n"));
        }

        let id = app
            .upload_csv(&app.alice(), json!({"assignActionId": "activate-lines", "rowCount": 6}), file)
            .await;
        let upload = run_to_end(&app, &id, Duration::from_secs(60)).await;

        assert_eq!(upload["status"], "COMPLETED_WITH_ERRORS", "{upload}");
        let results = app.results(&id).await;
        let got: Vec<Option<&str>> = results.iter().map(|r| r.3.as_deref()).collect();
        assert_eq!(got, [None, None, None, None, Some("INVALID_SERVICE_PLAN"), None]);
        // One ACTIVATE per plan (and one without): never two plans in one call.
        let body = app
            .gql(
                Some(&app.alice()),
                "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { carrierCalls(first: 100) { edges { node { operation request rowNumbers } } } } }",
                json!({"id": id}),
            )
            .await;
        let mut activations: Vec<(String, Vec<i64>)> = body["data"]["upload"]["carrierCalls"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["node"])
            .filter(|n| n["operation"] == "ACTIVATE")
            .map(|n| {
                let request = n["request"].as_str().unwrap();
                let plan = request.split(" on plan ").nth(1).map_or("", |p| p.split(':').next().unwrap());
                let rows = n["rowNumbers"].as_array().unwrap().iter().map(|r| r.as_i64().unwrap()).collect();
                (plan.to_owned(), rows)
            })
            .collect();
        activations.sort();
        assert_eq!(
            activations,
            [("".to_owned(), vec![2, 6]), ("iot-basic".to_owned(), vec![4]), ("m2m-5gb".to_owned(), vec![1, 3])]
        );
        assert_once(&sim, &[&lines[..4], &lines[5..]].concat());
    }

    async fn lines_not_confirmed_in_time_fail_with_a_verification_timeout(app: TestApp) {
        let app = respawn_with(app, |s| {
            quick(s);
            s.carrier_verify_timeout_secs = 1;
        })
        .await;
        let sim = CarrierSim::start(SimConfig {
            activation_delay: Duration::from_secs(3600),
            ..sim_config()
        })
        .await
        .unwrap();
        let lines = iccids(3, 5);
        for l in &lines {
            sim.seed_device(l, SimState::Inventory);
        }
        devices_with_lines(&app, "demo", &lines, Some("INVENTORY")).await;
        carrier_action(&app, sim.url(), 100, 10, "ACTIVE").await;

        let id = upload_lines(&app, &lines).await;
        let upload = run_to_end(&app, &id, Duration::from_secs(30)).await;

        assert_eq!(upload["status"], "COMPLETED_WITH_ERRORS", "{upload}");
        let results = app.results(&id).await;
        assert_eq!(codes(&results).get("CARRIER_VERIFICATION_TIMEOUT"), Some(&5), "{results:?}");
        assert_once(&sim, &lines);
        // Our side still says what was last confirmed.
        let stored = entity::prelude::Device::find().all(&app.state.db).await.unwrap();
        assert!(stored.iter().all(|d| d.carrier_status == Some(entity::carrier_status::CarrierStatus::Inventory)));
    }

    async fn tokens_expiring_mid_upload_are_refreshed_once_and_no_row_fails(app: TestApp) {
        let app = respawn_with(app, quick).await;
        let sim = CarrierSim::start(sim_config()).await.unwrap();
        let lines = iccids(4, 60);
        for l in &lines {
            sim.seed_device(l, SimState::Inventory);
        }
        devices_with_lines(&app, "demo", &lines, Some("INVENTORY")).await;
        carrier_action(&app, sim.url(), 1000, 20, "ACTIVE").await;
        let id = upload_lines(&app, &lines).await;
        app.drain().await;
        let executor = app.pipeline.carrier().unwrap();
        // The first batch goes out on the first tokens; then the carrier expires them.
        assert!(executor.step().await.unwrap());
        assert_eq!(sim.stats().tokens_issued, 1);
        sim.expire_tokens();

        let upload = run_to_end(&app, &id, Duration::from_secs(60)).await;

        assert_eq!(upload["status"], "COMPLETED", "{upload}");
        assert_eq!(upload["succeeded"], 60);
        let stats = sim.stats();
        assert_eq!((stats.tokens_issued, stats.sessions_issued), (2, 2), "one refresh: {stats:?}");
        assert_once(&sim, &lines);
    }

    async fn refused_credentials_fail_the_upload_with_a_reason_and_no_row_succeeds(app: TestApp) {
        let app = respawn_with(app, quick).await;
        let sim = CarrierSim::start(SimConfig {
            clients: vec![("demo-client".into(), "another-secret".into())],
            ..sim_config()
        })
        .await
        .unwrap();
        let lines = iccids(5, 3);
        devices_with_lines(&app, "demo", &lines, Some("INVENTORY")).await;
        carrier_action(&app, sim.url(), 100, 10, "ACTIVE").await;

        let id = upload_lines(&app, &lines).await;
        let upload = run_to_end(&app, &id, Duration::from_secs(30)).await;

        assert_eq!(upload["status"], "FAILED", "{upload}");
        assert!(
            upload["failureReason"].as_str().unwrap().contains("refused the account's credentials"),
            "{upload}"
        );
        assert_eq!(upload["succeeded"], 0);
        assert!(sim.stats().applied_per_device.is_empty());
    }

    async fn another_customers_carrier_account_cannot_be_used(app: TestApp) {
        let app = respawn_with(app, quick).await;
        let sim = CarrierSim::start(sim_config()).await.unwrap();
        carrier_action(&app, sim.url(), 10, 10, "ACTIVE").await;
        let acme_admin = app.token_with("root", "acme", &[Permission::Read, Permission::Update, Permission::Admin]);
        let body = app
            .gql(
                Some(&acme_admin),
                "mutation { createAction(tenantId: \"acme\", name: \"x\", kind: CARRIER_STATUS, targetCarrierStatus: ACTIVE, carrierAccountId: \"sim\") { id } }",
                json!({}),
            )
            .await;
        assert_eq!(error_code(&body), "CARRIER_ACCOUNT_NOT_FOUND", "{body}");
        // bob cannot name demo's carrier action either.
        let body = app
            .gql(
                Some(&app.bob()),
                PREPARE,
                json!({"tenantId": "acme", "assignActionId": "activate-lines", "rowCount": 1, "deviceType": 1}),
            )
            .await;
        assert_eq!(error_code(&body), "ACTION_NOT_FOUND", "{body}");
        // A carrier action needs its target and account; other kinds take neither.
        let body = app
            .gql(
                Some(&admin(&app)),
                "mutation { createAction(tenantId: \"demo\", name: \"x\", kind: CARRIER_STATUS, carrierAccountId: \"sim\") { id } }",
                json!({}),
            )
            .await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        let body = app
            .gql(
                Some(&admin(&app)),
                "mutation { createAction(tenantId: \"demo\", name: \"x\", kind: DEREGISTER, targetCarrierStatus: ACTIVE) { id } }",
                json!({}),
            )
            .await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        // An account an action names cannot be deleted under it.
        let body = app
            .gql(Some(&admin(&app)), "mutation { deleteCarrierAccount(id: \"sim\") }", json!({}))
            .await;
        assert_eq!(error_code(&body), "IN_USE", "{body}");
        let body = app
            .gql(
                Some(&app.alice()),
                PREPARE,
                json!({"tenantId": "demo", "assignActionId": "activate-lines", "rowCount": 1, "deviceType": 1}),
            )
            .await;
        assert!(body.get("errors").is_none(), "{body}");
    }
}

/// The same app's database and data dir, served again with `configure` applied.
async fn respawn_with(app: TestApp, configure: impl FnOnce(&mut fleetload::config::Settings)) -> TestApp {
    let mut parts = app.into_parts();
    configure(&mut parts.settings);
    respawn(parts).await
}

/// The acceptance run of issue 14: 10,000 lines → ACTIVE through two `fleetload worker`
/// processes, 10 % of calls answered 429 or 500 and 1 % of devices rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_lines_through_two_workers_under_faults_are_exact_and_within_the_rate() {
    const N: usize = 10_000;
    const RATE: u32 = 400;
    let app = spawn_app_with(Backend::Postgres, quick).await;
    let sim = CarrierSim::start(SimConfig {
        seed: 14,
        ..sim_config()
    })
    .await
    .unwrap();
    let lines = iccids(6, N);
    for l in &lines {
        sim.seed_device(l, SimState::Inventory);
    }
    let rejected: HashSet<String> = lines.iter().step_by(100).cloned().collect();
    sim.set_faults(Faults {
        p_429: 0.05,
        retry_after_secs: 1,
        p_500: 0.05,
        reject_iccids: rejected.clone(),
        ..Faults::default()
    });
    devices_with_lines(&app, "demo", &lines, Some("INVENTORY")).await;
    carrier_action(&app, sim.url(), RATE, 100, "ACTIVE").await;
    let id = upload_lines(&app, &lines).await;

    let env = carrier_worker_env(&app);
    let started = Instant::now();
    let _workers = [WorkerProcess::spawn(&env), WorkerProcess::spawn(&env)];
    let upload = wait_until_finished(&app, &id, Duration::from_secs(300)).await;
    let stats = sim.stats();
    println!(
        "{N} lines through 2 worker processes at {RATE}/s: {:.1} s; carrier calls {:?}; \
         429s {}, 500s {}; most requests in one second {}",
        started.elapsed().as_secs_f64(),
        calls_by_operation(&app).await,
        stats.served_429,
        stats.served_500,
        stats.max_requests_in_any_second
    );

    assert_eq!(upload["status"], "COMPLETED_WITH_ERRORS", "{upload}");
    assert_eq!(
        (
            upload["processedRows"].clone(),
            upload["succeeded"].clone(),
            upload["failed"].clone()
        ),
        (json!(N), json!(N - rejected.len()), json!(rejected.len()))
    );
    let results = app.results(&id).await;
    assert_eq!(results.len(), N);
    assert!(results.iter().enumerate().all(|(i, r)| r.0 == i as i32 + 1));
    for r in &results {
        let expected = if rejected.contains(&r.1) {
            Some("CARRIER_REJECTED")
        } else {
            None
        };
        assert_eq!(r.3.as_deref(), expected, "{r:?}");
    }
    let accepted: Vec<String> = lines.iter().filter(|l| !rejected.contains(*l)).cloned().collect();
    assert_once(&sim, &accepted);
    let stats = sim.stats();
    assert!(
        stats.served_429 > 0 && stats.served_500 > 0,
        "the faults did not fire: {stats:?}"
    );
    assert!(
        stats.max_requests_in_any_second <= RATE,
        "{} requests in one second, over the limit of {RATE}",
        stats.max_requests_in_any_second
    );
}

/// SIGKILL between the committed intent and the carrier's answer, then between the answer and
/// the result: the survivor asks before it sends, and no line is activated twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_killed_mid_call_and_mid_verification_activate_no_line_twice() {
    let app = spawn_app_with(Backend::Postgres, quick).await;
    let sim = CarrierSim::start(SimConfig {
        activation_delay: Duration::from_secs(4),
        ..sim_config()
    })
    .await
    .unwrap();
    let lines = iccids(7, 300);
    for l in &lines {
        sim.seed_device(l, SimState::Inventory);
    }
    // Every call is applied, then answered only after 3 s: a worker killed meanwhile never
    // learns that its batch went through.
    sim.set_faults(Faults {
        p_slow: 1.0,
        slow_ms: 3_000,
        ..Faults::default()
    });
    devices_with_lines(&app, "demo", &lines, Some("INVENTORY")).await;
    carrier_action(&app, sim.url(), 1000, 100, "ACTIVE").await;
    let id = upload_lines(&app, &lines).await;
    app.drain().await;
    let env = carrier_worker_env(&app);

    // 1. Killed while its call is in flight (the intent committed, the answer not yet read).
    let mut doomed = WorkerProcess::spawn(&env);
    wait_for(
        || sim.stats().applied_per_device.len() >= 100,
        "a batch applied at the carrier",
    )
    .await;
    doomed.kill();
    let unsure = intents_in(&app, "SENDING").await;
    assert!(unsure > 0, "no call was in flight when the worker died");

    // 2. The next worker sends the rest, then is killed while lines are being verified.
    sim.set_faults(Faults::default());
    let mut second = WorkerProcess::spawn(&env);
    wait_for_async(&app, "VERIFYING").await;
    second.kill();

    let _survivor = WorkerProcess::spawn(&env);
    let upload = wait_until_finished(&app, &id, Duration::from_secs(120)).await;

    assert_eq!(upload["status"], "COMPLETED", "{upload}");
    assert_eq!(upload["succeeded"], 300, "{upload}");
    assert_eq!(app.results(&id).await.len(), 300);
    assert_once(&sim, &lines);
}

/// The client secret never appears in an API answer or a log line: a real `fleetload serve`
/// process, logging at debug level to a file, takes the account, runs a carrier upload
/// (logins included) and answers every read of the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_secret_never_appears_in_answers_or_logs() {
    let app = spawn_app_with(Backend::Postgres, quick).await;
    let sim = CarrierSim::start(sim_config()).await.unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log_path = app.data_dir.path().join("serve.log");
    let mut env = carrier_worker_env(&app);
    env.push(("FLEETLOAD_LISTEN", format!("127.0.0.1:{port}")));
    env.push(("RUST_LOG", "debug".into()));
    let server = Process::spawn("serve", &env, &log_path);
    let http = reqwest::Client::new();
    wait_ready(&http, &format!("{url}/healthz"), &server).await;
    let gql = |token: String, query: &'static str, variables: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(format!("{url}/graphql"))
                .bearer_auth(token)
                .json(&json!({"query": query, "variables": variables}))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let mut answers = vec![
        gql(
            admin(&app),
            "mutation($i: CreateCarrierAccountInput!) { createCarrierAccount(input: $i) { id name baseUrl clientId hasClientSecret } }",
            json!({"i": {"tenantId": "demo", "id": "sim", "name": "Sim", "baseUrl": sim.url(), "clientId": "demo-client",
                         "clientSecret": CLIENT_SECRET, "accountNumber": "A-1", "rateLimitPerSecond": 100, "batchSize": 10}}),
        )
        .await,
        gql(
            admin(&app),
            "mutation($i: UpdateCarrierAccountInput!) { updateCarrierAccount(input: $i) { id hasClientSecret } }",
            json!({"i": {"id": "sim", "clientSecret": CLIENT_SECRET}}),
        )
        .await,
        gql(
            admin(&app),
            "{ carrierAccounts(tenantId: \"demo\") { id name baseUrl clientId accountNumber hasClientSecret } }",
            json!({}),
        )
        .await,
        gql(
            admin(&app),
            "mutation { createAction(tenantId: \"demo\", id: \"activate-lines\", name: \"L\", kind: CARRIER_STATUS, targetCarrierStatus: ACTIVE, carrierAccountId: \"sim\") { id } }",
            json!({}),
        )
        .await,
    ];
    let lines = iccids(8, 20);
    for l in &lines {
        sim.seed_device(l, SimState::Inventory);
    }
    devices_with_lines(&app, "demo", &lines, Some("INVENTORY")).await;
    let prepared: Value = serde_json::from_str(
        &gql(
            app.alice(),
            "mutation { prepareBatchUpload(tenantId: \"demo\", assignActionId: \"activate-lines\", rowCount: 20, deviceType: 1) { uploadId fileUpload { url fields expiresAt } } }",
            json!({}),
        )
        .await,
    )
    .unwrap();
    let payload = &prepared["data"]["prepareBatchUpload"];
    let id = payload["uploadId"]
        .as_str()
        .unwrap_or_else(|| panic!("{prepared}"))
        .to_owned();
    assert!(
        post_form(&http, &payload["fileUpload"], csv("iccid", &lines))
            .await
            .status()
            .is_success()
    );
    answers.push(
        gql(
            app.alice(),
            "mutation($id: String!) { finalizeBatchUpload(tenantId: \"demo\", uploadId: $id) }",
            json!({"id": id}),
        )
        .await,
    );
    let upload = wait_until_finished(&app, &id, Duration::from_secs(60)).await;
    assert_eq!(upload["status"], "COMPLETED", "{upload}");
    answers.push(
        gql(
            app.alice(),
            "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { carrierCalls(first: 100) { edges { node { operation request response } } } } }",
            json!({"id": id}),
        )
        .await,
    );
    // Stopped (killed and waited for) before its log is read whole.
    drop(server);

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("carrier tokens refreshed"),
        "the server did not log the carrier work: {logs}"
    );
    for answer in &answers {
        assert!(
            !answer.contains(CLIENT_SECRET),
            "an answer has the secret: {answer}"
        );
        assert!(!answer.contains("\"errors\""), "{answer}");
    }
    assert!(!logs.contains(CLIENT_SECRET), "a log line has the secret");
}

async fn first_message(app: &TestApp, id: &str) -> Value {
    app.gql(
        Some(&app.alice()),
        "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { results(first: 1) { edges { node { message } } } } }",
        json!({"id": id}),
    )
    .await
}

async fn calls_by_operation(app: &TestApp) -> std::collections::HashMap<String, i64> {
    use sea_orm::ConnectionTrait;
    let rows = app
        .state
        .db
        .query_all(sea_orm::Statement::from_string(
            app.state.db.get_database_backend(),
            "SELECT operation, COUNT(*) AS n FROM carrier_calls GROUP BY operation",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.try_get("", "operation").unwrap(), r.try_get("", "n").unwrap()))
        .collect()
}

async fn intents_in(app: &TestApp, state: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let row = app
        .state
        .db
        .query_one(sea_orm::Statement::from_sql_and_values(
            app.state.db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM carrier_intents WHERE state = $1",
            [state.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(60), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_async(app: &TestApp, state: &str) {
    let started = Instant::now();
    while intents_in(app, state).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no intent reached {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn carrier_worker_env(app: &TestApp) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url(app)),
        ("FLEETLOAD_DATA_DIR", app.data_dir.path().display().to_string()),
        ("FLEETLOAD_WORKERS", "1".to_owned()),
        ("FLEETLOAD_CARRIER_SECRET_KEY", CARRIER_KEY.to_owned()),
        ("FLEETLOAD_CARRIER_VERIFY_DELAY_MS", "0".to_owned()),
        ("FLEETLOAD_CARRIER_VERIFY_INTERVAL_MS", "100".to_owned()),
        ("FLEETLOAD_CARRIER_CALL_TIMEOUT_MS", "1500".to_owned()),
        ("FLEETLOAD_CARRIER_MAX_ATTEMPTS", "12".to_owned()),
    ]
}
