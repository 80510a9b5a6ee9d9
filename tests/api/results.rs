//! `Upload.results` and `Upload.progress`: keyset pages over 100,000 rows on both databases,
//! exact filters and counts, refused cursors, tenancy, and a page of uploads whose recent
//! errors cost the same few statements whatever the page size.

use chrono::Utc;
use entity::batch_result::{self, Outcome};
use entity::upload::{self, UploadStatus};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_backends;

pub const RESULTS: &str = r#"
query($t: String!, $id: String!, $first: Int, $after: String, $outcome: Outcome, $errorCode: String, $count: Boolean!) {
  upload(tenantId: $t, uploadId: $id) {
    results(first: $first, after: $after, outcome: $outcome, errorCode: $errorCode) {
      totalCount @include(if: $count)
      edges { cursor node { rowNumber deviceUid outcome errorCode message } }
      pageInfo { hasNextPage hasPreviousPage endCursor }
    }
  }
}"#;

/// The internal id of an upload.
pub async fn internal_id(app: &TestApp, public_id: &str) -> i64 {
    entity::prelude::Upload::find()
        .filter(upload::Column::PublicId.eq(public_id))
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap()
        .id
}

/// What the seeded row `n` is: every 7th fails, half of those with a second code.
fn seeded_code(n: i32) -> Option<&'static str> {
    match (n % 7, n % 14) {
        (0, 0) => Some("INVALID_DEVICE_UID"),
        (0, _) => Some("WRONG_STATE_DEVICE"),
        _ => None,
    }
}

/// A demo upload of `rows` results written straight to the database, finished with errors
/// and counters to match (what the pipeline leaves behind, without running it).
pub async fn seeded_upload(app: &TestApp, rows: i32) -> String {
    let (public_id, _) = app.prepare_demo().await;
    let id = internal_id(app, &public_id).await;
    let mut failed = 0;
    for start in (1..=rows).step_by(1000) {
        let models: Vec<_> = (start..(start + 1000).min(rows + 1))
            .map(|n| {
                let code = seeded_code(n);
                failed += i32::from(code.is_some());
                batch_result::ActiveModel {
                    upload_id: Set(id),
                    row_number: Set(n),
                    device_uid: Set(format!("uid-{n}")),
                    outcome: Set(if code.is_some() {
                        Outcome::Fail
                    } else {
                        Outcome::Success
                    }),
                    error_code: Set(code.map(str::to_owned)),
                    message: Set(code.map(|c| format!("row {n}: {c}"))),
                }
            })
            .collect();
        entity::prelude::BatchResult::insert_many(models)
            .exec_without_returning(&app.state.db)
            .await
            .unwrap();
    }
    entity::prelude::Upload::update_many()
        .col_expr(
            upload::Column::Status,
            Expr::value(UploadStatus::CompletedWithErrors),
        )
        .col_expr(upload::Column::TotalRows, Expr::value(rows))
        .col_expr(upload::Column::ProcessedRows, Expr::value(rows))
        .col_expr(upload::Column::Succeeded, Expr::value(rows - failed))
        .col_expr(upload::Column::Failed, Expr::value(failed))
        .col_expr(upload::Column::FinishedAt, Expr::value(Utc::now()))
        .filter(upload::Column::Id.eq(id))
        .exec(&app.state.db)
        .await
        .unwrap();
    public_id
}

/// One page of results as alice sees them in `demo`.
pub async fn results_page(app: &TestApp, id: &str, vars: Value) -> Value {
    let mut all = json!({"t": "demo", "id": id, "count": true});
    all.as_object_mut()
        .unwrap()
        .extend(vars.as_object().unwrap().clone());
    app.gql(Some(&app.alice()), RESULTS, all).await
}

/// Every page in turn; returns the nodes and the first page's `totalCount`.
async fn walk(app: &TestApp, id: &str, filter: Value) -> (Vec<Value>, i64) {
    let mut nodes = Vec::new();
    let mut after = Value::Null;
    let mut total = None;
    loop {
        let mut vars = json!({"first": 500, "after": after, "count": total.is_none()});
        vars.as_object_mut()
            .unwrap()
            .extend(filter.as_object().unwrap().clone());
        let body = results_page(app, id, vars).await;
        assert!(body.get("errors").is_none(), "{body}");
        let conn = &body["data"]["upload"]["results"];
        total = total.or(conn["totalCount"].as_i64());
        assert_eq!(conn["pageInfo"]["hasPreviousPage"], !after.is_null());
        let edges = conn["edges"].as_array().unwrap();
        for edge in edges {
            nodes.push(edge["node"].clone());
        }
        if conn["pageInfo"]["hasNextPage"] == false {
            break;
        }
        assert_eq!(edges.len(), 500, "only the last page may be short");
        after = conn["pageInfo"]["endCursor"].clone();
    }
    (nodes, total.unwrap())
}

/// Asserts the nodes are exactly rows `want`, naming the first difference (not 100,000 numbers).
fn assert_rows(nodes: &[Value], want: &[i32]) {
    let got: Vec<i32> = nodes
        .iter()
        .map(|n| n["rowNumber"].as_i64().unwrap() as i32)
        .collect();
    let first_difference = got.iter().zip(want).position(|(g, w)| g != w);
    assert!(
        got.len() == want.len() && first_difference.is_none(),
        "got {} rows, want {}; first difference at index {first_difference:?}",
        got.len(),
        want.len()
    );
}

on_both_backends! {
    async fn paging_a_hundred_thousand_rows_gives_each_row_once_in_order_with_exact_filters_and_counts(app: TestApp) {
        const ROWS: i32 = 100_000;
        let id = seeded_upload(&app, ROWS).await;

        let (all, total) = walk(&app, &id, json!({})).await;
        assert_eq!(total, i64::from(ROWS));
        assert_rows(&all, &(1..=ROWS).collect::<Vec<_>>());
        assert_eq!(all[6], json!({"rowNumber": 7, "deviceUid": "uid-7", "outcome": "FAIL",
            "errorCode": "WRONG_STATE_DEVICE", "message": "row 7: WRONG_STATE_DEVICE"}));
        assert_eq!(all[0], json!({"rowNumber": 1, "deviceUid": "uid-1", "outcome": "SUCCESS",
            "errorCode": null, "message": null}));

        let (failed, total) = walk(&app, &id, json!({"outcome": "FAIL"})).await;
        let want: Vec<i32> = (1..=ROWS).filter(|n| seeded_code(*n).is_some()).collect();
        assert_rows(&failed, &want);
        assert_eq!(total, want.len() as i64);

        let (invalid, total) = walk(&app, &id, json!({"errorCode": "INVALID_DEVICE_UID"})).await;
        let want: Vec<i32> = (1..=ROWS).filter(|n| seeded_code(*n) == Some("INVALID_DEVICE_UID")).collect();
        assert_rows(&invalid, &want);
        assert_eq!(total, want.len() as i64);
        let (same, _) = walk(&app, &id, json!({"errorCode": "INVALID_DEVICE_UID", "outcome": "FAIL"})).await;
        assert_eq!(same, invalid);

        let (succeeded, total) = walk(&app, &id, json!({"outcome": "SUCCESS"})).await;
        let want: Vec<i32> = (1..=ROWS).filter(|n| seeded_code(*n).is_none()).collect();
        assert_rows(&succeeded, &want);
        assert_eq!(total, want.len() as i64);

        let (none, total) = walk(&app, &id, json!({"errorCode": "INVALID_DEVICE_UID", "outcome": "SUCCESS"})).await;
        assert_eq!((none.len(), total), (0, 0));
        let (none, total) = walk(&app, &id, json!({"errorCode": "NO_SUCH_CODE"})).await;
        assert_eq!((none.len(), total), (0, 0));
    }

    async fn a_foreign_cursor_is_bad_user_input_and_a_page_too_large_is_first_too_large(app: TestApp) {
        let id = seeded_upload(&app, 30).await;
        let uploads = app.gql(Some(&app.alice()), "{ uploads(tenantId: \"demo\", first: 1) { pageInfo { endCursor } } }", json!({})).await;
        let upload_cursor = uploads["data"]["uploads"]["pageInfo"]["endCursor"].clone();
        for after in [json!("not a cursor"), json!(""), upload_cursor] {
            let body = results_page(&app, &id, json!({"after": after})).await;
            assert_eq!(error_code(&body), "BAD_USER_INPUT", "{after}: {body}");
        }
        let body = results_page(&app, &id, json!({"first": -1})).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        let body = results_page(&app, &id, json!({"first": 501})).await;
        assert_eq!(error_code(&body), "FIRST_TOO_LARGE", "{body}");
        let page = results_page(&app, &id, json!({"first": 10})).await;
        let cursor = page["data"]["upload"]["results"]["pageInfo"]["endCursor"].clone();
        let next = results_page(&app, &id, json!({"first": 10, "after": cursor})).await;
        assert_eq!(next["data"]["upload"]["results"]["edges"][0]["node"]["rowNumber"], 11);
    }

    async fn another_tenant_cannot_page_through_the_results(app: TestApp) {
        let id = seeded_upload(&app, 10).await;
        let bob = app.bob();
        let own_tenant = app.gql(Some(&bob), RESULTS, json!({"t": "acme", "id": id, "count": true})).await;
        assert!(own_tenant.get("errors").is_none(), "{own_tenant}");
        assert_eq!(own_tenant["data"]["upload"], Value::Null);
        let theirs = app.gql(Some(&bob), RESULTS, json!({"t": "demo", "id": id, "count": true})).await;
        assert_eq!(error_code(&theirs), "FORBIDDEN");
        assert_eq!(theirs["data"], Value::Null);
    }

    async fn a_page_of_uploads_loads_recent_errors_and_reports_with_the_same_statements_for_2_or_20(app: TestApp) {
        let alice = app.alice();
        let mut ids = Vec::new();
        for i in 0..20u64 {
            // Rows 2 and 5..=10 fail: seven failures, of which the latest five show.
            let mut rows = imeis(100 + i, 3);
            rows.insert(1, format!("bad{i}"));
            rows.extend((0..6).map(|j| format!("{i}x{j}")));
            ids.push(app.upload_csv(&alice, json!({"rowCount": rows.len()}), csv("imei", &rows)).await);
        }
        app.drain().await;
        const PAGE: &str = r#"query($n: Int!) { uploads(tenantId: "demo", first: $n) { edges { node {
            id progress { status percentage failed recentErrors { rowNumber deviceUid errorCode } }
            errorReport { url } } } } }"#;
        // The reports were built in the background (`drain`); every listing only signs links.
        let warm = app.gql(Some(&alice), PAGE, json!({"n": 20})).await;
        assert!(warm.get("errors").is_none(), "{warm}");

        let mut costs = Vec::new();
        for n in [2, 20] {
            let before = app.state.statements.get();
            let body = app.gql(Some(&alice), PAGE, json!({"n": n})).await;
            costs.push(app.state.statements.get() - before);
            assert!(body.get("errors").is_none(), "{body}");
            let edges = body["data"]["uploads"]["edges"].as_array().unwrap();
            assert_eq!(edges.len(), n as usize);
            for edge in edges {
                let node = &edge["node"];
                let k = ids.iter().position(|id| *id == node["id"]).unwrap();
                let progress = &node["progress"];
                assert_eq!((progress["status"].clone(), progress["failed"].clone(), progress["percentage"].clone()),
                    (json!("COMPLETED_WITH_ERRORS"), json!(7), json!(100.0)), "{node}");
                let recent: Vec<(i64, String)> = progress["recentErrors"].as_array().unwrap().iter()
                    .map(|e| (e["rowNumber"].as_i64().unwrap(), e["deviceUid"].as_str().unwrap().to_owned()))
                    .collect();
                let want: Vec<(i64, String)> = (6..=10).rev().map(|r| (r, format!("{k}x{}", r - 5))).collect();
                assert_eq!(recent, want, "{node}");
                assert!(node["errorReport"]["url"].is_string(), "{node}");
            }
        }
        assert_eq!(costs[0], costs[1], "statements for 2 and for 20 uploads: {costs:?}");
        assert!(costs[1] <= 8, "a page of uploads took {} statements", costs[1]);
    }
}
