//! Removing the orphaned certificates from AWS: a plan of steps per orphan
//! ([`cleanup_plan`]) and its rendering as a bash script of AWS CLI commands
//! ([`cleanup_script`]), which `station ledger orphans` prints. [`loadtest`] plans the removal
//! of everything a load test created (its certificates and things) with the same steps.
//!
//! The steps follow the AWS IoT API's documented rules:
//! - DeleteCertificate refuses a certificate that is ACTIVE or attached to a thing;
//!   `--force-delete` detaches its policies, not its things.
//! - DetachThingPrincipal is asynchronous: the script waits until ListPrincipalThings lists
//!   no thing before it deletes.
//! - UpdateCertificate sets INACTIVE; it is used only on an ACTIVE certificate (PENDING_*
//!   statuses are AWS's own).
//! - A certificate never registered stays PENDING_ACTIVATION and AWS deletes it when its
//!   ownership token expires (1 h after issue), so it may be gone before or while the script
//!   runs: that is not an error.
//!
//! Every orphan with a certificate id gets the same order: skip it if AWS no longer has it,
//! detach every thing (whatever the ledger knew: a thing may be attached that the ledger
//! never saw), wait, deactivate, delete. The script may be run again after a failure.
//! Orphans without a certificate id (a request whose answer was lost) get a note: there is
//! nothing to run.

pub mod loadtest;

use serde::{Deserialize, Serialize};

use super::Orphan;

/// One step of removing an orphaned certificate (or a load test's thing) from AWS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum CleanupStep {
    /// Nothing to run; the text says why.
    Note(String),
    /// If AWS no longer has the certificate, this orphan is done: skip its other steps.
    SkipIfGone { certificate_id: String },
    /// Detach the certificate from every thing AWS lists for it (DetachThingPrincipal), then
    /// wait until ListPrincipalThings lists none. A certificate gone meanwhile ends the step.
    DetachAllThings { certificate_id: String },
    /// If the certificate is ACTIVE, set it INACTIVE (UpdateCertificate). A certificate gone
    /// meanwhile ends the step.
    Deactivate { certificate_id: String },
    /// DeleteCertificate; `force` also detaches its policies. Fails if the certificate is
    /// gone (an ACTIVE certificate does not go by itself: someone else is at work).
    Delete { certificate_id: String, force: bool },
    /// DeleteCertificate with `--force-delete`, where a certificate AWS has deleted meanwhile
    /// (a never-registered one whose token expired) counts as done.
    DeleteIfPresent { certificate_id: String },
    /// Wait until ListThingPrincipals lists no principal (detachments are asynchronous), then
    /// DeleteThing; a thing that is gone is done.
    DeleteThing { thing_name: String },
}

/// The steps for one orphan (duplicates of a certificate merged into one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanCleanup {
    pub orphan: Orphan,
    pub steps: Vec<CleanupStep>,
}

fn rank(status: &str) -> u8 {
    match status {
        "pending" => 0,
        "active" => 2,
        // "unknown", and anything the ledger should not hold: assume it may be registered.
        _ => 1,
    }
}

/// An AWS certificate id: hex (64 digits from AWS), optionally `0x`-prefixed. Anything else is
/// never put into a command line.
fn is_certificate_id(id: &str) -> bool {
    let hex = id.strip_prefix("0x").unwrap_or(id);
    !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What to run for each orphan, in ledger order. Rows naming the same certificate are merged
/// (the strongest status wins: active, then unknown, then pending; the first known thing).
pub fn cleanup_plan(orphans: &[Orphan]) -> Vec<OrphanCleanup> {
    let mut merged: Vec<Orphan> = Vec::with_capacity(orphans.len());
    for o in orphans {
        let same = |m: &&mut Orphan| match (&m.certificate_id, &o.certificate_id) {
            (Some(a), Some(b)) => a == b,
            (None, None) => m.serial == o.serial && m.public_key_sha256 == o.public_key_sha256,
            _ => false,
        };
        match merged.iter_mut().find(same) {
            Some(m) => {
                if rank(&o.status) > rank(&m.status) {
                    m.status = o.status.clone();
                }
                if m.thing_name.is_none() {
                    m.thing_name = o.thing_name.clone();
                }
            }
            None => merged.push(o.clone()),
        }
    }
    merged
        .into_iter()
        .map(|orphan| {
            let steps = steps_for(&orphan);
            OrphanCleanup { orphan, steps }
        })
        .collect()
}

fn steps_for(o: &Orphan) -> Vec<CleanupStep> {
    let Some(id) = &o.certificate_id else {
        return vec![CleanupStep::Note(
            "nothing to run: if AWS issued a certificate for this key, it was never registered \
             (PENDING_ACTIVATION) and AWS deletes it when its ownership token expires, 1 h after issue"
                .to_string(),
        )];
    };
    if !is_certificate_id(id) {
        return vec![CleanupStep::Note(format!(
            "the ledger's certificate id {:?} is not an AWS certificate id: look this certificate up by hand",
            one_line(id)
        ))];
    }
    let certificate_id = id.clone();
    let last = if o.status == "active" {
        CleanupStep::Delete {
            certificate_id: certificate_id.clone(),
            force: true,
        }
    } else {
        // Pending (or possibly pending): AWS deletes it by itself when its token expires.
        CleanupStep::DeleteIfPresent {
            certificate_id: certificate_id.clone(),
        }
    };
    vec![
        CleanupStep::SkipIfGone {
            certificate_id: certificate_id.clone(),
        },
        CleanupStep::DetachAllThings {
            certificate_id: certificate_id.clone(),
        },
        CleanupStep::Deactivate { certificate_id },
        last,
    ]
}

/// Text from the ledger made safe for a comment line: no line breaks or control characters.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What the orphan is, for its comment line.
fn describe(o: &Orphan) -> String {
    // The station, when the orphan names one (a shared ledger's orphans do).
    let mut line = format!("board {}", one_line(&o.serial));
    if !o.station.is_empty() {
        line.push_str(&format!(" (station {})", one_line(&o.station)));
    }
    line.push_str(&format!(": {}", one_line(&o.status)));
    match &o.certificate_id {
        Some(id) => line.push_str(&format!(" certificate {}", one_line(id))),
        None => line.push_str(&format!(
            ", no certificate id (a request for public key sha256:{} got no answer)",
            one_line(o.public_key_sha256.as_deref().unwrap_or("?"))
        )),
    }
    if let Some(thing) = &o.thing_name {
        line.push_str(&format!(", thing {}", one_line(thing)));
    }
    line.push_str(&format!("; reason: {}", one_line(&o.reason)));
    line
}

/// The orphan script's header comment.
const ORPHANS_HEADER: &str = "\
# Removes the certificates that fleet-station recorded as orphaned: issued by AWS, on no board.
# Printed by `station ledger orphans`. Read it, then run it with AWS credentials for the account
# and region the station provisioned in (AWS_PROFILE, AWS_REGION). It can be run again after a
# failure: a certificate AWS no longer has is skipped.
";

/// The functions every cleanup script calls.
const FUNCTIONS: &str = r#"set -euo pipefail

errors=$(mktemp)
trap 'rm -f "$errors"' EXIT

# Runs `aws iot "$@"`. Exit status 3 if it failed because a resource does not exist
# (ResourceNotFoundException); any other failure shows the error and stops the script.
aws_iot() {
  if aws iot "$@" 2>"$errors"; then
    return 0
  fi
  if grep -q ResourceNotFoundException "$errors"; then
    return 3
  fi
  cat "$errors" >&2
  exit 1
}

# After aws_iot failed with status $2: if it was because $1 is gone, says so; else stops.
stop_unless_gone() {
  if [ "$2" -ne 3 ]; then
    exit 1
  fi
  echo "$1: AWS no longer has it"
}

# Succeeds if AWS has certificate $1.
certificate_exists() {
  aws_iot describe-certificate --certificate-id "$1" --query certificateDescription.certificateId --output text >/dev/null \
    || { stop_unless_gone "certificate $1" $?; return 1; }
}

# Detaches certificate $1 from every thing AWS lists for it, then waits until it lists none:
# DetachThingPrincipal is asynchronous, and DeleteCertificate refuses an attached certificate.
detach_all_things() {
  local arn things thing tries=0
  arn=$(aws_iot describe-certificate --certificate-id "$1" --query certificateDescription.certificateArn --output text) \
    || { stop_unless_gone "certificate $1" $?; return 0; }
  things=$(aws_iot list-principal-things --principal "$arn" --query 'things[]' --output text) \
    || { stop_unless_gone "certificate $1" $?; return 0; }
  for thing in $things; do
    aws_iot detach-thing-principal --thing-name "$thing" --principal "$arn" \
      || stop_unless_gone "thing $thing" $?
  done
  while :; do
    things=$(aws_iot list-principal-things --principal "$arn" --query 'things[]' --output text) \
      || { stop_unless_gone "certificate $1" $?; return 0; }
    if [ -z "$things" ]; then
      return 0
    fi
    tries=$((tries + 1))
    if [ "$tries" -gt 60 ]; then
      echo "certificate $1 is still attached to $things after 5 minutes" >&2
      exit 1
    fi
    sleep 5
  done
}

# Sets certificate $1 INACTIVE if it is ACTIVE: DeleteCertificate refuses an ACTIVE certificate.
deactivate() {
  local status
  status=$(aws_iot describe-certificate --certificate-id "$1" --query certificateDescription.status --output text) \
    || { stop_unless_gone "certificate $1" $?; return 0; }
  if [ "$status" = ACTIVE ]; then
    aws_iot update-certificate --certificate-id "$1" --new-status INACTIVE \
      || stop_unless_gone "certificate $1" $?
  fi
}

# Deletes certificate $1 and its policy attachments; a certificate AWS deleted meanwhile (a
# never-registered one whose ownership token expired) is not an error.
delete_certificate_if_present() {
  aws_iot delete-certificate --certificate-id "$1" --force-delete \
    || stop_unless_gone "certificate $1" $?
}
"#;

/// The plan as a bash script (`set -euo pipefail`) of documented AWS CLI commands. Each
/// certificate's ARN is read from AWS (`describe-certificate`), so no account or region is
/// written into the script.
fn render_script(header: &str, functions: &str, plan: &[OrphanCleanup]) -> String {
    let mut out = format!("#!/usr/bin/env bash\n{header}{FUNCTIONS}{functions}");
    let to_run = plan
        .iter()
        .filter(|p| p.steps.iter().any(|s| !matches!(s, CleanupStep::Note(_))))
        .count();
    out.push_str(&format!(
        "\n# {} orphaned certificate(s) in the ledger; {} to remove.\n",
        plan.len(),
        to_run
    ));
    for p in plan {
        out.push('\n');
        out.push_str(&format!("# {}\n", describe(&p.orphan)));
        // Steps after a SkipIfGone run inside its `if`.
        let mut indent = "";
        for step in &p.steps {
            match step {
                CleanupStep::Note(text) => {
                    out.push_str(&format!("{indent}# {}\n", one_line(text)));
                }
                CleanupStep::SkipIfGone { certificate_id } => {
                    out.push_str(&format!(
                        "{indent}if certificate_exists {certificate_id}; then\n"
                    ));
                    indent = "  ";
                }
                CleanupStep::DetachAllThings { certificate_id } => {
                    out.push_str(&format!("{indent}detach_all_things {certificate_id}\n"));
                }
                CleanupStep::Deactivate { certificate_id } => {
                    out.push_str(&format!("{indent}deactivate {certificate_id}\n"));
                }
                CleanupStep::Delete {
                    certificate_id,
                    force,
                } => {
                    out.push_str(&format!(
                        "{indent}aws iot delete-certificate --certificate-id {certificate_id}{}\n",
                        if *force { " --force-delete" } else { "" }
                    ));
                }
                CleanupStep::DeleteIfPresent { certificate_id } => {
                    out.push_str(&format!(
                        "{indent}delete_certificate_if_present {certificate_id}\n"
                    ));
                }
                CleanupStep::DeleteThing { thing_name } => {
                    out.push_str(&format!("{indent}delete_thing {thing_name}\n"));
                }
            }
        }
        if !indent.is_empty() {
            out.push_str("fi\n");
        }
    }
    out
}

/// [`cleanup_plan`] rendered as a bash script (`set -euo pipefail`) of documented AWS CLI
/// commands; each certificate's ARN is read from AWS, so no account or region is in it.
pub fn cleanup_script(orphans: &[Orphan]) -> String {
    render_script(ORPHANS_HEADER, "", &cleanup_plan(orphans))
}

#[cfg(test)]
mod tests;
