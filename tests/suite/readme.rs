//! The claim policies README.md recommends work, each with its key source, against the
//! emulator's policy evaluation; and the policy of the AWS fleet-provisioning guide, which
//! README warns about, does not cover the default key source.

use crate::common;

use std::time::Duration;

use crate::common::{TestEmulator, key_pool, start_engine, submit};
use fleet_station::Error;
use fleet_station::emulator::policy::{ACCOUNT, REGION};
use fleet_station::ledger::Ledger;
use fleet_station::provision::KeyPlan;
use fleet_station::provision::health::LineError;
use fleet_station::telemetry;

/// The JSON blocks of README's "Claim policies" section, placeholders filled for the
/// emulator and the test engine's station id.
fn readme_policies() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Claim policies")
        .nth(1)
        .expect("README has a Claim policies section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```json")
        .skip(1)
        .map(|b| {
            b.split("```")
                .next()
                .unwrap()
                .replace("REGION", REGION)
                .replace("ACCOUNT", ACCOUNT)
                .replace("TEMPLATE", "FleetTemplate")
                .replace("station-1", "test-station")
        })
        .collect()
}

/// Provisions one device with `policy` as the claim policy; the line's error if it stopped.
async fn provision_with(policy: &str, aws_keys: bool) -> Option<Error> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claim-policy.json");
    std::fs::write(&path, policy).unwrap();
    let emu = TestEmulator::start_with(|c| c.claim_policy = Some(path.clone())).await;
    let mut cfg = common::engine_config(&emu, 1, "FleetTemplate", "{serial}");
    cfg.aws_keys = aws_keys;
    cfg.request_timeout = Duration::from_secs(5);
    let ledger = Ledger::open(&emu.dir.path().join("ledger.db"), "t").unwrap();
    let (telemetry, _snap, _agg) = telemetry::start();
    let (engine, halt) = start_engine(cfg, key_pool(), &ledger, telemetry);
    let key = if aws_keys {
        KeyPlan::Aws
    } else {
        KeyPlan::Pool
    };
    let (_, rx) = submit(&engine.submitter(), &ledger, "SN-README", "j", key).await;
    match rx.await.unwrap() {
        Ok(creds) => {
            assert_eq!(creds.thing_name, "SN-README");
            None
        }
        Err(e) => Some(halt.take().unwrap_or_else(|| panic!("{e}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_policies_in_the_readme_work_with_their_key_sources() {
    let policies = readme_policies();
    assert_eq!(policies.len(), 2, "one policy per kind of key source");
    for p in &policies {
        serde_json::from_str::<serde_json::Value>(p).expect("README's policy is JSON");
    }
    assert!(provision_with(&policies[0], false).await.is_none());
    assert!(provision_with(&policies[1], true).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_guide_policy_does_not_cover_create_from_csr() {
    // The claim policy of the fleet-provisioning guide (docs/aws-fleet-provisioning.md §6).
    let guide = format!(
        r#"{{ "Version": "2012-10-17",
  "Statement": [
    {{ "Effect": "Allow", "Action": ["iot:Connect"], "Resource": "*" }},
    {{ "Effect": "Allow", "Action": ["iot:Publish","iot:Receive"],
      "Resource": [ "arn:aws:iot:{REGION}:{ACCOUNT}:topic/$aws/certificates/create/*",
                    "arn:aws:iot:{REGION}:{ACCOUNT}:topic/$aws/provisioning-templates/FleetTemplate/provision/*" ] }},
    {{ "Effect": "Allow", "Action": "iot:Subscribe",
      "Resource": [ "arn:aws:iot:{REGION}:{ACCOUNT}:topicfilter/$aws/certificates/create/*",
                    "arn:aws:iot:{REGION}:{ACCOUNT}:topicfilter/$aws/provisioning-templates/FleetTemplate/provision/*" ] }} ] }}"#
    );
    // It covers CreateKeysAndCertificate …
    assert!(provision_with(&guide, true).await.is_none());
    // … not CreateCertificateFromCsr: the SUBSCRIBE to its replies is refused (3.1.1 closes).
    let e = provision_with(&guide, false)
        .await
        .expect("the line stopped");
    assert!(
        matches!(
            e,
            Error::Line(LineError::SubscribeClosed { .. } | LineError::SubscribeRefused { .. })
        ),
        "{e:?}"
    );
}
