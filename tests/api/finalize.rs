//! `finalizeBatchUpload`: the selection-less call, idempotency under repeats and races, and
//! its errors. Processing itself is the pipeline's; here finalize only queues.

use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

async fn status_of(app: &TestApp, upload_id: &str) -> String {
    let body = app
        .gql(
            Some(&app.alice()),
            "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { status } }",
            json!({"id": upload_id}),
        )
        .await;
    body["data"]["upload"]["status"].as_str().unwrap().to_owned()
}

on_both_backends! {
    async fn the_drop_in_flow_queues_the_upload_once(app: TestApp) {
        let (upload_id, file_upload) = app.prepare_demo().await;
        let resp = app.post_file(&file_upload, b"imei\r\n490154203237518\r\n".to_vec()).await;
        assert_eq!(resp.status(), 204);

        let body = app.finalize(&app.alice(), "demo", &upload_id).await;

        assert_eq!(body, json!({"data": {"finalizeBatchUpload": "QUEUED"}}));
        assert_eq!(status_of(&app, &upload_id).await, "QUEUED");
        assert_eq!(app.count_jobs().await, 1);
    }

    async fn a_repeated_finalize_answers_with_the_status_and_queues_nothing_more(app: TestApp) {
        let (upload_id, file_upload) = app.prepare_demo().await;
        app.post_file(&file_upload, b"imei\n490154203237518\n".to_vec()).await;
        for _ in 0..3 {
            let body = app.finalize(&app.alice(), "demo", &upload_id).await;
            assert_eq!(body["data"]["finalizeBatchUpload"], "QUEUED");
        }
        assert_eq!(app.count_jobs().await, 1);
    }

    async fn thirty_concurrent_finalizes_make_one_job(app: TestApp) {
        let (upload_id, file_upload) = app.prepare_demo().await;
        app.post_file(&file_upload, b"imei\n490154203237518\n".to_vec()).await;
        let app = std::sync::Arc::new(app);
        let token = app.alice();

        let calls = (0..30).map(|_| {
            let (app, token, id) = (app.clone(), token.clone(), upload_id.clone());
            tokio::spawn(async move { app.finalize(&token, "demo", &id).await })
        });
        let answers = futures::future::join_all(calls).await;

        for answer in answers {
            let body = answer.unwrap();
            assert_eq!(body["data"]["finalizeBatchUpload"], "QUEUED", "{body}");
        }
        assert_eq!(app.count_jobs().await, 1);
        assert_eq!(status_of(&app, &upload_id).await, "QUEUED");
    }

    async fn finalizing_before_the_file_exists_is_refused_and_changes_nothing(app: TestApp) {
        let (upload_id, _) = app.prepare_demo().await;

        let body = app.finalize(&app.alice(), "demo", &upload_id).await;

        assert_eq!(error_code(&body), "UPLOAD_NOT_UPLOADED");
        assert_eq!(status_of(&app, &upload_id).await, "PREPARED");
        assert_eq!(app.count_jobs().await, 0);
    }

    async fn unknown_malformed_or_foreign_upload_ids_are_not_found(app: TestApp) {
        let (upload_id, file_upload) = app.prepare_demo().await;
        app.post_file(&file_upload, b"imei\n490154203237518\n".to_vec()).await;
        let bob = app.bob();
        for (token, tenant, id) in [
            (app.alice(), "demo", uuid::Uuid::now_v7().to_string()),
            (app.alice(), "demo", "123".to_owned()),
            (app.alice(), "demo", "'; DROP TABLE uploads; --".to_owned()),
            (bob.clone(), "acme", upload_id.clone()),
        ] {
            let body = app.finalize(&token, tenant, &id).await;
            assert_eq!(error_code(&body), "UPLOAD_NOT_FOUND", "{id}");
        }
        // A workspace does not see its parent's uploads.
        let body = app.finalize(&app.alice(), "demo-east", &upload_id).await;
        assert_eq!(error_code(&body), "UPLOAD_NOT_FOUND");
        assert_eq!(status_of(&app, &upload_id).await, "PREPARED");
        assert_eq!(app.count_jobs().await, 0);
    }

    async fn finalize_keeps_its_optional_arguments_for_the_pipeline(app: TestApp) {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        let (upload_id, file_upload) = app.prepare_demo().await;
        app.post_file(&file_upload, b"imei\n490154203237518\n".to_vec()).await;

        let body = app.gql(Some(&app.alice()), FINALIZE, json!({
            "tenantId": "demo", "uploadId": upload_id, "workflowId": DEMO_WORKFLOW,
            "simControlName": "carrier-x", "simControlId": "sc-1",
            "billingDetail": "{\"plan\":\"P1\",\"months\":12}"
        })).await;
        assert_eq!(body["data"]["finalizeBatchUpload"], "QUEUED", "{body}");

        let row = entity::prelude::Upload::find()
            .filter(entity::upload::Column::PublicId.eq(&upload_id))
            .one(&app.state.db).await.unwrap().unwrap();
        assert_eq!(row.workflow_id.as_deref(), Some(DEMO_WORKFLOW));
        assert_eq!(row.sim_control_name.as_deref(), Some("carrier-x"));
        assert_eq!(row.sim_control_id.as_deref(), Some("sc-1"));
        let billing: serde_json::Value = serde_json::from_str(row.billing_detail.as_deref().unwrap()).unwrap();
        assert_eq!(billing, json!({"plan": "P1", "months": 12}));
    }

    async fn billing_detail_may_also_be_sent_as_an_object(app: TestApp) {
        let (upload_id, file_upload) = app.prepare_demo().await;
        app.post_file(&file_upload, b"imei\n490154203237518\n".to_vec()).await;
        let body = app.gql(Some(&app.alice()), FINALIZE, json!({"tenantId": "demo", "uploadId": upload_id, "billingDetail": {"plan": "P1"}})).await;
        assert_eq!(body["data"]["finalizeBatchUpload"], "QUEUED", "{body}");
    }

    async fn a_workflow_named_at_finalize_passes_the_prepare_checks(app: TestApp) {
        let (upload_id, file_upload) = app.prepare_demo().await;
        app.post_file(&file_upload, b"imei\n490154203237518\n".to_vec()).await;
        let alice = app.alice();
        let with = |wf: &str| json!({"tenantId": "demo", "uploadId": upload_id, "workflowId": wf});

        let mismatch = app.gql(Some(&alice), FINALIZE, with(INVENTORY_WORKFLOW)).await;
        assert_eq!(error_code(&mismatch), "WORKFLOW_SERVICE_TYPE_MISMATCH");
        let foreign = app.gql(Some(&alice), FINALIZE, with(ACME_WORKFLOW)).await;
        assert_eq!(error_code(&foreign), "WORKFLOW_NOT_FOUND");
        assert_eq!(status_of(&app, &upload_id).await, "PREPARED");
        assert_eq!(app.count_jobs().await, 0);
    }

    async fn finalizing_needs_the_update_permission(app: TestApp) {
        let (upload_id, file_upload) = app.prepare_demo().await;
        app.post_file(&file_upload, b"imei\n490154203237518\n".to_vec()).await;
        let reader = app.token_with("carol", "demo", &[fleetload::auth::Permission::Read]);
        assert_eq!(error_code(&app.finalize(&reader, "demo", &upload_id).await), "FORBIDDEN");
        assert_eq!(app.count_jobs().await, 0);
    }
}
