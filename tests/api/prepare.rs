//! `prepareBatchUpload`: the old frontend's call, and every upload-level check of SPEC §3.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_backends;

fn vars(extra: Value) -> Value {
    let mut base =
        json!({"tenantId": "demo", "assignActionId": "register-prepaid", "rowCount": 10000, "deviceType": 1});
    base.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    base
}

async fn prepare_error(app: &TestApp, token: &str, extra: Value) -> String {
    let body = app.gql(Some(token), PREPARE, vars(extra)).await;
    assert!(body["data"].is_null(), "expected no data in {body}");
    error_code(&body)
}

on_both_backends! {
    async fn the_old_frontends_call_returns_an_upload_id_and_a_post_policy(app: TestApp) {
        let payload = app.prepare(&app.alice(), vars(json!({"workflowId": DEMO_WORKFLOW, "brandId": 7, "provisionType": "ESIM"}))).await;

        let upload_id = payload["uploadId"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(upload_id).is_ok(), "{upload_id}");
        let file_upload = &payload["fileUpload"];
        assert_eq!(file_upload["url"], format!("{}/objects", app.url));
        // AWSJSON is a JSON *string* the frontend parses.
        let fields: Value = serde_json::from_str(file_upload["fields"].as_str().unwrap()).unwrap();
        for field in ["key", "policy", "x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature"] {
            assert!(fields[field].is_string(), "missing {field} in {fields}");
        }
        assert!(fields["key"].as_str().unwrap().ends_with(&format!("{upload_id}.csv")));
        let expires = chrono::DateTime::parse_from_rfc3339(file_upload["expiresAt"].as_str().unwrap()).unwrap();
        assert!(expires > chrono::Utc::now());

        let body = app.gql(Some(&app.alice()), "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { id status tenantId targetWorkspaceId deviceType assignActionId workflowId brandId provisionType declaredRowCount totalRows processedRows succeeded failed createdBy } }", json!({"id": upload_id})).await;
        assert_eq!(body["data"]["upload"], json!({
            "id": upload_id, "status": "PREPARED", "tenantId": "demo", "targetWorkspaceId": "demo",
            "deviceType": 1, "assignActionId": "register-prepaid", "workflowId": DEMO_WORKFLOW,
            "brandId": 7, "provisionType": "ESIM", "declaredRowCount": 10000, "totalRows": null,
            "processedRows": 0, "succeeded": 0, "failed": 0, "createdBy": "alice"
        }));
    }

    async fn a_child_workspace_may_be_the_target(app: TestApp) {
        let payload = app.prepare(&app.alice(), vars(json!({"targetWorkspaceId": "demo-east", "deviceType": 2}))).await;
        let body = app.gql(Some(&app.alice()), "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { targetWorkspaceId deviceType } }", json!({"id": payload["uploadId"]})).await;
        assert_eq!(body["data"]["upload"], json!({"targetWorkspaceId": "demo-east", "deviceType": 2}));
    }

    async fn a_workspace_outside_the_tenant_is_an_invalid_tenant(app: TestApp) {
        assert_eq!(prepare_error(&app, &app.alice(), json!({"targetWorkspaceId": "acme"})).await, "INVALID_TENANT");
        assert_eq!(prepare_error(&app, &app.alice(), json!({"targetWorkspaceId": "no-such-workspace"})).await, "INVALID_TENANT");
        // From the child, the parent is outside.
        assert_eq!(prepare_error(&app, &app.alice(), json!({"tenantId": "demo-east", "targetWorkspaceId": "demo"})).await, "INVALID_TENANT");
    }

    async fn a_tenant_outside_the_users_tree_is_forbidden(app: TestApp) {
        assert_eq!(prepare_error(&app, &app.bob(), json!({})).await, "FORBIDDEN");
        assert_eq!(prepare_error(&app, &app.alice(), json!({"tenantId": "acme", "assignActionId": "acme-register-prepaid"})).await, "FORBIDDEN");
        assert_eq!(prepare_error(&app, &app.alice(), json!({"tenantId": "nowhere"})).await, "FORBIDDEN");
    }

    async fn preparing_needs_the_update_permission(app: TestApp) {
        let reader = app.token_with("carol", "demo", &[fleetload::auth::Permission::Read]);
        assert_eq!(prepare_error(&app, &reader, json!({})).await, "FORBIDDEN");
    }

    async fn another_tenants_action_or_workflow_is_not_found(app: TestApp) {
        let alice = app.alice();
        assert_eq!(prepare_error(&app, &alice, json!({"assignActionId": "acme-register-prepaid"})).await, "ACTION_NOT_FOUND");
        assert_eq!(prepare_error(&app, &alice, json!({"assignActionId": "no-such-action"})).await, "ACTION_NOT_FOUND");
        assert_eq!(prepare_error(&app, &alice, json!({"workflowId": ACME_WORKFLOW})).await, "WORKFLOW_NOT_FOUND");
        assert_eq!(prepare_error(&app, &alice, json!({"workflowId": "000000000000000000000000"})).await, "WORKFLOW_NOT_FOUND");
        // bob sees acme's own, and a workspace inherits its parent's actions.
        app.prepare(&app.bob(), vars(json!({"tenantId": "acme", "assignActionId": "acme-register-prepaid", "workflowId": ACME_WORKFLOW}))).await;
        app.prepare(&alice, vars(json!({"tenantId": "demo-east", "workflowId": DEMO_WORKFLOW}))).await;
    }

    async fn assign_workflow_without_a_workflow_is_refused(app: TestApp) {
        assert_eq!(prepare_error(&app, &app.alice(), json!({"assignActionId": "assign-workflow"})).await, "WORKFLOW_REQUIRED");
        app.prepare(&app.alice(), vars(json!({"assignActionId": "assign-workflow", "workflowId": INVENTORY_WORKFLOW}))).await;
    }

    async fn register_checks_the_workflow_against_the_actions_target_service_type(app: TestApp) {
        // Seed 001: INVENTORY devices → Register Prepaid with a PREPAID workflow is valid.
        app.prepare(&app.alice(), vars(json!({"workflowId": DEMO_WORKFLOW}))).await;
        assert_eq!(
            prepare_error(&app, &app.alice(), json!({"workflowId": INVENTORY_WORKFLOW})).await,
            "WORKFLOW_SERVICE_TYPE_MISMATCH"
        );
    }

    async fn device_type_and_row_count_are_checked(app: TestApp) {
        let alice = app.alice();
        for device_type in [0, 3, -1] {
            assert_eq!(prepare_error(&app, &alice, json!({"deviceType": device_type})).await, "INVALID_DEVICE_TYPE");
        }
        for rows in [0, -5, 1_000_001] {
            assert_eq!(prepare_error(&app, &alice, json!({"rowCount": rows})).await, "INVALID_ROW_COUNT");
        }
        app.prepare(&alice, vars(json!({"rowCount": 1}))).await;
        app.prepare(&alice, vars(json!({"rowCount": 1_000_000}))).await;
    }

    async fn refused_prepares_create_no_upload(app: TestApp) {
        prepare_error(&app, &app.alice(), json!({"assignActionId": "nope"})).await;
        prepare_error(&app, &app.bob(), json!({})).await;
        let body = app.gql(Some(&app.alice()), "{ uploads(tenantId: \"demo\") { totalCount } }", json!({})).await;
        assert_eq!(body["data"]["uploads"]["totalCount"], 0);
    }
}
