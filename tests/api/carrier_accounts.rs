//! Carrier accounts (issue 14): administrators manage them inside their own tree like
//! actions; the client secret is write-only, sealed at rest with the row as associated data,
//! and appears in no answer and no log line.

use std::time::Duration;

use base64::Engine;
use entity::carrier_account;
use fleetload::auth::Permission;
use fleetload::carrier::{SealError, accounts};
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::operability::{Process, free_port, wait_ready};

const SECRET: &str = "sup3r-s3cret-Cl1ent-v4lue";
const ROTATED: &str = "r0tated-s3cret-Cl1ent-v4lue";

const CREATE: &str = "mutation($input: CreateCarrierAccountInput!) { createCarrierAccount(input: $input) { id tenantId name baseUrl clientId accountNumber rateLimitPerSecond batchSize hasClientSecret createdAt updatedAt } }";
const UPDATE: &str = "mutation($input: UpdateCarrierAccountInput!) { updateCarrierAccount(input: $input) { id tenantId name baseUrl clientId accountNumber rateLimitPerSecond batchSize hasClientSecret createdAt updatedAt } }";
const LIST: &str = "query($t: String!) { carrierAccounts(tenantId: $t) { id tenantId name baseUrl clientId accountNumber rateLimitPerSecond batchSize hasClientSecret } }";
const DELETE: &str = "mutation($id: String!) { deleteCarrierAccount(id: $id) }";

/// The app with a carrier secret key: generated in the data dir on SQLite (the embedded
/// default), configured on PostgreSQL (where nothing is generated).
async fn app_with_key(backend: Backend) -> TestApp {
    spawn_app_with(backend, |s| {
        if backend == Backend::Postgres {
            s.carrier_secret_key = Some(
                base64::engine::general_purpose::STANDARD
                    .encode([42u8; 32])
                    .into(),
            );
        }
    })
    .await
}

macro_rules! with_key_on_both_backends {
    ($(async fn $name:ident($app:ident: TestApp) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn body($app: TestApp) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                body(app_with_key(Backend::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                body(app_with_key(Backend::Postgres).await).await
            }
        }
    )*};
}

fn admin_of(app: &TestApp, tenant: &str) -> String {
    app.token_with("dana", tenant, &[Permission::Admin])
}

fn tmo(id: Option<&str>) -> Value {
    let mut input = json!({
        "tenantId": "demo",
        "name": "T-Mobile main",
        "baseUrl": "https://carrier.example.com/api/m2m/v1",
        "clientId": "fleetload-client",
        "clientSecret": SECRET,
        "accountNumber": "0342077109-00001",
        "rateLimitPerSecond": 20,
        "batchSize": 50,
    });
    if let Some(id) = id {
        input["id"] = json!(id);
    }
    input
}

/// Sends a request and checks that no secret is in the answer, whatever it is.
async fn send(app: &TestApp, token: &str, query: &str, vars: Value) -> Value {
    let body = app.gql(Some(token), query, vars).await;
    let text = body.to_string();
    assert!(
        !text.contains(SECRET) && !text.contains(ROTATED),
        "a secret in {text}"
    );
    body
}

async fn ok(app: &TestApp, token: &str, query: &str, vars: Value) -> Value {
    let body = send(app, token, query, vars).await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"].clone()
}

/// The code and message of the first error.
async fn refused(app: &TestApp, token: &str, query: &str, vars: Value) -> (String, String) {
    let body = send(app, token, query, vars).await;
    let message = body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (error_code(&body), message)
}

async fn stored(app: &TestApp, root: &str, id: &str) -> carrier_account::Model {
    entity::prelude::CarrierAccount::find_by_id((root.to_owned(), id.to_owned()))
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no carrier account {root}/{id}"))
}

with_key_on_both_backends! {
    async fn an_admin_creates_lists_updates_rotates_and_deletes_an_account(app: TestApp) {
        let admin = admin_of(&app, "demo");
        let created = ok(&app, &admin, CREATE, json!({"input": tmo(Some("tmo-main"))})).await["createCarrierAccount"].clone();
        assert_eq!(created["id"], "tmo-main");
        assert_eq!(created["tenantId"], "demo");
        assert_eq!(created["baseUrl"], "https://carrier.example.com/api/m2m/v1");
        assert_eq!((created["rateLimitPerSecond"].as_i64(), created["batchSize"].as_i64()), (Some(20), Some(50)));
        assert_eq!(created["hasClientSecret"], true);
        assert_eq!(created["createdAt"], created["updatedAt"]);
        // No output field carries the secret, not even by another name.
        assert!(created.as_object().unwrap().keys().all(|k| k != "clientSecret"));

        // At rest: sealed, not the plaintext, and it opens back with the key for its row.
        let row = stored(&app, "demo", "tmo-main").await;
        assert!(!row.client_secret_sealed.contains(SECRET));
        let secrets = app.state.carrier_secrets.clone().expect("a key");
        let creds = accounts::credentials(&app.state.db, &secrets, "demo", "tmo-main").await.unwrap().unwrap();
        assert_eq!(creds.client_secret.expose_secret(), SECRET);
        assert_eq!(creds.base_url.as_str(), "https://carrier.example.com/api/m2m/v1");
        assert_eq!((creds.client_id.as_str(), creds.account_number.as_str()), ("fleetload-client", "0342077109-00001"));
        assert_eq!((creds.rate_limit_per_sec, creds.batch_size), (20, 50));
        assert!(!format!("{creds:?}").contains(SECRET));
        assert!(accounts::credentials(&app.state.db, &secrets, "demo", "nope").await.unwrap().is_none());
        assert!(accounts::credentials(&app.state.db, &secrets, "acme", "tmo-main").await.unwrap().is_none());

        // A generated id, in a workspace; the list of a workspace inherits its parent's.
        let mut east = tmo(None);
        east["tenantId"] = json!("demo-east");
        east["name"] = json!("East");
        let generated = ok(&app, &admin, CREATE, json!({"input": east})).await["createCarrierAccount"]["id"].as_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
        let ids = |data: &Value| -> Vec<String> {
            data["carrierAccounts"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect()
        };
        let listed = ok(&app, &admin, LIST, json!({"t": "demo-east"})).await;
        assert_eq!(ids(&listed).len(), 2);
        assert!(ids(&listed).contains(&"tmo-main".to_owned()) && ids(&listed).contains(&generated));
        assert!(listed["carrierAccounts"].as_array().unwrap().iter().all(|a| a["hasClientSecret"] == true));
        assert_eq!(ids(&ok(&app, &admin, LIST, json!({"t": "demo"})).await), ["tmo-main"]);
        // What prepare will check: usable in a workspace below its owner, not above it or
        // in another customer's tree.
        let scope = |ancestry: &[&str]| fleetload::access::TenantScope {
            tenant_id: ancestry[0].to_owned(),
            ancestry: ancestry.iter().map(|t| t.to_string()).collect(),
        };
        let found = accounts::in_scope(&app.state.db, &scope(&["demo-east", "demo"]), "tmo-main").await.unwrap();
        assert_eq!((found.root_tenant_id.as_str(), found.tenant_id.as_str()), ("demo", "demo"));
        assert!(accounts::in_scope(&app.state.db, &scope(&["demo-east", "demo"]), &generated).await.is_ok());
        for (ancestry, id) in [(&["demo"][..], generated.as_str()), (&["acme"][..], "tmo-main"), (&["demo"][..], "nope")] {
            let err = accounts::in_scope(&app.state.db, &scope(ancestry), id).await.unwrap_err();
            assert_eq!(err.code(), "CARRIER_ACCOUNT_NOT_FOUND", "{ancestry:?} {id}");
        }

        // Update without a secret keeps it; with one, rotates it.
        let updated = ok(&app, &admin, UPDATE, json!({"input": {"id": "tmo-main", "name": "  Main  ", "rateLimitPerSecond": 5, "batchSize": 100, "baseUrl": "http://127.0.0.1:9/carrier"}})).await["updateCarrierAccount"].clone();
        assert_eq!(updated["name"], "Main");
        assert_eq!((updated["rateLimitPerSecond"].as_i64(), updated["batchSize"].as_i64()), (Some(5), Some(100)));
        assert_eq!(updated["baseUrl"], "http://127.0.0.1:9/carrier");
        assert_eq!(updated["clientId"], "fleetload-client");
        assert_eq!(updated["createdAt"], created["createdAt"]);
        let before_rotation = stored(&app, "demo", "tmo-main").await.client_secret_sealed;
        assert_eq!(before_rotation, row.client_secret_sealed, "a secret not given stays as sealed");
        let creds = accounts::credentials(&app.state.db, &secrets, "demo", "tmo-main").await.unwrap().unwrap();
        assert_eq!(creds.client_secret.expose_secret(), SECRET);

        let rotated = ok(&app, &admin, UPDATE, json!({"input": {"id": "tmo-main", "clientSecret": ROTATED, "clientId": "client-2", "accountNumber": "42"}})).await["updateCarrierAccount"].clone();
        assert_eq!((rotated["clientId"].as_str(), rotated["accountNumber"].as_str()), (Some("client-2"), Some("42")));
        assert_eq!(rotated["name"], "Main");
        let row = stored(&app, "demo", "tmo-main").await;
        assert_ne!(row.client_secret_sealed, before_rotation);
        assert!(!row.client_secret_sealed.contains(ROTATED));
        let creds = accounts::credentials(&app.state.db, &secrets, "demo", "tmo-main").await.unwrap().unwrap();
        assert_eq!(creds.client_secret.expose_secret(), ROTATED);

        // Delete: gone, then not found.
        assert_eq!(ok(&app, &admin, DELETE, json!({"id": "tmo-main"})).await["deleteCarrierAccount"], "tmo-main");
        assert_eq!(refused(&app, &admin, DELETE, json!({"id": "tmo-main"})).await.0, "CARRIER_ACCOUNT_NOT_FOUND");
        assert_eq!(refused(&app, &admin, UPDATE, json!({"input": {"id": "tmo-main", "name": "x"}})).await.0, "CARRIER_ACCOUNT_NOT_FOUND");
        assert!(accounts::credentials(&app.state.db, &secrets, "demo", "tmo-main").await.unwrap().is_none());
        assert_eq!(ids(&ok(&app, &admin, LIST, json!({"t": "demo-east"})).await), [generated]);
    }

    async fn a_sealed_secret_copied_to_another_row_does_not_open(app: TestApp) {
        let admin = admin_of(&app, "demo");
        ok(&app, &admin, CREATE, json!({"input": tmo(Some("tmo-main"))})).await;
        let mut other = tmo(Some("tmo-backup"));
        other["clientSecret"] = json!(ROTATED);
        ok(&app, &admin, CREATE, json!({"input": other})).await;
        // acme's account of the same id: another customer's row with the same `id`.
        let acme_admin = admin_of(&app, "acme");
        let mut acme = tmo(Some("tmo-main"));
        acme["tenantId"] = json!("acme");
        acme["clientSecret"] = json!(ROTATED);
        ok(&app, &acme_admin, CREATE, json!({"input": acme})).await;

        let sealed = stored(&app, "demo", "tmo-main").await.client_secret_sealed;
        let secrets = app.state.carrier_secrets.clone().unwrap();
        for (root, id) in [("demo", "tmo-backup"), ("acme", "tmo-main")] {
            let mut row: carrier_account::ActiveModel = stored(&app, root, id).await.into();
            row.client_secret_sealed = Set(sealed.clone());
            row.update(&app.state.db).await.unwrap();
            let err = accounts::credentials(&app.state.db, &secrets, root, id).await.unwrap_err();
            assert!(
                matches!(err, accounts::CredentialsError::Secret { source: SealError::NotAuthentic, .. }),
                "{root}/{id}: {err}"
            );
            assert!(!err.to_string().contains(SECRET));
        }
        // The original still opens; another key opens nothing.
        let creds = accounts::credentials(&app.state.db, &secrets, "demo", "tmo-main").await.unwrap().unwrap();
        assert_eq!(creds.client_secret.expose_secret(), SECRET);
        let wrong = fleetload::carrier::SecretBox::new([1; 32]);
        assert!(accounts::credentials(&app.state.db, &wrong, "demo", "tmo-main").await.is_err());
    }

    async fn every_bad_field_gets_a_typed_error_that_names_it_and_changes_nothing(app: TestApp) {
        let admin = admin_of(&app, "demo");
        ok(&app, &admin, CREATE, json!({"input": tmo(Some("tmo-main"))})).await;
        let bad_fields: Vec<(&str, Value, &str)> = vec![
            ("id", json!("has space"), "id must be"),
            ("id", json!("x".repeat(65)), "id must be"),
            ("name", json!("   "), "name must be"),
            ("name", json!("n".repeat(201)), "name must be"),
            ("baseUrl", json!("carrier.example.com"), "baseUrl must be an absolute"),
            ("baseUrl", json!("ftp://carrier.example.com/"), "baseUrl must be an absolute"),
            ("baseUrl", json!(format!("https://user:{SECRET}@carrier.example.com/")), "baseUrl must not hold credentials"),
            ("baseUrl", json!("https://carrier.example.com/?apikey=1"), "baseUrl must not have a query"),
            ("baseUrl", json!("https://carrier.example.com/#x"), "baseUrl must not have a query or fragment"),
            ("baseUrl", json!(format!("https://e.com/{}", "p".repeat(2048))), "baseUrl must be at most 2048"),
            ("clientId", json!(""), "clientId must be 1 to 256"),
            ("clientId", json!("c".repeat(257)), "clientId must be 1 to 256"),
            ("clientId", json!("tab\there"), "clientId must be 1 to 256 printable"),
            ("clientSecret", json!(""), "clientSecret must be 1 to 1024 bytes"),
            ("clientSecret", json!(format!("{SECRET}{}", "s".repeat(1024))), "clientSecret must be 1 to 1024 bytes"),
            ("accountNumber", json!(""), "accountNumber must be 1 to 64"),
            ("accountNumber", json!("1".repeat(65)), "accountNumber must be 1 to 64"),
            ("rateLimitPerSecond", json!(0), "rateLimitPerSecond must be 1 to 10000"),
            ("rateLimitPerSecond", json!(10_001), "rateLimitPerSecond must be 1 to 10000"),
            ("batchSize", json!(0), "batchSize must be 1 to 100"),
            ("batchSize", json!(101), "batchSize must be 1 to 100"),
        ];
        for (field, value, message) in &bad_fields {
            let mut input = tmo(Some("tmo-new"));
            input[*field] = value.clone();
            let (code, said) = refused(&app, &admin, CREATE, json!({"input": input})).await;
            assert_eq!(code, "BAD_USER_INPUT", "create {field} = {value}: {said}");
            assert!(said.starts_with(message), "create {field}: {said}");
            if *field == "id" {
                continue;
            }
            let mut changes = json!({"id": "tmo-main"});
            changes[*field] = value.clone();
            let (code, said) = refused(&app, &admin, UPDATE, json!({"input": changes})).await;
            assert_eq!(code, "BAD_USER_INPUT", "update {field} = {value}: {said}");
            assert!(said.starts_with(message), "update {field}: {said}");
        }
        // Wrong types and missing fields are refused by the schema, the value not echoed.
        let mut typed = tmo(Some("tmo-new"));
        typed["rateLimitPerSecond"] = json!("fast");
        assert_eq!(refused(&app, &admin, CREATE, json!({"input": typed})).await.0, "GRAPHQL_VALIDATION_FAILED");
        let mut missing = tmo(Some("tmo-new"));
        missing.as_object_mut().unwrap().remove("clientSecret");
        assert_eq!(refused(&app, &admin, CREATE, json!({"input": missing})).await.0, "GRAPHQL_VALIDATION_FAILED");
        // A secret of the wrong type is not quoted back, as a `String` argument's would be.
        for wrong in [json!({"value": SECRET}), json!(987_654_321), json!([SECRET])] {
            let mut secret_typed = tmo(Some("tmo-new"));
            secret_typed["clientSecret"] = wrong.clone();
            let (code, said) = refused(&app, &admin, CREATE, json!({"input": secret_typed})).await;
            assert_eq!(code, "GRAPHQL_VALIDATION_FAILED", "{said}");
            assert!(!said.contains("987654321"), "{said}");
            let (code, said) = refused(&app, &admin, UPDATE, json!({"input": {"id": "tmo-main", "clientSecret": wrong}})).await;
            assert_eq!(code, "GRAPHQL_VALIDATION_FAILED", "{said}");
            assert!(!said.contains("987654321"), "{said}");
        }
        let inline = "mutation { updateCarrierAccount(input: {id: \"tmo-main\", clientSecret: 987654321}) { id } }";
        let (code, said) = refused(&app, &admin, inline, json!({})).await;
        assert_eq!(code, "GRAPHQL_VALIDATION_FAILED", "{said}");
        assert!(!said.contains("987654321"), "{said}");

        // A taken id, within the customer; concurrent creates of one id: exactly one wins.
        assert_eq!(refused(&app, &admin, CREATE, json!({"input": tmo(Some("tmo-main"))})).await.0, "ALREADY_EXISTS");
        let tries = (0..8).map(|_| send(&app, &admin, CREATE, json!({"input": tmo(Some("race"))})));
        let bodies = futures::future::join_all(tries).await;
        assert_eq!(bodies.iter().filter(|b| b.get("errors").is_none()).count(), 1, "{bodies:?}");
        assert!(bodies.iter().filter(|b| b.get("errors").is_some()).all(|b| error_code(b) == "ALREADY_EXISTS"));
        ok(&app, &admin, DELETE, json!({"id": "race"})).await;
        // Nothing was created or changed by any of them.
        let listed = ok(&app, &admin, LIST, json!({"t": "demo"})).await;
        assert_eq!(listed["carrierAccounts"].as_array().unwrap().len(), 1, "{listed}");
        let account = &listed["carrierAccounts"][0];
        assert_eq!((account["name"].as_str(), account["rateLimitPerSecond"].as_i64()), (Some("T-Mobile main"), Some(20)));
        let secrets = app.state.carrier_secrets.clone().unwrap();
        let creds = accounts::credentials(&app.state.db, &secrets, "demo", "tmo-main").await.unwrap().unwrap();
        assert_eq!(creds.client_secret.expose_secret(), SECRET);
    }

    async fn only_admins_manage_accounts_and_only_inside_their_own_tree(app: TestApp) {
        let admin = admin_of(&app, "demo");
        ok(&app, &admin, CREATE, json!({"input": tmo(Some("tmo-main"))})).await;

        // READ (and UPDATE) users: forbidden, listing included.
        let alice = app.alice();
        let read_only = app.token_with("rita", "demo", &[Permission::Read]);
        for token in [&alice, &read_only] {
            assert_eq!(refused(&app, token, LIST, json!({"t": "demo"})).await.0, "FORBIDDEN");
            assert_eq!(refused(&app, token, CREATE, json!({"input": tmo(Some("mine"))})).await.0, "FORBIDDEN");
            assert_eq!(refused(&app, token, UPDATE, json!({"input": {"id": "tmo-main", "clientSecret": ROTATED}})).await.0, "FORBIDDEN");
            assert_eq!(refused(&app, token, DELETE, json!({"id": "tmo-main"})).await.0, "FORBIDDEN");
        }
        let anonymous = app.gql(None, LIST, json!({"t": "demo"})).await;
        assert_eq!(error_code(&anonymous), "UNAUTHENTICATED");

        // Another customer's admin: its tenants are forbidden, its accounts simply not found.
        let acme_admin = admin_of(&app, "acme");
        assert_eq!(refused(&app, &acme_admin, LIST, json!({"t": "demo"})).await.0, "FORBIDDEN");
        assert_eq!(refused(&app, &acme_admin, CREATE, json!({"input": tmo(Some("x"))})).await.0, "FORBIDDEN");
        assert_eq!(refused(&app, &acme_admin, UPDATE, json!({"input": {"id": "tmo-main", "clientSecret": ROTATED}})).await.0, "CARRIER_ACCOUNT_NOT_FOUND");
        assert_eq!(refused(&app, &acme_admin, DELETE, json!({"id": "tmo-main"})).await.0, "CARRIER_ACCOUNT_NOT_FOUND");
        // A workspace's admin does not reach its parent's account either.
        let east_admin = admin_of(&app, "demo-east");
        assert_eq!(refused(&app, &east_admin, UPDATE, json!({"input": {"id": "tmo-main", "name": "x"}})).await.0, "CARRIER_ACCOUNT_NOT_FOUND");
        assert_eq!(refused(&app, &east_admin, DELETE, json!({"id": "tmo-main"})).await.0, "CARRIER_ACCOUNT_NOT_FOUND");

        // The same id is free for acme, and each customer sees and changes only its own.
        let mut acme = tmo(Some("tmo-main"));
        acme["tenantId"] = json!("acme");
        acme["name"] = json!("Acme T-Mobile");
        ok(&app, &acme_admin, CREATE, json!({"input": acme})).await;
        ok(&app, &acme_admin, UPDATE, json!({"input": {"id": "tmo-main", "batchSize": 7}})).await;
        let demo = ok(&app, &admin, LIST, json!({"t": "demo"})).await;
        assert_eq!((demo["carrierAccounts"][0]["name"].as_str(), demo["carrierAccounts"][0]["batchSize"].as_i64()), (Some("T-Mobile main"), Some(50)));
        ok(&app, &acme_admin, DELETE, json!({"id": "tmo-main"})).await;
        assert_eq!(ok(&app, &admin, LIST, json!({"t": "demo"})).await["carrierAccounts"].as_array().unwrap().len(), 1);
        assert_eq!(stored(&app, "demo", "tmo-main").await.name, "T-Mobile main");
    }
}

/// PostgreSQL without `--carrier-secret-key`: account writes are refused with a typed code,
/// everything else (uploads, the rest of the catalog, listing, deleting) works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_key_on_a_shared_database_only_account_writes_are_refused() {
    // The harness gives every app a key; this one runs without.
    let app = spawn_app_with(Backend::Postgres, |s| s.carrier_secret_key = None).await;
    assert!(app.state.carrier_secrets.is_none());
    assert!(
        !app.data_dir
            .path()
            .join(fleetload::carrier::sealed::KEY_FILE)
            .exists()
    );
    let admin = admin_of(&app, "demo");
    let (code, message) = refused(&app, &admin, CREATE, json!({"input": tmo(Some("tmo-main"))})).await;
    assert_eq!(code, "CARRIER_SECRET_KEY_MISSING");
    assert!(message.contains("FLEETLOAD_CARRIER_SECRET_KEY"), "{message}");
    // Bad input is still told apart from the missing key.
    let mut bad = tmo(None);
    bad["batchSize"] = json!(0);
    assert_eq!(
        refused(&app, &admin, CREATE, json!({"input": bad})).await.0,
        "BAD_USER_INPUT"
    );
    // Permission comes first.
    assert_eq!(
        refused(&app, &app.alice(), CREATE, json!({"input": tmo(None)}))
            .await
            .0,
        "FORBIDDEN"
    );
    assert_eq!(
        ok(&app, &admin, LIST, json!({"t": "demo"})).await["carrierAccounts"],
        json!([])
    );

    // An account left by a process that had the key can be listed and deleted, not changed.
    let keyed = fleetload::carrier::SecretBox::new([42; 32]);
    let now = chrono::Utc::now();
    entity::prelude::CarrierAccount::insert(carrier_account::ActiveModel::from(carrier_account::Model {
        root_tenant_id: "demo".into(),
        id: "tmo-old".into(),
        tenant_id: "demo".into(),
        name: "Old".into(),
        base_url: "https://carrier.example.com/".into(),
        client_id: "c".into(),
        client_secret_sealed: keyed.seal(
            &SECRET.to_owned().into(),
            &accounts::secret_aad("demo", "tmo-old"),
        ),
        account_number: "1".into(),
        rate_limit_per_sec: 1,
        batch_size: 1,
        created_at: now,
        updated_at: now,
    }))
    .exec(&app.state.db)
    .await
    .unwrap();
    assert_eq!(
        ok(&app, &admin, LIST, json!({"t": "demo"})).await["carrierAccounts"][0]["id"],
        "tmo-old"
    );
    assert_eq!(
        refused(
            &app,
            &admin,
            UPDATE,
            json!({"input": {"id": "tmo-old", "name": "x"}})
        )
        .await
        .0,
        "CARRIER_SECRET_KEY_MISSING"
    );
    assert_eq!(
        ok(&app, &admin, DELETE, json!({"id": "tmo-old"})).await["deleteCarrierAccount"],
        "tmo-old"
    );

    // The rest of the API is unaffected.
    let id = app
        .upload_csv(&app.alice(), json!({"rowCount": 2}), csv("imei", &imeis(91, 2)))
        .await;
    app.drain().await;
    assert_eq!(
        app.upload_state(&app.alice(), "demo", &id).await["status"],
        "COMPLETED"
    );
    let action =
        "mutation { createAction(tenantId: \"demo\", id: \"x\", name: \"X\", kind: DEREGISTER) { id } }";
    assert_eq!(
        ok(&app, &admin, action, json!({})).await["createAction"]["id"],
        "x"
    );
}

/// A real `fleetload serve` logging everything (`RUST_LOG=trace`, JSON lines) while an admin
/// creates, rotates, mistypes and lists accounts, the secret in good and bad requests alike:
/// no line of its log holds a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_log_line_of_the_server_holds_a_client_secret() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data_dir = dir.path().join("data");
    let process = Process::spawn(
        "serve",
        &[
            ("FLEETLOAD_DATA_DIR", data_dir.display().to_string()),
            ("FLEETLOAD_LISTEN", format!("127.0.0.1:{port}")),
            ("FLEETLOAD_LOG_JSON", "1".into()),
            ("RUST_LOG", "trace".into()),
        ],
        &dir.path().join("serve.log"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_ready(&http, &format!("{url}/readyz"), &process).await;
    // The embedded default generated a key beside the JWT secret, owner-only.
    let key_file = data_dir.join(fleetload::carrier::sealed::KEY_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let mut settings = fleetload::config::Settings::embedded(&data_dir);
    settings.jwt_audience = "fleetload".into();
    let jwt = fleetload::startup::jwt_secret(&settings).unwrap();
    let token = fleetload::auth::mint_token(
        &jwt,
        "dana",
        "demo",
        &[Permission::Admin],
        "fleetload",
        None,
        3600,
    )
    .unwrap();
    let gql = |query: &'static str, vars: Value| {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            let resp = http
                .post(format!("{url}/graphql"))
                .bearer_auth(token)
                .json(&json!({"query": query, "variables": vars}))
                .send()
                .await
                .unwrap();
            let text = resp.text().await.unwrap();
            assert!(!text.contains(SECRET) && !text.contains(ROTATED), "{text}");
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };

    let created = gql(CREATE, json!({"input": tmo(Some("tmo-main"))})).await;
    assert!(created.get("errors").is_none(), "{created}");
    gql(
        UPDATE,
        json!({"input": {"id": "tmo-main", "clientSecret": ROTATED}}),
    )
    .await;
    // Refused requests carrying the secret: a taken id, a bad field, a wrong type, no access.
    assert_eq!(
        error_code(&gql(CREATE, json!({"input": tmo(Some("tmo-main"))})).await),
        "ALREADY_EXISTS"
    );
    let mut bad = tmo(Some("tmo-2"));
    bad["baseUrl"] = json!(format!("https://u:{SECRET}@carrier.example.com/"));
    assert_eq!(
        error_code(&gql(CREATE, json!({"input": bad})).await),
        "BAD_USER_INPUT"
    );
    let mut typed = tmo(Some("tmo-3"));
    typed["batchSize"] = json!(SECRET);
    assert_eq!(
        error_code(&gql(CREATE, json!({"input": typed})).await),
        "GRAPHQL_VALIDATION_FAILED"
    );
    assert_eq!(
        error_code(
            &gql(
                UPDATE,
                json!({"input": {"id": "elsewhere", "clientSecret": SECRET}})
            )
            .await
        ),
        "CARRIER_ACCOUNT_NOT_FOUND"
    );
    // Inline in the document, and over GET (in the query string, which is refused for a mutation).
    let inline = format!(
        "mutation {{ updateCarrierAccount(input: {{id: \"tmo-main\", clientSecret: \"{SECRET}\", batchSize: 0}}) {{ id }} }}"
    );
    let resp = http
        .post(format!("{url}/graphql"))
        .bearer_auth(&token)
        .json(&json!({"query": inline}))
        .send()
        .await
        .unwrap();
    assert!(!resp.text().await.unwrap().contains(SECRET));
    let resp = http
        .get(format!("{url}/graphql"))
        .bearer_auth(&token)
        .header("x-request-id", "carrier-log-probe")
        .query(&[("query", inline.as_str())])
        .send()
        .await
        .unwrap();
    assert!(!resp.text().await.unwrap().contains(SECRET));
    let listed = gql(LIST, json!({"t": "demo"})).await;
    assert_eq!(
        listed["data"]["carrierAccounts"][0]["hasClientSecret"], true,
        "{listed}"
    );

    // Give the log writer a moment, then read every line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = process.logs();
    assert!(logs.lines().count() > 20, "trace logging is on: {logs}");
    // The lines of the requests themselves are there (the request id is on each of them).
    assert!(logs.contains("carrier-log-probe"), "the requests are in the log");
    for line in logs.lines() {
        assert!(
            !line.contains(SECRET) && !line.contains(ROTATED),
            "a secret in the log: {line}"
        );
    }
    // The key itself is not logged either.
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert!(!logs.contains(key.trim()));
}

/// A carrier secret key that is not base64 of 32 bytes stops `fleetload serve` at once,
/// saying which setting is wrong and not echoing the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_carrier_secret_key_stops_the_start_with_a_clear_message() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let short = base64::engine::general_purpose::STANDARD.encode([5u8; 16]);
    for bad in [short.as_str(), "not-base64-at-all!"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetload"));
        for (key, _) in std::env::vars() {
            if key.starts_with("FLEETLOAD_") || key == "DATABASE_URL" || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .arg("serve")
            .env("FLEETLOAD_DATA_DIR", dir.path())
            .env("FLEETLOAD_LISTEN", "127.0.0.1:0")
            .env("FLEETLOAD_CARRIER_SECRET_KEY", bad)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("serve started with the carrier secret key {bad:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{stderr}");
        assert!(
            stderr.contains("FLEETLOAD_CARRIER_SECRET_KEY") && stderr.contains("32 bytes"),
            "{stderr}"
        );
        assert!(!stderr.contains(bad), "{stderr}");
    }
}
