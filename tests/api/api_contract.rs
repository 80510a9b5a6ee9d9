//! The HTTP surface every client relies on: GraphiQL, probes, GraphQL over GET, AppSync
//! scalars, the template, and errors that never leak internals.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn graphiql_health_and_readiness_are_served() {
    let app = spawn_app(Backend::Sqlite).await;

    let graphiql = app.http.get(format!("{}/", app.url)).send().await.unwrap();
    assert_eq!(graphiql.status(), 200);
    assert!(graphiql.text().await.unwrap().to_lowercase().contains("graphiql"));

    let health = app.http.get(format!("{}/healthz", app.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.http.get(format!("{}/readyz", app.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    let app = spawn_app(Backend::Postgres).await;
    app.state.db.clone().close().await.unwrap();
    let ready = app.http.get(format!("{}/readyz", app.url)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn queries_work_over_get_too() {
    let app = spawn_app(Backend::Sqlite).await;
    let resp = app
        .http
        .get(format!("{}/graphql", app.url))
        .query(&[("query", "{ batchUploadTemplate(deviceType: 2) }")])
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["data"]["batchUploadTemplate"],
        "serialNumber\r\nR52N80ABCDE\r\n"
    );
}

#[tokio::test]
async fn the_template_names_the_key_column_and_gives_a_valid_example() {
    let app = spawn_app(Backend::Sqlite).await;
    let body = app
        .gql(
            None,
            "{ phone: batchUploadTemplate(deviceType: 1) tablet: batchUploadTemplate(deviceType: 2) }",
            json!({}),
        )
        .await;
    let phone = body["data"]["phone"].as_str().unwrap();
    let mut lines = phone.lines();
    assert_eq!(lines.next(), Some("imei,imei2"));
    let example = lines.next().unwrap().split(',').next().unwrap();
    assert!(
        fleetload::domain::device_uid::normalize(fleetload::domain::DeviceType::Smartphone, example).is_ok()
    );
    assert!(
        body["data"]["tablet"]
            .as_str()
            .unwrap()
            .starts_with("serialNumber")
    );

    let bad = app
        .gql(None, "{ batchUploadTemplate(deviceType: 9) }", json!({}))
        .await;
    assert_eq!(error_code(&bad), "INVALID_DEVICE_TYPE");
}

#[tokio::test]
async fn aws_datetimes_are_rfc3339_utc() {
    let app = spawn_app(Backend::Sqlite).await;
    let (upload_id, file_upload) = app.prepare_demo().await;
    let body = app
        .gql(
            Some(&app.alice()),
            "query($id: String!) { upload(tenantId: \"demo\", uploadId: $id) { createdAt queuedAt } }",
            json!({"id": upload_id}),
        )
        .await;
    let created = body["data"]["upload"]["createdAt"].as_str().unwrap();
    assert!(
        created.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );
    assert!(body["data"]["upload"]["queuedAt"].is_null());
    assert!(file_upload["expiresAt"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn an_internal_failure_reports_a_code_but_no_cause() {
    let app = spawn_app(Backend::Postgres).await;
    let token = app.alice();
    app.state.db.clone().close().await.unwrap();

    let body = app
        .gql(
            Some(&token),
            "{ uploads(tenantId: \"demo\") { totalCount } }",
            json!({}),
        )
        .await;

    assert_eq!(error_code(&body), "INTERNAL_SERVER_ERROR");
    let text = body.to_string().to_lowercase();
    for leak in ["pool", "sqlx", "connection", "postgres"] {
        assert!(!text.contains(leak), "error leaks {leak:?}: {body}");
    }
}

#[tokio::test]
async fn cors_allows_browser_uploads_and_queries() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in ["/graphql", "/objects"] {
        let resp = app
            .http
            .request(reqwest::Method::OPTIONS, format!("{}{path}", app.url))
            .header("Origin", "http://localhost:3000")
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization,content-type")
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        assert!(
            resp.headers().contains_key("access-control-allow-origin"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn malformed_documents_and_wrong_arguments_get_typed_errors() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.alice();
    let cases = [
        ("{ uploads(tenantId: ", json!({}), "GRAPHQL_PARSE_FAILED"),
        ("{ noSuchField }", json!({}), "GRAPHQL_VALIDATION_FAILED"),
        (
            "{ uploads { totalCount } }",
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "mutation { finalizeBatchUpload(tenantId: \"demo\", uploadId: \"x\") { status } }",
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        // async-graphql checks variable values while validating the document.
        (
            "query($n: Int!) { batchUploadTemplate(deviceType: $n) }",
            json!({"n": "one"}),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "mutation($b: AWSJSON) { finalizeBatchUpload(tenantId: \"demo\", uploadId: \"x\", billingDetail: $b) }",
            json!({"b": "{not json"}),
            "BAD_USER_INPUT",
        ),
    ];
    for (query, vars, code) in cases {
        let body = app.gql(Some(&token), query, vars).await;
        assert_eq!(error_code(&body), code, "{query}: {body}");
    }
}
