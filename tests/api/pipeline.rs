//! The processing pipeline end to end on both databases: a file finalized through the API
//! is processed to the end with exactly one result per row, whatever the queue does.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use entity::device::{self, state};
use fleetload::pipeline::Pipeline;
use fleetload::queue::{Delivery, JobPayload, Queue, QueueError};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};
use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

/// Inserts devices straight into the database (the state the platform already holds).
pub async fn seed_devices(
    app: &TestApp,
    tenant: &str,
    keys: &[String],
    st: i16,
    service_type: i32,
    workflow: Option<&str>,
) {
    let now = Utc::now();
    for slice in keys.chunks(1000) {
        let models = slice.iter().map(|k| device::ActiveModel {
            tenant_id: Set(tenant.into()),
            device_type: Set(1),
            uid: Set(k.clone()),
            uid2: Set(None),
            state: Set(st),
            service_type: Set(service_type),
            brand_id: Set(None),
            workflow_id: Set(workflow.map(str::to_owned)),
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

async fn device_of(app: &TestApp, key: &str) -> device::Model {
    entity::prelude::Device::find()
        .filter(device::Column::Uid.eq(key))
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap()
}

fn codes(results: &[(i32, String, String, Option<String>)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, _, outcome, code) in results {
        *counts
            .entry(code.clone().unwrap_or_else(|| outcome.clone()))
            .or_insert(0) += 1;
    }
    counts
}

fn assert_one_result_per_row(results: &[(i32, String, String, Option<String>)], rows: usize) {
    assert_eq!(results.len(), rows, "one result per data row");
    let misplaced = results.iter().enumerate().find(|(i, r)| r.0 != *i as i32 + 1);
    assert!(
        misplaced.is_none(),
        "results numbered 1..={rows}, first gap at {misplaced:?}"
    );
}

on_both_backends! {
    async fn seed_001_ten_thousand_inventory_devices_register_prepaid_with_a_workflow(app: TestApp) {
        // 10,000 IDLE devices of service type 6 (INVENTORY): the old system wrote 17,185 FAILs.
        let keys = imeis(1, 10_000);
        seed_devices(&app, "demo", &keys, state::IDLE, 6, None).await;
        let id = app.upload_csv(&app.alice(), json!({"rowCount": 10_000, "workflowId": DEMO_WORKFLOW}), csv("imei", &keys)).await;

        app.drain().await;

        let results = app.results(&id).await;
        assert_one_result_per_row(&results, 10_000);
        assert_eq!(codes(&results), BTreeMap::from([("SUCCESS".to_owned(), 10_000)]));
        let upload = app.upload_state(&app.alice(), "demo", &id).await;
        assert_eq!(upload["status"], "COMPLETED");
        assert_eq!((upload["totalRows"].clone(), upload["processedRows"].clone(), upload["succeeded"].clone(), upload["failed"].clone()), (json!(10_000), json!(10_000), json!(10_000), json!(0)));
        assert!(upload["startedAt"].is_string() && upload["finishedAt"].is_string());
        let registered = entity::prelude::Device::find()
            .filter(device::Column::State.eq(state::READY_FOR_USE))
            .filter(device::Column::ServiceType.eq(2))
            .filter(device::Column::WorkflowId.eq(DEMO_WORKFLOW))
            .count(&app.state.db).await.unwrap();
        assert_eq!(registered, 10_000);
    }

    async fn new_devices_with_invalid_and_repeated_rows_get_exact_counts_and_a_rerun_fails_them_all(app: TestApp) {
        let fresh = imeis(2, 10_000);
        let mut rows = fresh.clone();
        // A line of spaces is a data row with an empty key (an empty line is no row at all).
        rows.extend(["12345".to_owned(), "490154203237519".to_owned(), "   ".to_owned(), "abcdefghijklmno".to_owned()]);
        rows.extend(fresh[..25].iter().cloned());
        let total = rows.len();
        let acme_device = imeis(3, 1);
        seed_devices(&app, "acme", &acme_device, state::IDLE, 6, None).await;
        rows.push(acme_device[0].clone());

        let id = app.upload_csv(&app.alice(), json!({"rowCount": total + 1}), csv("imei", &rows)).await;
        app.drain().await;

        let results = app.results(&id).await;
        assert_one_result_per_row(&results, total + 1);
        assert_eq!(codes(&results), BTreeMap::from([
            ("SUCCESS".to_owned(), 10_000),
            ("INVALID_DEVICE_UID".to_owned(), 4),
            ("DUPLICATE_IN_FILE".to_owned(), 25),
            ("DEVICE_OWNED_BY_OTHER_TENANT".to_owned(), 1),
        ]));
        // The repeats are the later rows; the first occurrence won.
        assert!(results[10_004..10_029].iter().all(|r| r.3.as_deref() == Some("DUPLICATE_IN_FILE")));
        assert_eq!(results[10_001].1, "490154203237519");
        let upload = app.upload_state(&app.alice(), "demo", &id).await;
        assert_eq!(upload["status"], "COMPLETED_WITH_ERRORS");
        assert_eq!((upload["succeeded"].clone(), upload["failed"].clone(), upload["processedRows"].clone()), (json!(10_000), json!(30), json!(10_030)));
        assert_eq!(device_of(&app, &acme_device[0]).await.tenant_id, "acme");

        let again = app.upload_csv(&app.alice(), json!({"rowCount": total + 1}), csv("imei", &rows)).await;
        app.drain().await;
        let results = app.results(&again).await;
        assert_eq!(codes(&results), BTreeMap::from([
            ("WRONG_STATE_DEVICE".to_owned(), 10_000),
            ("INVALID_DEVICE_UID".to_owned(), 4),
            ("DUPLICATE_IN_FILE".to_owned(), 25),
            ("DEVICE_OWNED_BY_OTHER_TENANT".to_owned(), 1),
        ]));
        let count = entity::prelude::Device::find().count(&app.state.db).await.unwrap();
        assert_eq!(count, 10_001);
    }

    async fn results_echo_keys_with_backslashes_tabs_and_line_breaks_exactly(app: TestApp) {
        // PostgreSQL writes results with COPY's text format, where these characters (and a
        // lone `\N`) mean something: they must come back as the file had them.
        let fresh = imeis(5, 2);
        let mut rows = fresh.clone();
        rows.extend(["\\N", "back\\slash\\", "\"tab\there\"", "\"line\nbreak\"", "\"cr\rhere\"", "\"\\t\\n\""].map(str::to_owned));
        let id = app.upload_csv(&app.alice(), json!({"rowCount": rows.len()}), csv("imei", &rows)).await;
        app.drain().await;

        let results = app.results(&id).await;
        let uids: Vec<&str> = results.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(uids, [fresh[0].as_str(), fresh[1].as_str(), "\\N", "back\\slash\\", "tab\there", "line\nbreak", "cr\rhere", "\\t\\n"]);
        assert_eq!(codes(&results), BTreeMap::from([
            ("SUCCESS".to_owned(), 2),
            ("INVALID_DEVICE_UID".to_owned(), 6),
        ]));
        assert_eq!(device_of(&app, &fresh[1]).await.uid2, None);
    }

    async fn every_action_applies_its_effect_once(app: TestApp) {
        let keys = imeis(4, 6);
        seed_devices(&app, "demo", &keys[..3], state::READY_FOR_USE, 2, None).await;
        seed_devices(&app, "demo", &keys[3..4], state::ACTIVE, 6, None).await;
        seed_devices(&app, "demo", &keys[4..5], state::IDLE, 2, None).await;
        let alice = app.alice();

        let assign = app.upload_csv(&alice, json!({"assignActionId": "assign-workflow", "workflowId": DEMO_WORKFLOW, "rowCount": 6}), csv("deviceUid", &keys)).await;
        app.drain().await;
        let r = app.results(&assign).await;
        let got: Vec<Option<&str>> = r.iter().map(|x| x.3.as_deref()).collect();
        assert_eq!(got, [None, None, None, Some("WRONG_SERVICE_TYPE"), Some("WRONG_STATE_DEVICE"), Some("DEVICE_NOT_FOUND")]);
        assert_eq!(device_of(&app, &keys[0]).await.workflow_id.as_deref(), Some(DEMO_WORKFLOW));

        let dereg = app.upload_csv(&alice, json!({"assignActionId": "deregister", "rowCount": 2}), csv("IMEI", &[keys[0].clone(), keys[1].clone()])).await;
        app.drain().await;
        let r = app.results(&dereg).await;
        assert!(r.iter().all(|x| x.3.as_deref() == Some("ALREADY_IN_WORKFLOW")), "{r:?}");

        let exit = app.upload_csv(&alice, json!({"assignActionId": "exit-workflow", "rowCount": 3}), csv("imei", &keys[..3])).await;
        app.drain().await;
        assert!(app.results(&exit).await.iter().all(|x| x.2 == "SUCCESS"));
        assert_eq!(device_of(&app, &keys[0]).await.workflow_id, None);
        let exit_again = app.upload_csv(&alice, json!({"assignActionId": "exit-workflow", "rowCount": 1}), csv("imei", &keys[..1])).await;
        app.drain().await;
        assert_eq!(app.results(&exit_again).await[0].3.as_deref(), Some("NO_WORKFLOW_TO_EXIT"));

        let dereg = app.upload_csv(&alice, json!({"assignActionId": "deregister", "rowCount": 1}), csv("imei", &keys[..1])).await;
        app.drain().await;
        assert_eq!(app.results(&dereg).await[0].2, "SUCCESS");
        assert_eq!(device_of(&app, &keys[0]).await.state, state::IDLE);
    }

    async fn tablets_register_into_a_target_workspace_by_serial(app: TestApp) {
        let file = b"\xEF\xBB\xBFserial_number,notes\r\nab12cd34ef,\"first, with comma\"\r\nAB12CD34EF,repeat in other case\r\nshort,x\r\n".to_vec();
        let id = app.upload_csv(&app.alice(), json!({"deviceType": 2, "targetWorkspaceId": "demo-east", "rowCount": 3}), file).await;
        app.drain().await;
        let r = app.results(&id).await;
        let got: Vec<(&str, Option<&str>)> = r.iter().map(|x| (x.1.as_str(), x.3.as_deref())).collect();
        assert_eq!(got, [("ab12cd34ef", None), ("AB12CD34EF", Some("DUPLICATE_IN_FILE")), ("short", Some("INVALID_DEVICE_UID"))]);
        let d = entity::prelude::Device::find().filter(device::Column::Uid.eq("AB12CD34EF")).one(&app.state.db).await.unwrap().unwrap();
        assert_eq!((d.tenant_id.as_str(), d.device_type, d.state, d.service_type), ("demo-east", 2, state::READY_FOR_USE, 2));
    }

    async fn unusable_files_fail_the_upload_with_a_reason_and_no_results(app: TestApp) {
        let alice = app.alice();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", b"\n".to_vec()),
            ("wrong header", b"phone,name\n490154203237518,x\n".to_vec()),
            ("header only", b"imei\n".to_vec()),
            ("not utf-8", b"imei\n490154203237518\n\xff\xfe\xfd\n".to_vec()),
            ("binary", vec![0u8, 159, 146, 150, 0, 1, 2, 3, 4, 5]),
        ];
        for (name, file) in cases {
            let id = app.upload_csv(&alice, json!({}), file).await;
            app.drain().await;
            let upload = app.upload_state(&alice, "demo", &id).await;
            assert_eq!(upload["status"], "FAILED", "{name}: {upload}");
            let reason = upload["failureReason"].as_str().unwrap_or_default();
            assert!(reason.len() > 10, "{name}: a clear reason, got {reason:?}");
            assert!(upload["finishedAt"].is_string(), "{name}");
            assert!(app.results(&id).await.is_empty(), "{name}: no results");
        }
    }

    async fn a_chunk_delivered_twice_changes_nothing(app: TestApp) {
        let keys = imeis(5, 3_000);
        let doubled = Arc::new(Pipeline::new(
            app.state.db.clone(),
            app.state.storage.clone(),
            Arc::new(fleetload::queue::DbQueue::new(app.state.db.clone(), fleetload::queue::DISPATCH_QUEUE, 5)),
            Arc::new(Twice::new(fleetload::queue::DbQueue::new(app.state.db.clone(), "chunks-twice", 5))),
            app.state.progress.clone(),
            fleetload::pipeline::PipelineSettings { chunk_size: 500, max_rows: 1_000_000, lease: std::time::Duration::from_secs(30), poll_wait: std::time::Duration::ZERO },
        ));
        let mut rows = keys.clone();
        rows.push("bad".into());
        let id = app.upload_csv(&app.alice(), json!({"rowCount": 3_001}), csv("imei", &rows)).await;

        let ran = drain(&doubled).await;

        assert_eq!(ran, 1 + 7 * 2, "the dispatch job, then each of the 7 chunks twice");
        let results = app.results(&id).await;
        assert_one_result_per_row(&results, 3_001);
        let upload = app.upload_state(&app.alice(), "demo", &id).await;
        assert_eq!((upload["status"].clone(), upload["processedRows"].clone(), upload["succeeded"].clone(), upload["failed"].clone()),
                   (json!("COMPLETED_WITH_ERRORS"), json!(3_001), json!(3_000), json!(1)));
    }

    async fn an_upload_finalized_before_a_restart_completes_after_it(app: TestApp) {
        let keys = imeis(6, 500);
        let id = app.upload_csv(&app.alice(), json!({"rowCount": 500}), csv("imei", &keys)).await;
        // The process dies between finalize and dispatch: only the outbox row remains.
        let token = app.alice();
        let restarted = respawn(app.into_parts()).await;

        restarted.drain().await;

        let upload = restarted.upload_state(&token, "demo", &id).await;
        assert_eq!(upload["status"], "COMPLETED");
        assert_eq!(restarted.results(&id).await.len(), 500);
    }

    async fn two_uploads_registering_the_same_devices_at_once_register_each_once(app: TestApp) {
        let keys = imeis(7, 1_000);
        let alice = app.alice();
        let first = app.upload_csv(&alice, json!({"rowCount": 1000}), csv("imei", &keys)).await;
        let second = app.upload_csv(&alice, json!({"rowCount": 1000}), csv("imei", &keys)).await;
        // Dispatch both, then let four workers race over their interleaved chunks.
        let app = Arc::new(app);
        let racers = (0..4).map(|_| {
            let pipeline = app.pipeline.clone();
            tokio::spawn(async move { drain(&pipeline).await })
        });
        futures::future::join_all(racers).await;
        app.drain().await;

        let (a, b) = (app.results(&first).await, app.results(&second).await);
        assert_one_result_per_row(&a, 1000);
        assert_one_result_per_row(&b, 1000);
        for i in 0..1000 {
            let outcomes = [a[i].2.as_str(), b[i].2.as_str()];
            assert!(outcomes.contains(&"SUCCESS") && outcomes.contains(&"FAIL"), "row {}: {outcomes:?}", i + 1);
            let failure = if a[i].2 == "FAIL" { &a[i] } else { &b[i] };
            assert_eq!(failure.3.as_deref(), Some("WRONG_STATE_DEVICE"));
        }
        assert_eq!(entity::prelude::Device::find().count(&app.state.db).await.unwrap(), 1000);
    }
}

/// A queue that delivers every chunk twice: once normally and, after that delivery was
/// applied and acked, once more (a redelivery as at-least-once queues do).
struct Twice<Q> {
    inner: Q,
    replays: std::sync::Mutex<Vec<Delivery>>,
}

impl<Q> Twice<Q> {
    fn new(inner: Q) -> Self {
        Self {
            inner,
            replays: std::sync::Mutex::new(Vec::new()),
        }
    }
}

const REPLAY: &str = "replay:";

#[async_trait::async_trait]
impl<Q: Queue> Queue for Twice<Q> {
    async fn send(&self, jobs: &[JobPayload]) -> Result<(), QueueError> {
        self.inner.send(jobs).await
    }
    async fn receive(
        &self,
        max: usize,
        lease: std::time::Duration,
        wait: std::time::Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        if let Some(replay) = self.replays.lock().unwrap().pop() {
            return Ok(vec![replay]);
        }
        self.inner.receive(max, lease, wait).await
    }
    async fn extend(&self, d: &Delivery, lease: std::time::Duration) -> Result<(), QueueError> {
        if d.handle.starts_with(REPLAY) {
            Ok(())
        } else {
            self.inner.extend(d, lease).await
        }
    }
    async fn ack(&self, d: &Delivery) -> Result<(), QueueError> {
        if d.handle.starts_with(REPLAY) {
            return Ok(());
        }
        self.inner.ack(d).await?;
        let mut again = d.clone();
        again.handle = format!("{REPLAY}{}", d.handle);
        again.attempt += 1;
        self.replays.lock().unwrap().push(again);
        Ok(())
    }
    async fn retry(&self, d: &Delivery, delay: std::time::Duration, error: &str) -> Result<(), QueueError> {
        self.inner.retry(d, delay, error).await
    }
    async fn dead_letter(&self, d: &Delivery, error: &str) -> Result<(), QueueError> {
        self.inner.dead_letter(d, error).await
    }
    async fn rescue(&self) -> Result<Vec<JobPayload>, QueueError> {
        self.inner.rescue().await
    }
    fn max_attempts(&self) -> u32 {
        self.inner.max_attempts()
    }
}

/// Chunks are byte ranges of the snapshot: a file whose rows hold quoted commas and line
/// breaks, with blank lines, CRLF and a BOM, cut into chunks of three rows, gives every row
/// its own result with its number, marks repeats across chunk boundaries, and stores the
/// second IMEI.
async fn chunks_cut_at_any_row_of_a_wide_file_keep_every_row_and_its_number(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.chunk_size = 3).await;
    let keys = imeis(40, 8);
    let second = imeis(41, 8);
    let mut file = String::from("\u{feff}note,IMEI,imei2\r\n");
    // (note, key, second IMEI); rows 9 and 10 repeat rows 2 and 3 (other chunks).
    let mut rows: Vec<(String, String, String)> = (0..8)
        .map(|i| {
            (
                format!("\"row {i}, with a comma\r\nand a line break\""),
                keys[i].clone(),
                second[i].clone(),
            )
        })
        .collect();
    rows.push(("plain".into(), keys[1].clone(), String::new()));
    rows.push(("\"\"\"quoted\"\"\"".into(), keys[2].clone(), String::new()));
    rows.push((String::new(), "not-an-imei".into(), String::new()));
    for (i, (note, key, key2)) in rows.iter().enumerate() {
        file.push_str(&format!("{note},{key},{key2}\r\n"));
        if i % 4 == 2 {
            file.push_str("\r\n");
        }
    }
    let id = app
        .upload_csv(&app.alice(), json!({"rowCount": rows.len()}), file)
        .await;
    app.drain().await;

    let results = app.results(&id).await;
    assert_one_result_per_row(&results, rows.len());
    let uids: Vec<&str> = results.iter().map(|r| r.1.as_str()).collect();
    let written: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(uids, written, "each result echoes its own row's key");
    let got: Vec<Option<&str>> = results.iter().map(|r| r.3.as_deref()).collect();
    let mut expected = vec![None; 8];
    expected.extend([
        Some("DUPLICATE_IN_FILE"),
        Some("DUPLICATE_IN_FILE"),
        Some("INVALID_DEVICE_UID"),
    ]);
    assert_eq!(got, expected);
    for i in 0..8 {
        assert_eq!(
            device_of(&app, &keys[i]).await.uid2.as_deref(),
            Some(second[i].as_str())
        );
    }
    let upload = app.upload_state(&app.alice(), "demo", &id).await;
    assert_eq!(upload["status"], "COMPLETED_WITH_ERRORS");
    assert_eq!(
        (upload["succeeded"].clone(), upload["failed"].clone()),
        (json!(8), json!(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_cut_at_any_row_of_a_wide_file_keep_every_row_and_its_number_sqlite() {
    chunks_cut_at_any_row_of_a_wide_file_keep_every_row_and_its_number(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_cut_at_any_row_of_a_wide_file_keep_every_row_and_its_number_postgres() {
    chunks_cut_at_any_row_of_a_wide_file_keep_every_row_and_its_number(Backend::Postgres).await
}
