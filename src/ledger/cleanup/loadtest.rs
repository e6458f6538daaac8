//! A load test's litter, removed: every certificate and thing a load test created, read from
//! the ledger in its report folder, as steps in an order AWS accepts ([`loadtest_plan`]),
//! rendered as a bash script of AWS CLI commands ([`LoadtestCleanup::script`]) and as JSON
//! ([`LoadtestCleanup::json`]). `station loadtest --cleanup-plan DIR` writes both into DIR
//! (`cleanup.sh`, `cleanup.json`).
//!
//! - Certificates: every device the load test registered (its certificate is ACTIVE and
//!   attached to its thing), every device whose certificate was issued and whose
//!   registration answer never came (status unknown), and every orphan the ledger lists; the
//!   same steps as the orphan cleanup (detach every thing AWS lists, wait, deactivate,
//!   delete with `--force-delete`, which detaches the policies).
//! - Things: after every certificate, each thing a device of the load test registered is
//!   deleted once no principal is attached (DeleteThing of a thing that is gone succeeds).
//!   Only a thing whose name contains the serial of a device that registered it is deleted:
//!   a template may send many devices to one existing thing, and a thing that existed before
//!   the load test is not the load test's to delete. Those are listed as kept, with why.
//! - A certificate whose registration answer was lost may be on a thing the ledger never
//!   learned the name of: the script detaches it, and that thing stays (listed by AWS, not
//!   by the ledger).
//! - Policies are not deleted: a template's policy is named (shared with real devices) or,
//!   for a `PolicyDocument`, named by a hash of the document and shared by every device the
//!   template provisions; `--force-delete` detaches it from each certificate.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{CleanupStep, OrphanCleanup, cleanup_plan, one_line, render_script};
use crate::ledger::{DeviceRow, DeviceState, Orphan};

/// A thing the load test registered, and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThingCleanup {
    pub thing_name: String,
    /// The load test's devices that registered it.
    pub serials: Vec<String>,
    /// Empty for a kept thing.
    pub steps: Vec<CleanupStep>,
    /// Why it is kept, for a thing that is not deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_because: Option<String>,
}

/// Everything to remove after a load test.
#[derive(Debug, Clone)]
pub struct LoadtestCleanup {
    pub certificates: Vec<OrphanCleanup>,
    pub things: Vec<ThingCleanup>,
}

/// AWS's thing-name rule (1–128 of `[a-zA-Z0-9:_-]`): nothing else goes into a command line.
fn is_thing_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'-')
}

/// The plan for a load test's ledger: its devices and its orphans.
pub fn loadtest_plan(devices: &[DeviceRow], orphans: &[Orphan]) -> LoadtestCleanup {
    let mut entries: Vec<Orphan> = Vec::new();
    for d in devices {
        let Some(id) = &d.certificate_id else {
            continue;
        };
        let (status, reason) = match d.state {
            DeviceState::Registered | DeviceState::Written | DeviceState::Verified => {
                ("active", "registered by the load test")
            }
            DeviceState::CertificateIssued => (
                "unknown",
                "issued; the load test ended before its registration was answered",
            ),
            // Failed, interrupted or released: the ledger lists it among the orphans.
            _ => continue,
        };
        entries.push(Orphan {
            certificate_id: Some(id.clone()),
            public_key_sha256: None,
            serial: d.serial.clone(),
            status: status.into(),
            thing_name: d.thing_name.clone(),
            reason: reason.into(),
            recorded_ms: d.updated_ms,
            station: d.station.clone(),
        });
    }
    entries.extend(orphans.iter().cloned());
    let certificates = cleanup_plan(&entries);

    // Things: by name, with the devices that registered them.
    let mut things: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &certificates {
        if let (Some(thing), "active") = (&c.orphan.thing_name, c.orphan.status.as_str()) {
            let serials = things.entry(thing.clone()).or_default();
            if !serials.contains(&c.orphan.serial) {
                serials.push(c.orphan.serial.clone());
            }
        }
    }
    let things = things
        .into_iter()
        .map(|(thing_name, serials)| {
            let kept_because = if !is_thing_name(&thing_name) {
                Some("the ledger's thing name is not an AWS thing name: look it up by hand".into())
            } else if !serials.iter().any(|s| thing_name.contains(s.as_str())) {
                Some(
                    "its name does not contain the serial of a device that registered it: the \
                     template may have sent devices to a thing that existed before the load test"
                        .into(),
                )
            } else {
                None
            };
            let steps = match kept_because {
                Some(_) => Vec::new(),
                None => vec![CleanupStep::DeleteThing {
                    thing_name: thing_name.clone(),
                }],
            };
            ThingCleanup {
                thing_name,
                serials,
                steps,
                kept_because,
            }
        })
        .collect();
    LoadtestCleanup {
        certificates,
        things,
    }
}

/// One certificate of `cleanup.json`.
#[derive(Serialize)]
struct CertificateJson<'a> {
    serial: &'a str,
    certificate_id: Option<&'a str>,
    status: &'a str,
    thing_name: Option<&'a str>,
    reason: &'a str,
    steps: &'a [CleanupStep],
}

#[derive(Serialize)]
struct PlanJson<'a> {
    certificates: Vec<CertificateJson<'a>>,
    things: &'a [ThingCleanup],
    policies: &'static str,
}

/// The script function that deletes a thing (after the certificate functions).
const THING_FUNCTIONS: &str = r#"
# Deletes thing $1 once no principal is attached to it (a detachment is asynchronous); a thing
# AWS no longer has is done (DeleteThing succeeds for a thing that does not exist).
delete_thing() {
  local principals tries=0
  while :; do
    principals=$(aws_iot list-thing-principals --thing-name "$1" --query 'principals[]' --output text) \
      || { stop_unless_gone "thing $1" $?; return 0; }
    if [ -z "$principals" ]; then
      break
    fi
    tries=$((tries + 1))
    if [ "$tries" -gt 60 ]; then
      echo "thing $1 still has principals $principals after 5 minutes" >&2
      exit 1
    fi
    sleep 5
  done
  aws_iot delete-thing --thing-name "$1"
}
"#;

const POLICIES: &str = "not deleted: a template's policies are shared (named, or named by a hash of \
     their document); delete-certificate --force-delete detaches them from each certificate";

impl LoadtestCleanup {
    /// `cleanup.json`: the certificates and things with their steps, and what is kept.
    pub fn json(&self) -> String {
        let doc = PlanJson {
            certificates: self
                .certificates
                .iter()
                .map(|c| CertificateJson {
                    serial: &c.orphan.serial,
                    certificate_id: c.orphan.certificate_id.as_deref(),
                    status: &c.orphan.status,
                    thing_name: c.orphan.thing_name.as_deref(),
                    reason: &c.orphan.reason,
                    steps: &c.steps,
                })
                .collect(),
            things: &self.things,
            policies: POLICIES,
        };
        serde_json::to_string_pretty(&doc).expect("the plan serializes")
    }

    /// `cleanup.sh`: the certificates first (which detaches them from their things), then the
    /// things.
    pub fn script(&self) -> String {
        let header = format!(
            "# Removes what a fleet-station load test created: {} certificate(s) and {} thing(s).\n\
             # Written by `station loadtest --cleanup-plan DIR`. Read it, then run it with AWS\n\
             # credentials for the account and region of the load test (AWS_PROFILE, AWS_REGION).\n\
             # It can be run again after a failure: what AWS no longer has is skipped.\n\
             # Policies: {POLICIES}.\n",
            self.certificates.len(),
            self.things.iter().filter(|t| !t.steps.is_empty()).count()
        );
        let mut out = render_script(&header, THING_FUNCTIONS, &self.certificates);
        out.push_str(&format!(
            "\n# {} thing(s) the load test registered.\n",
            self.things.len()
        ));
        for t in &self.things {
            out.push('\n');
            out.push_str(&format!(
                "# thing {} (boards {})\n",
                one_line(&t.thing_name),
                one_line(&t.serials.join(", "))
            ));
            if let Some(why) = &t.kept_because {
                out.push_str(&format!("# kept: {}\n", one_line(why)));
            }
            for step in &t.steps {
                if let CleanupStep::DeleteThing { thing_name } = step {
                    out.push_str(&format!("delete_thing {thing_name}\n"));
                }
            }
        }
        out
    }
}
