//! `fleetload carrier-simulator`: the real binary serves the simulated carrier API with the
//! flags it was given, and stops on ctrl-c. The API itself is tested in-process
//! (`src/carrier_sim/tests.rs`).

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::cli::bin;

#[tokio::test]
async fn the_simulator_subcommand_serves_its_flags_until_ctrl_c() {
    let mut child = tokio::process::Command::new(bin())
        .args([
            "carrier-simulator",
            "--listen",
            "127.0.0.1:0",
            "--activation-delay-ms",
            "100",
            "--client-id",
            "sim-client",
            "--client-secret",
            "sim-secret-5f3a",
            "--auto-provision",
        ])
        .env_remove("FLEETLOAD_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the fleetload binary starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut first))
        .await
        .expect("the simulator prints its URL")
        .unwrap();
    // "carrier simulator at http://127.0.0.1:PORT (admin: …)": the given --listen, port 0.
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_owned();
    assert!(!url.ends_with(":9400") && !url.ends_with(":0"), "{url}");

    let http = reqwest::Client::new();
    let token = |id: &str, secret: &str| {
        http.post(format!("{url}/api/ts/v1/oauth2/token"))
            .basic_auth(id, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
    };
    assert_eq!(token("demo-client", "demo-secret").await.unwrap().status(), 401);
    let access: Value = token("sim-client", "sim-secret-5f3a")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = access["access_token"].as_str().unwrap();
    let session: Value = http
        .post(format!("{url}/api/m2m/v1/session/login"))
        .bearer_auth(access)
        .json(&json!({ "accountName": "acct" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = session["sessionToken"].as_str().unwrap();
    // Auto-provisioned: an ICCID nobody seeded can be activated.
    let iccid = "8901260000000000014";
    let answer: Value = http
        .post(format!("{url}/api/m2m/v1/devices/actions/activate"))
        .bearer_auth(access)
        .header("VZ-M2M-Token", session)
        .json(&json!({ "accountName": "acct", "devices": [
            { "deviceIds": [{ "kind": "iccid", "id": iccid }], "clientRequestId": "r1" }] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["results"][0]["status"], "ACCEPTED", "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let device: Value = http
        .get(format!("{url}/_sim/devices/{iccid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(device["state"], "active");
    let stats: Value = http
        .get(format!("{url}/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["applied_per_device"][iccid], 1);
    assert_eq!(stats["tokens_issued"], 1);

    let pid = child.id().unwrap().to_string();
    let sent = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the simulator stops on ctrl-c")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut output = String::new();
    stdout.read_to_string(&mut output).await.unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .await
        .unwrap();
    assert!(
        !format!("{first}{output}").contains("sim-secret-5f3a"),
        "{output}"
    );
}
