//! Catalog management (SPEC §7): administrators create and change workspaces, actions and
//! workflows inside their own tree only; everyone with READ lists what they may use.

use fleetload::auth::Permission;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_backends;

fn admin_of(app: &TestApp, tenant: &str) -> String {
    app.token_with("dana", tenant, &[Permission::Admin])
}

async fn ok(app: &TestApp, token: &str, query: &str, vars: Value) -> Value {
    let body = app.gql(Some(token), query, vars).await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"].clone()
}

async fn code(app: &TestApp, token: &str, query: &str, vars: Value) -> String {
    let body = app.gql(Some(token), query, vars).await;
    error_code(&body)
}

const CREATE_TENANT: &str = "mutation($p: String!, $id: String, $n: String!) { createTenant(parentId: $p, id: $id, name: $n) { id name parentId } }";
const CREATE_ACTION: &str = "mutation($t: String!, $id: String, $n: String!, $k: ActionKind!, $st: Int) { createAction(tenantId: $t, id: $id, name: $n, kind: $k, targetServiceType: $st) { id tenantId kind targetServiceType } }";
const CREATE_WORKFLOW: &str = "mutation($t: String!, $id: String, $n: String!, $st: Int!) { createWorkflow(tenantId: $t, id: $id, name: $n, serviceType: $st) { id tenantId serviceType } }";

on_both_backends! {
    async fn an_admin_builds_a_workspace_with_its_own_action_and_workflow_and_uploads_into_it(app: TestApp) {
        let admin = admin_of(&app, "demo");
        let data = ok(&app, &admin, CREATE_TENANT, json!({"p": "demo-east", "id": "demo-east-lab", "n": "  Lab  "})).await;
        assert_eq!(data["createTenant"], json!({"id": "demo-east-lab", "name": "Lab", "parentId": "demo-east"}));

        let data = ok(&app, &admin, CREATE_ACTION, json!({"t": "demo-east-lab", "id": "lab-register", "n": "Register to lab", "k": "REGISTER", "st": 2})).await;
        assert_eq!(data["createAction"]["kind"], "REGISTER");
        let data = ok(&app, &admin, CREATE_WORKFLOW, json!({"t": "demo-east-lab", "n": "Lab onboarding", "st": 2})).await;
        let workflow = data["createWorkflow"]["id"].as_str().unwrap().to_owned();
        assert_eq!(workflow.len(), 24);
        assert!(workflow.bytes().all(|b| b.is_ascii_hexdigit()));

        // READ users list what they can use: own items plus inherited ones, never a child's.
        let alice = app.alice();
        let data = ok(&app, &alice, "{ tenants(tenantId: \"demo\") { id parentId } }", json!({})).await;
        let ids: Vec<&str> = data["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["demo", "demo-east", "demo-east-lab"]);
        let data = ok(&app, &alice, "{ actions(tenantId: \"demo-east-lab\") { id } workflows(tenantId: \"demo-east-lab\") { id } }", json!({})).await;
        let actions: Vec<&str> = data["actions"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
        assert!(actions.contains(&"lab-register") && actions.contains(&"register-prepaid"), "{actions:?}");
        assert!(data["workflows"].as_array().unwrap().iter().any(|w| w["id"] == workflow.as_str()));
        let data = ok(&app, &alice, "{ actions(tenantId: \"demo\") { id } }", json!({})).await;
        assert!(!data["actions"].as_array().unwrap().iter().any(|a| a["id"] == "lab-register"));

        // The new catalog works for an upload into the new workspace.
        let id = app
            .upload_csv(&alice, json!({"tenantId": "demo-east-lab", "assignActionId": "lab-register", "workflowId": workflow, "rowCount": 2}), csv("imei", &imeis(61, 2)))
            .await;
        app.drain().await;
        let state = app.upload_state(&alice, "demo-east-lab", &id).await;
        assert_eq!((state["status"].as_str(), state["succeeded"].as_i64()), (Some("COMPLETED"), Some(2)));

        // A workflow with devices in it, or named by an unfinished upload, stays.
        let del = "mutation($id: String!) { deleteWorkflow(id: $id) }";
        assert_eq!(code(&app, &admin, del, json!({"id": workflow})).await, "IN_USE");
        let data = ok(&app, &admin, CREATE_WORKFLOW, json!({"t": "demo-east-lab", "id": "AAAAAAAAAAAAAAAAAAAAAAAA", "n": "Spare", "st": 6})).await;
        assert_eq!(data["createWorkflow"]["id"], "aaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(ok(&app, &admin, del, json!({"id": "aaaaaaaaaaaaaaaaaaaaaaaa"})).await["deleteWorkflow"], "aaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(code(&app, &admin, del, json!({"id": "aaaaaaaaaaaaaaaaaaaaaaaa"})).await, "WORKFLOW_NOT_FOUND");

        let data = ok(&app, &admin, "mutation { renameTenant(tenantId: \"demo-east-lab\", name: \"Lab 2\") { name } updateAction(id: \"lab-register\", name: \"Lab\", targetServiceType: 6) { name targetServiceType } }", json!({})).await;
        assert_eq!(data["renameTenant"]["name"], "Lab 2");
        assert_eq!(data["updateAction"], json!({"name": "Lab", "targetServiceType": 6}));
    }

    async fn bad_or_repeated_input_gets_a_typed_error_and_changes_nothing(app: TestApp) {
        let admin = admin_of(&app, "demo");
        assert_eq!(code(&app, &admin, CREATE_TENANT, json!({"p": "demo", "id": "demo-east", "n": "again"})).await, "ALREADY_EXISTS");
        assert_eq!(code(&app, &admin, CREATE_TENANT, json!({"p": "demo", "id": "has space", "n": "x"})).await, "BAD_USER_INPUT");
        assert_eq!(code(&app, &admin, CREATE_TENANT, json!({"p": "demo", "n": "   "})).await, "BAD_USER_INPUT");
        assert_eq!(code(&app, &admin, CREATE_ACTION, json!({"t": "demo", "n": "r", "k": "REGISTER"})).await, "BAD_USER_INPUT");
        assert_eq!(code(&app, &admin, CREATE_ACTION, json!({"t": "demo", "n": "d", "k": "DEREGISTER", "st": 2})).await, "BAD_USER_INPUT");
        assert_eq!(code(&app, &admin, CREATE_ACTION, json!({"t": "demo", "id": "deregister", "n": "d", "k": "DEREGISTER"})).await, "ALREADY_EXISTS");
        assert_eq!(code(&app, &admin, CREATE_WORKFLOW, json!({"t": "demo", "id": "68a5ae7a4cb9e87b88b7d344", "n": "w", "st": 2})).await, "ALREADY_EXISTS");
        assert_eq!(code(&app, &admin, CREATE_WORKFLOW, json!({"t": "demo", "id": "xyz", "n": "w", "st": 2})).await, "BAD_USER_INPUT");
        assert_eq!(code(&app, &admin, CREATE_WORKFLOW, json!({"t": "demo", "n": "w", "st": 0})).await, "BAD_USER_INPUT");

        // Concurrent creates of one id: exactly one wins.
        let tries = (0..10).map(|_| app.gql(Some(&admin), CREATE_TENANT, json!({"p": "demo", "id": "race", "n": "Race"})));
        let bodies = futures::future::join_all(tries).await;
        let won = bodies.iter().filter(|b| b.get("errors").is_none()).count();
        assert_eq!(won, 1, "{bodies:?}");
        assert!(bodies.iter().filter(|b| b.get("errors").is_some()).all(|b| error_code(b) == "ALREADY_EXISTS"));

        let data = ok(&app, &app.alice(), "{ tenants(tenantId: \"demo\") { id } }", json!({})).await;
        assert_eq!(data["tenants"].as_array().unwrap().len(), 3, "demo, demo-east and race only");
    }

    async fn only_admins_manage_and_only_inside_their_own_tree(app: TestApp) {
        let alice = app.alice();
        assert_eq!(code(&app, &alice, CREATE_TENANT, json!({"p": "demo", "n": "x"})).await, "FORBIDDEN");
        assert_eq!(code(&app, &alice, "mutation { deleteAction(id: \"deregister\") }", json!({})).await, "FORBIDDEN");
        let acme_admin = admin_of(&app, "acme");
        assert_eq!(code(&app, &acme_admin, CREATE_TENANT, json!({"p": "demo", "n": "x"})).await, "FORBIDDEN");
        assert_eq!(code(&app, &acme_admin, CREATE_ACTION, json!({"t": "demo-east", "n": "x", "k": "DEREGISTER"})).await, "FORBIDDEN");
        // Another tenant's items are simply not found, whatever the admin does with them.
        assert_eq!(code(&app, &acme_admin, "mutation { updateAction(id: \"deregister\", name: \"mine\") { id } }", json!({})).await, "ACTION_NOT_FOUND");
        assert_eq!(code(&app, &acme_admin, "mutation { deleteAction(id: \"deregister\") }", json!({})).await, "ACTION_NOT_FOUND");
        assert_eq!(code(&app, &acme_admin, "mutation { renameWorkflow(id: \"68a5ae7a4cb9e87b88b7d344\", name: \"mine\") { id } }", json!({})).await, "WORKFLOW_NOT_FOUND");
        assert_eq!(code(&app, &acme_admin, "mutation { renameTenant(tenantId: \"demo\", name: \"mine\") { id } }", json!({})).await, "FORBIDDEN");
        assert_eq!(code(&app, &app.bob(), "{ workflows(tenantId: \"demo\") { id } }", json!({})).await, "FORBIDDEN");
        let anonymous = app.gql(None, "{ actions(tenantId: \"demo\") { id } }", json!({})).await;
        assert_eq!(error_code(&anonymous), "UNAUTHENTICATED");

        // An action named by an unfinished upload stays; its own admin may delete it after.
        let admin = admin_of(&app, "demo");
        let (upload, _) = app.prepare_demo().await;
        assert_eq!(code(&app, &admin, "mutation { deleteAction(id: \"register-prepaid\") }", json!({})).await, "IN_USE");
        let cancel = "mutation($id: String!) { cancelBatchUpload(tenantId: \"demo\", uploadId: $id) { status } }";
        ok(&app, &alice, cancel, json!({"id": upload})).await;
        let data = ok(&app, &admin, "mutation { deleteAction(id: \"register-prepaid\") }", json!({})).await;
        assert_eq!(data["deleteAction"], "register-prepaid");
        let data = ok(&app, &alice, "{ actions(tenantId: \"demo\") { id } }", json!({})).await;
        assert_eq!(data["actions"].as_array().unwrap().len(), 3);
    }
}

on_both_backends! {
    async fn catalog_ids_belong_to_each_customer_and_reveal_nothing_across_customers(app: TestApp) {
        let acme_admin = admin_of(&app, "acme");
        // demo's ids are free for acme: nothing tells bob's admin they exist elsewhere.
        let data = ok(&app, &acme_admin, CREATE_ACTION, json!({"t": "acme", "id": "register-prepaid", "n": "Acme register", "k": "REGISTER", "st": 6})).await;
        assert_eq!(data["createAction"], json!({"id": "register-prepaid", "tenantId": "acme", "kind": "REGISTER", "targetServiceType": 6}));
        let data = ok(&app, &acme_admin, CREATE_WORKFLOW, json!({"t": "acme", "id": "68a5ae7a4cb9e87b88b7d345", "n": "Acme inventory", "st": 6})).await;
        assert_eq!(data["createWorkflow"]["tenantId"], "acme");
        // Within a customer an id is still taken once.
        assert_eq!(code(&app, &acme_admin, CREATE_ACTION, json!({"t": "acme", "id": "register-prepaid", "n": "x", "k": "DEREGISTER"})).await, "ALREADY_EXISTS");
        assert_eq!(code(&app, &acme_admin, CREATE_WORKFLOW, json!({"t": "acme", "id": "68a5ae7a4cb9e87b88b7d345", "n": "x", "st": 2})).await, "ALREADY_EXISTS");

        // Each customer's lookups see only its own entry under the shared id.
        let list = "query($t: String!) { actions(tenantId: $t) { id name targetServiceType } workflows(tenantId: $t) { id name } }";
        let demo = ok(&app, &app.alice(), list, json!({"t": "demo"})).await;
        let acme = ok(&app, &app.bob(), list, json!({"t": "acme"})).await;
        let named = |data: &Value, kind: &str, id: &str| -> Vec<String> {
            data[kind].as_array().unwrap().iter().filter(|a| a["id"] == id).map(|a| a["name"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(named(&demo, "actions", "register-prepaid"), ["Register Prepaid"]);
        assert_eq!(named(&acme, "actions", "register-prepaid"), ["Acme register"]);
        assert_eq!(named(&demo, "workflows", "68a5ae7a4cb9e87b88b7d345"), ["Inventory Audit"]);
        assert_eq!(named(&acme, "workflows", "68a5ae7a4cb9e87b88b7d345"), ["Acme inventory"]);

        // Uploads resolve the id in their own customer's catalog: acme's REGISTER gives
        // service type 6 and matches acme's inventory workflow; demo's still needs type 2.
        let bob_upload = app
            .upload_csv(&app.bob(), json!({"tenantId": "acme", "assignActionId": "register-prepaid", "workflowId": "68a5ae7a4cb9e87b88b7d345", "rowCount": 2}), csv("imei", &imeis(63, 2)))
            .await;
        let alice_upload = app
            .upload_csv(&app.alice(), json!({"assignActionId": "register-prepaid", "workflowId": "68a5ae7a4cb9e87b88b7d344", "rowCount": 2}), csv("imei", &imeis(64, 2)))
            .await;
        let mismatch = app.gql(Some(&app.alice()), PREPARE, json!({"tenantId": "demo", "assignActionId": "register-prepaid", "workflowId": "68a5ae7a4cb9e87b88b7d345", "rowCount": 1, "deviceType": 1})).await;
        assert_eq!(error_code(&mismatch), "WORKFLOW_SERVICE_TYPE_MISMATCH");
        app.drain().await;
        assert_eq!(app.upload_state(&app.bob(), "acme", &bob_upload).await["status"], "COMPLETED");
        assert_eq!(app.upload_state(&app.alice(), "demo", &alice_upload).await["status"], "COMPLETED");

        // Changing or deleting its own entry leaves the other customer's alone; demo's devices
        // in demo's workflow 345 do not hold acme's workflow 345, nor the other way round.
        ok(&app, &acme_admin, "mutation { updateAction(id: \"register-prepaid\", name: \"Acme only\") { id } }", json!({})).await;
        let inventory = app
            .upload_csv(&app.alice(), json!({"assignActionId": "register-prepaid", "rowCount": 2}), csv("imei", &imeis(65, 2)))
            .await;
        app.drain().await;
        assert_eq!(app.upload_state(&app.alice(), "demo", &inventory).await["status"], "COMPLETED");
        let del_workflow = "mutation { deleteWorkflow(id: \"68a5ae7a4cb9e87b88b7d345\") }";
        assert_eq!(code(&app, &acme_admin, del_workflow, json!({})).await, "IN_USE", "acme's own devices are in it");
        ok(&app, &acme_admin, "mutation { deleteAction(id: \"register-prepaid\") }", json!({})).await;
        let demo = ok(&app, &app.alice(), list, json!({"t": "demo"})).await;
        assert_eq!(named(&demo, "actions", "register-prepaid"), ["Register Prepaid"]);
        let acme = ok(&app, &app.bob(), list, json!({"t": "acme"})).await;
        assert!(named(&acme, "actions", "register-prepaid").is_empty());
        let gone = app.gql(Some(&app.bob()), PREPARE, json!({"tenantId": "acme", "assignActionId": "register-prepaid", "rowCount": 1, "deviceType": 1})).await;
        assert_eq!(error_code(&gone), "ACTION_NOT_FOUND");
        // demo's admin deletes demo's unused workflow 345 though acme's devices are in acme's.
        let demo_admin = admin_of(&app, "demo");
        assert_eq!(ok(&app, &demo_admin, del_workflow, json!({})).await["deleteWorkflow"], "68a5ae7a4cb9e87b88b7d345");
        let acme = ok(&app, &app.bob(), list, json!({"t": "acme"})).await;
        assert_eq!(named(&acme, "workflows", "68a5ae7a4cb9e87b88b7d345"), ["Acme inventory"]);
    }
}
