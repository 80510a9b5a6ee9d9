//! Isolation: a user of `acme` reads, finalizes or lists nothing of `demo`, guessed ids
//! included; a tenant sees its workspaces' uploads but not its parent's.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_backends;

const UPLOAD: &str = "query($t: String!, $id: String!) { upload(tenantId: $t, uploadId: $id) { id status } }";
const UPLOADS: &str = "query($t: String!, $first: Int, $after: String, $status: UploadStatus) {
  uploads(tenantId: $t, first: $first, after: $after, status: $status) {
    totalCount
    edges { cursor node { id status tenantId } }
    pageInfo { hasNextPage hasPreviousPage endCursor }
  }
}";

async fn prepare_in(app: &TestApp, tenant: &str, target: Option<&str>) -> String {
    let (token, action) = if tenant == "acme" {
        (app.bob(), "acme-register-prepaid")
    } else {
        (app.alice(), "register-prepaid")
    };
    let payload = app
        .prepare(&token, json!({"tenantId": tenant, "assignActionId": action, "rowCount": 5, "deviceType": 1, "targetWorkspaceId": target}))
        .await;
    payload["uploadId"].as_str().unwrap().to_owned()
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]["uploads"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap().to_owned())
        .collect()
}

on_both_backends! {
    async fn another_tenants_upload_is_invisible_by_id(app: TestApp) {
        let demo_upload = prepare_in(&app, "demo", None).await;

        let as_acme = app.gql(Some(&app.bob()), UPLOAD, json!({"t": "acme", "id": demo_upload})).await;
        assert_eq!(as_acme, json!({"data": {"upload": null}}));

        let naming_demo = app.gql(Some(&app.bob()), UPLOAD, json!({"t": "demo", "id": demo_upload})).await;
        assert_eq!(error_code(&naming_demo), "FORBIDDEN");
        assert!(naming_demo["data"]["upload"].is_null());

        let guessed = app.gql(Some(&app.bob()), UPLOAD, json!({"t": "acme", "id": uuid::Uuid::now_v7().to_string()})).await;
        assert_eq!(guessed, json!({"data": {"upload": null}}));
    }

    async fn another_tenants_uploads_are_not_listed(app: TestApp) {
        let demo_upload = prepare_in(&app, "demo", None).await;
        let acme_upload = prepare_in(&app, "acme", None).await;

        let acme_list = app.gql(Some(&app.bob()), UPLOADS, json!({"t": "acme"})).await;
        assert_eq!(ids(&acme_list), vec![acme_upload.clone()]);
        assert_eq!(acme_list["data"]["uploads"]["totalCount"], 1);

        let demo_list = app.gql(Some(&app.alice()), UPLOADS, json!({"t": "demo"})).await;
        assert_eq!(ids(&demo_list), vec![demo_upload]);

        let forbidden = app.gql(Some(&app.bob()), UPLOADS, json!({"t": "demo"})).await;
        assert_eq!(error_code(&forbidden), "FORBIDDEN");
    }

    async fn a_tenant_sees_its_workspaces_uploads_but_a_workspace_not_its_parents(app: TestApp) {
        let parent = prepare_in(&app, "demo", None).await;
        let child = prepare_in(&app, "demo-east", None).await;

        let from_demo = app.gql(Some(&app.alice()), UPLOADS, json!({"t": "demo"})).await;
        assert_eq!(ids(&from_demo), vec![child.clone(), parent.clone()]);
        let from_east = app.gql(Some(&app.alice()), UPLOADS, json!({"t": "demo-east"})).await;
        assert_eq!(ids(&from_east), vec![child.clone()]);

        let parent_from_east = app.gql(Some(&app.alice()), UPLOAD, json!({"t": "demo-east", "id": parent})).await;
        assert_eq!(parent_from_east["data"]["upload"], Value::Null);
        let child_from_demo = app.gql(Some(&app.alice()), UPLOAD, json!({"t": "demo", "id": child})).await;
        assert_eq!(child_from_demo["data"]["upload"]["id"], json!(child));
    }

    async fn uploads_page_newest_first_with_cursors_and_filter_by_status(app: TestApp) {
        let mut created = Vec::new();
        for _ in 0..5 {
            created.push(prepare_in(&app, "demo", None).await);
        }
        created.reverse();

        let page1 = app.gql(Some(&app.alice()), UPLOADS, json!({"t": "demo", "first": 2})).await;
        assert_eq!(ids(&page1), created[..2]);
        assert_eq!(page1["data"]["uploads"]["totalCount"], 5);
        assert_eq!(page1["data"]["uploads"]["pageInfo"]["hasNextPage"], true);
        let cursor = page1["data"]["uploads"]["pageInfo"]["endCursor"].clone();

        let page2 = app.gql(Some(&app.alice()), UPLOADS, json!({"t": "demo", "first": 10, "after": cursor})).await;
        assert_eq!(ids(&page2), created[2..]);
        assert_eq!(page2["data"]["uploads"]["pageInfo"]["hasNextPage"], false);
        assert_eq!(page2["data"]["uploads"]["pageInfo"]["hasPreviousPage"], true);

        let queued = app.gql(Some(&app.alice()), UPLOADS, json!({"t": "demo", "status": "QUEUED"})).await;
        assert_eq!(queued["data"]["uploads"]["totalCount"], 0);
        let prepared = app.gql(Some(&app.alice()), UPLOADS, json!({"t": "demo", "status": "PREPARED"})).await;
        assert_eq!(prepared["data"]["uploads"]["totalCount"], 5);

        let bad_cursor = app.gql(Some(&app.alice()), UPLOADS, json!({"t": "demo", "after": "not-a-cursor"})).await;
        assert_eq!(error_code(&bad_cursor), "BAD_USER_INPUT");
        let too_many = app.gql(Some(&app.alice()), UPLOADS, json!({"t": "demo", "first": 100000})).await;
        assert_eq!(error_code(&too_many), "FIRST_TOO_LARGE");
    }
}
