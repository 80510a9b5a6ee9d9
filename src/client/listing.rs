//! `fleetload status UPLOAD_ID` and `fleetload uploads`: one upload, or the recent ones.

use serde_json::{Value, json};

use super::{Client, ClientError};

const UPLOAD_FIELDS: &str = "id tenantId targetWorkspaceId status assignActionId workflowId \
    declaredRowCount totalRows processedRows succeeded failed failureReason createdBy createdAt \
    startedAt finishedAt";

/// Prints every field of one upload, one `name: value` line each.
pub async fn status(client: &Client, tenant: &str, upload_id: &str) -> Result<Value, ClientError> {
    let query = format!(
        "query($t: String!, $id: String!) {{ upload(tenantId: $t, uploadId: $id) {{ {UPLOAD_FIELDS} \
         progress {{ percentage rowsPerSecond etaSeconds recentErrors {{ rowNumber deviceUid errorCode message }} }} }} }}"
    );
    let data = client
        .gql(&query, json!({ "t": tenant, "id": upload_id }))
        .await?;
    let upload = data["upload"].clone();
    if upload.is_null() {
        return Err(ClientError::new(
            "UPLOAD_NOT_FOUND",
            format!("no upload {upload_id} in {tenant}"),
        ));
    }
    for field in UPLOAD_FIELDS.split_whitespace() {
        println!("{field:<18} {}", plain(&upload[field]));
    }
    let progress = &upload["progress"];
    println!("{:<18} {}", "percentage", plain(&progress["percentage"]));
    for error in progress["recentErrors"].as_array().into_iter().flatten() {
        println!(
            "{:<18} row {} {} {}: {}",
            "recentError",
            plain(&error["rowNumber"]),
            plain(&error["deviceUid"]),
            plain(&error["errorCode"]),
            plain(&error["message"])
        );
    }
    Ok(upload)
}

/// Prints the newest uploads of the tenant and its workspaces as a table.
pub async fn uploads(client: &Client, tenant: &str, first: u32) -> Result<(), ClientError> {
    let data = client
        .gql(
            "query($t: String!, $n: Int) { uploads(tenantId: $t, first: $n) { totalCount nodes { \
             id status targetWorkspaceId assignActionId totalRows declaredRowCount succeeded failed createdBy createdAt } } }",
            json!({ "t": tenant, "n": first }),
        )
        .await?;
    let connection = &data["uploads"];
    println!(
        "{:<36}  {:<21}  {:<12}  {:>8}  {:>8}  {:>8}  {:<8}  created",
        "id", "status", "workspace", "rows", "ok", "failed", "by"
    );
    for u in connection["nodes"].as_array().into_iter().flatten() {
        let rows = if u["totalRows"].is_null() {
            &u["declaredRowCount"]
        } else {
            &u["totalRows"]
        };
        println!(
            "{:<36}  {:<21}  {:<12}  {:>8}  {:>8}  {:>8}  {:<8}  {}",
            plain(&u["id"]),
            plain(&u["status"]),
            plain(&u["targetWorkspaceId"]),
            plain(rows),
            plain(&u["succeeded"]),
            plain(&u["failed"]),
            plain(&u["createdBy"]),
            plain(&u["createdAt"]),
        );
    }
    println!("({} in all)", plain(&connection["totalCount"]));
    Ok(())
}

/// A JSON value as a person reads it: strings bare, null as `-`.
pub(super) fn plain(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
