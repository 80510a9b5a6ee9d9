//! `schema.graphql` at the repository root is the SDL of the running schema.

#[test]
fn schema_graphql_matches_the_running_schema() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    let running = fleetload::graphql::sdl();
    assert!(
        committed == running,
        "schema.graphql is stale: run `cargo run -- schema > schema.graphql`\n--- running schema ---\n{running}"
    );
}

#[test]
fn the_schema_command_prints_the_sdl() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetload"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), fleetload::graphql::sdl());
}

#[test]
fn the_drop_in_mutations_keep_their_appsync_signatures() {
    let sdl = fleetload::graphql::sdl();
    assert!(sdl.contains(
        "prepareBatchUpload(tenantId: String!, assignActionId: String!, rowCount: Int!, deviceType: Int!, workflowId: String, brandId: Int, provisionType: String, targetWorkspaceId: String): PrepareBatchUploadPayload!"
    ));
    assert!(sdl.contains(
        "finalizeBatchUpload(tenantId: String!, uploadId: String!, workflowId: String, simControlName: String, simControlId: String, billingDetail: AWSJSON): UploadStatus!"
    ));
    assert!(sdl.contains("scalar AWSJSON") && sdl.contains("scalar AWSDateTime"));
}
