//! Tests of the cleanup plan: a model of AWS's documented rules the plans are applied to, the
//! script's exact text, and a stand-in `aws` command that runs the rendered scripts (the orphans'
//! and a load test's).

use std::collections::BTreeMap;

use super::*;
use crate::ledger::{DeviceRow, DeviceState};

const C1: &str = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";
const C2: &str = "c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2";
const C3: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";

fn orphan(id: Option<&str>, status: &str, thing: Option<&str>) -> Orphan {
    Orphan {
        certificate_id: id.map(str::to_string),
        public_key_sha256: Some("ab".repeat(32)),
        serial: "SN-1".into(),
        status: status.into(),
        thing_name: thing.map(str::to_string),
        reason: "r".into(),
        recorded_ms: 0,
        station: "station-1".into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    PendingActivation,
    Active,
    Inactive,
}

#[derive(Debug, Clone)]
struct Cert {
    status: Status,
    /// Things attached; a detached one stays listed for `lag` more listings.
    things: BTreeMap<String, Option<u32>>,
    policies: u32,
    /// A PENDING_ACTIVATION certificate AWS deletes after this many more calls (its token
    /// expires while the script runs).
    expires_after: Option<u32>,
}

/// AWS IoT's certificate rules as documented (DeleteCertificate, UpdateCertificate,
/// DetachThingPrincipal, ListPrincipalThings, DescribeCertificate).
#[derive(Debug, Default)]
struct Aws {
    certs: BTreeMap<String, Cert>,
    lag: u32,
    calls: Vec<String>,
}

#[derive(Debug, PartialEq)]
enum AwsError {
    ResourceNotFound,
    DeleteConflict,
    CertificateState,
}

impl Aws {
    fn add(&mut self, id: &str, status: Status, things: &[&str], policies: u32) {
        let things = things.iter().map(|t| (t.to_string(), None)).collect();
        self.certs.insert(
            id.to_string(),
            Cert {
                status,
                things,
                policies,
                expires_after: None,
            },
        );
    }

    fn call(&mut self, what: &str) {
        self.calls.push(what.to_string());
        self.certs.retain(|_, c| match &mut c.expires_after {
            Some(0) => c.status != Status::PendingActivation,
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        });
    }

    fn cert(&mut self, id: &str) -> Result<&mut Cert, AwsError> {
        self.certs.get_mut(id).ok_or(AwsError::ResourceNotFound)
    }

    fn describe(&mut self, id: &str) -> Result<Status, AwsError> {
        self.call("describe-certificate");
        Ok(self.cert(id)?.status)
    }

    fn list_principal_things(&mut self, id: &str) -> Result<Vec<String>, AwsError> {
        self.call("list-principal-things");
        let cert = self.cert(id)?;
        // A detachment propagates after a few listings (DetachThingPrincipal is
        // asynchronous).
        cert.things.retain(|_, lag| match lag {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        });
        Ok(cert.things.keys().cloned().collect())
    }

    fn detach_thing_principal(&mut self, id: &str, thing: &str) -> Result<(), AwsError> {
        self.call("detach-thing-principal");
        let lag = self.lag;
        let cert = self.cert(id)?;
        match cert.things.get_mut(thing) {
            Some(l) => {
                l.get_or_insert(lag);
                Ok(())
            }
            None => Err(AwsError::ResourceNotFound),
        }
    }

    fn update_certificate_inactive(&mut self, id: &str) -> Result<(), AwsError> {
        self.call("update-certificate");
        let cert = self.cert(id)?;
        match cert.status {
            // PENDING_* statuses are AWS's own; the documentation does not say a
            // pending certificate may be set INACTIVE, so the model refuses it.
            Status::PendingActivation => Err(AwsError::CertificateState),
            _ => {
                cert.status = Status::Inactive;
                Ok(())
            }
        }
    }

    fn delete_certificate(&mut self, id: &str, force: bool) -> Result<(), AwsError> {
        self.call("delete-certificate");
        let cert = self.cert(id)?;
        if cert.status == Status::Active {
            return Err(AwsError::CertificateState);
        }
        // Things count until the detachment has propagated; --force-delete only
        // detaches policies.
        if !cert.things.is_empty() || (cert.policies > 0 && !force) {
            return Err(AwsError::DeleteConflict);
        }
        self.certs.remove(id);
        Ok(())
    }

    /// Runs the steps of one orphan as the rendered script does.
    fn apply(&mut self, steps: &[CleanupStep]) -> Result<(), AwsError> {
        // A step that finds the certificate gone is done.
        fn done_if_gone<T>(r: Result<T, AwsError>) -> Result<Option<T>, AwsError> {
            match r {
                Ok(v) => Ok(Some(v)),
                Err(AwsError::ResourceNotFound) => Ok(None),
                Err(e) => Err(e),
            }
        }
        for step in steps {
            match step {
                CleanupStep::Note(_) => {}
                CleanupStep::SkipIfGone { certificate_id } => {
                    if done_if_gone(self.describe(certificate_id))?.is_none() {
                        return Ok(());
                    }
                }
                CleanupStep::DetachAllThings { certificate_id } => {
                    // (the ARN)
                    if done_if_gone(self.describe(certificate_id))?.is_none() {
                        continue;
                    }
                    let Some(things) = done_if_gone(self.list_principal_things(certificate_id))?
                    else {
                        continue;
                    };
                    for thing in things {
                        done_if_gone(self.detach_thing_principal(certificate_id, &thing))?;
                    }
                    let mut tries = 0;
                    while let Some(things) =
                        done_if_gone(self.list_principal_things(certificate_id))?
                    {
                        if things.is_empty() {
                            break;
                        }
                        tries += 1;
                        assert!(tries <= 60, "still attached after 60 listings");
                    }
                }
                CleanupStep::Deactivate { certificate_id } => {
                    if done_if_gone(self.describe(certificate_id))? == Some(Status::Active) {
                        done_if_gone(self.update_certificate_inactive(certificate_id))?;
                    }
                }
                CleanupStep::Delete {
                    certificate_id,
                    force,
                } => self.delete_certificate(certificate_id, *force)?,
                CleanupStep::DeleteIfPresent { certificate_id } => {
                    done_if_gone(self.delete_certificate(certificate_id, true))?;
                }
                CleanupStep::DeleteThing { .. } => {
                    unreachable!("an orphan's plan deletes no thing")
                }
            }
        }
        Ok(())
    }
}

fn run(aws: &mut Aws, orphans: &[Orphan]) -> Result<(), AwsError> {
    for p in cleanup_plan(orphans) {
        aws.apply(&p.steps)?;
    }
    Ok(())
}

#[test]
fn the_model_holds_aws_to_its_documented_rules() {
    // Without detaching first, AWS refuses the delete: the model is strict enough for
    // the plans below to mean something.
    let mut aws = Aws {
        lag: 2,
        ..Aws::default()
    };
    aws.add(C1, Status::Active, &["t1"], 1);
    assert_eq!(
        aws.delete_certificate(C1, true),
        Err(AwsError::CertificateState)
    );
    aws.update_certificate_inactive(C1).unwrap();
    assert_eq!(
        aws.delete_certificate(C1, true),
        Err(AwsError::DeleteConflict)
    );
    aws.detach_thing_principal(C1, "t1").unwrap();
    // Detaching is asynchronous: deleting at once still conflicts.
    assert_eq!(
        aws.delete_certificate(C1, true),
        Err(AwsError::DeleteConflict)
    );
    aws.add(C2, Status::Inactive, &[], 1);
    assert_eq!(
        aws.delete_certificate(C2, false),
        Err(AwsError::DeleteConflict)
    );
    assert_eq!(aws.delete_certificate(C2, true), Ok(()));
    aws.add(C3, Status::PendingActivation, &[], 0);
    assert_eq!(
        aws.update_certificate_inactive(C3),
        Err(AwsError::CertificateState)
    );
}

#[test]
fn every_plan_removes_its_certificate_from_aws() {
    let mut aws = Aws {
        lag: 3,
        ..Aws::default()
    };
    // Active with its thing, plus a thing the ledger never heard of.
    aws.add(C1, Status::Active, &["t1", "t-extra"], 2);
    // Recorded active before the thing's name was known.
    aws.add(C2, Status::Active, &["t2"], 1);
    // Never registered, still there.
    aws.add(C3, Status::PendingActivation, &[], 0);
    let orphans = [
        orphan(Some(C1), "active", Some("t1")),
        orphan(Some(C2), "active", None),
        orphan(Some(C3), "pending", None),
        orphan(None, "pending", None),
    ];
    run(&mut aws, &orphans).unwrap();
    assert!(aws.certs.is_empty(), "{:?}", aws.certs);
}

#[test]
fn an_uncertain_status_still_succeeds_whatever_aws_holds() {
    for (status, recorded) in [
        (Status::Active, "unknown"),
        (Status::PendingActivation, "unknown"),
        (Status::Inactive, "unknown"),
        // A certificate recorded pending that a lost RegisterThing did activate.
        (Status::Active, "pending"),
    ] {
        let mut aws = Aws {
            lag: 1,
            ..Aws::default()
        };
        let things: &[&str] = if status == Status::PendingActivation {
            &[]
        } else {
            &["t"]
        };
        aws.add(C1, status, things, 1);
        run(&mut aws, &[orphan(Some(C1), recorded, None)])
            .unwrap_or_else(|e| panic!("{status:?} recorded {recorded}: {e:?}"));
        assert!(aws.certs.is_empty());
    }
}

#[test]
fn a_pending_certificate_aws_deleted_before_or_during_the_script_is_not_an_error() {
    // Already gone: its token expired an hour after issue.
    let mut aws = Aws::default();
    run(&mut aws, &[orphan(Some(C1), "pending", None)]).unwrap();
    assert_eq!(aws.calls, ["describe-certificate"]);
    // Gone between the check and the delete.
    for after in 0..5 {
        let mut aws = Aws::default();
        aws.add(C1, Status::PendingActivation, &[], 0);
        aws.certs.get_mut(C1).unwrap().expires_after = Some(after);
        run(&mut aws, &[orphan(Some(C1), "pending", None)])
            .unwrap_or_else(|e| panic!("gone after {after} calls: {e:?} ({:?})", aws.calls));
    }
    // An active certificate that is gone was deleted by someone: a re-run skips it.
    let mut aws = Aws::default();
    run(&mut aws, &[orphan(Some(C1), "active", Some("t"))]).unwrap();
}

#[test]
fn steps_go_detach_wait_deactivate_delete() {
    let plan = cleanup_plan(&[
        orphan(Some(C1), "active", Some("t1")),
        orphan(Some(C2), "pending", None),
        orphan(Some(C3), "unknown", None),
        orphan(None, "unknown", None),
    ]);
    let id = |c: &str| c.to_string();
    assert_eq!(
        plan[0].steps,
        [
            CleanupStep::SkipIfGone {
                certificate_id: id(C1)
            },
            CleanupStep::DetachAllThings {
                certificate_id: id(C1)
            },
            CleanupStep::Deactivate {
                certificate_id: id(C1)
            },
            CleanupStep::Delete {
                certificate_id: id(C1),
                force: true
            },
        ]
    );
    for (p, c) in [(&plan[1], C2), (&plan[2], C3)] {
        assert_eq!(
            p.steps,
            [
                CleanupStep::SkipIfGone {
                    certificate_id: id(c)
                },
                CleanupStep::DetachAllThings {
                    certificate_id: id(c)
                },
                CleanupStep::Deactivate {
                    certificate_id: id(c)
                },
                CleanupStep::DeleteIfPresent {
                    certificate_id: id(c)
                },
            ]
        );
    }
    assert!(matches!(&plan[3].steps[..], [CleanupStep::Note(_)]));
}

#[test]
fn one_certificate_recorded_twice_is_removed_once_with_the_stronger_status() {
    let mut second = orphan(Some(C1), "active", Some("t1"));
    second.serial = "SN-1".into();
    let plan = cleanup_plan(&[
        orphan(Some(C1), "pending", None),
        second,
        orphan(None, "unknown", None),
        orphan(None, "pending", None),
    ]);
    assert_eq!(plan.len(), 2);
    assert_eq!(plan[0].orphan.status, "active");
    assert_eq!(plan[0].orphan.thing_name.as_deref(), Some("t1"));
    assert!(matches!(
        plan[0].steps.last(),
        Some(CleanupStep::Delete { force: true, .. })
    ));
}

#[test]
fn ledger_text_cannot_break_out_of_its_comment_or_into_a_command() {
    let mut o = orphan(Some("c1; rm -rf /"), "active", Some("t\nrm -rf /"));
    o.reason = "line one\nrm -rf / # two".into();
    let script = cleanup_script(&[o]);
    assert!(
        script
            .lines()
            .filter(|l| l.contains("rm -rf"))
            .all(|l| l.trim_start().starts_with('#')),
        "{script}"
    );
    assert!(!script.contains("certificate_exists c1;"));
}

#[test]
fn the_script_says_what_each_orphan_is_and_what_to_run() {
    let mut pending = orphan(Some(C2), "pending", None);
    pending.serial = "SN-2".into();
    pending.reason = "its ownership token expired before RegisterThing".into();
    let mut lost = orphan(None, "pending", None);
    lost.serial = "SN-3".into();
    lost.public_key_sha256 = Some("ef".repeat(4));
    lost.reason = "no answer within 10 s".into();
    let mut active = orphan(Some(C1), "active", Some("thing-1"));
    active.reason = "jig:verify".into();
    let script = cleanup_script(&[active, pending, lost]);
    let preamble = format!("#!/usr/bin/env bash\n{ORPHANS_HEADER}{FUNCTIONS}");
    let body = script.strip_prefix(&preamble).expect("the preamble first");
    assert_eq!(
        body,
        format!(
            "
# 3 orphaned certificate(s) in the ledger; 2 to remove.

# board SN-1 (station station-1): active certificate {C1}, thing thing-1; reason: jig:verify
if certificate_exists {C1}; then
  detach_all_things {C1}
  deactivate {C1}
  aws iot delete-certificate --certificate-id {C1} --force-delete
fi

# board SN-2 (station station-1): pending certificate {C2}; reason: its ownership token expired before RegisterThing
if certificate_exists {C2}; then
  detach_all_things {C2}
  deactivate {C2}
  delete_certificate_if_present {C2}
fi

# board SN-3 (station station-1): pending, no certificate id (a request for public key sha256:efefefef got no answer); reason: no answer within 10 s
# nothing to run: if AWS issued a certificate for this key, it was never registered (PENDING_ACTIVATION) and AWS deletes it when its ownership token expires, 1 h after issue
"
        )
    );
    // The preamble: strict bash, ARNs read from AWS, the documented commands in order.
    assert!(preamble.starts_with("#!/usr/bin/env bash\n"));
    assert!(preamble.contains("\nset -euo pipefail\n"));
    let order = [
        "aws_iot describe-certificate --certificate-id \"$1\" --query certificateDescription.certificateArn --output text",
        "aws_iot list-principal-things --principal \"$arn\" --query 'things[]' --output text",
        "aws_iot detach-thing-principal --thing-name \"$thing\" --principal \"$arn\"",
        "if [ -z \"$things\" ]; then",
        "aws_iot update-certificate --certificate-id \"$1\" --new-status INACTIVE",
        "aws_iot delete-certificate --certificate-id \"$1\" --force-delete",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|s| preamble.find(s).unwrap_or_else(|| panic!("missing {s}")))
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
    assert!(!script.contains("arn:aws:iot:"), "no ARN is made up");
    assert!(
        cleanup_script(&[]).ends_with("# 0 orphaned certificate(s) in the ledger; 0 to remove.\n")
    );
}

/// A stand-in for the AWS CLI (`aws iot ...`) over a state directory, with AWS's
/// documented rules; every call is logged to `$AWS_FAKE/calls`.
const FAKE_AWS: &str = r##"#!/usr/bin/env bash
set -u
state=$AWS_FAKE
[ "$1" = iot ] || { echo "unexpected service $1" >&2; exit 2; }
op=$2
shift 2
echo "$op $*" >>"$state/calls"
arg() {
  local name=$1
  shift
  while [ $# -gt 0 ]; do
if [ "$1" = "$name" ]; then echo "$2"; return; fi
shift
  done
}
fail() { echo "An error occurred ($1) when calling the $op operation: $2" >&2; exit 254; }
# A never-registered certificate goes when its token expires: after this many more calls.
for d in "$state"/certs/*; do
  [ -e "$d/expires_after" ] || continue
  n=$(cat "$d/expires_after")
  if [ "$n" -le 0 ]; then rm -r "$d"; else echo $((n - 1)) >"$d/expires_after"; fi
done
[ -z "$(arg --deny "$@")" ] || fail AccessDeniedException "denied"
query=$(arg --query "$@")
case $op in
describe-certificate)
  id=$(arg --certificate-id "$@")
  d=$state/certs/$id
  [ -d "$d" ] || fail ResourceNotFoundException "no certificate $id"
  [ ! -e "$d/deny" ] || fail AccessDeniedException "not allowed"
  case $query in
  certificateDescription.certificateId) echo "$id" ;;
  certificateDescription.certificateArn) echo "arn:aws:iot:eu-west-1:111122223333:cert/$id" ;;
  certificateDescription.status) cat "$d/status" ;;
  *) fail InvalidRequestException "query $query" ;;
  esac
  ;;
list-principal-things)
  p=$(arg --principal "$@")
  d=$state/certs/${p##*/}
  [ -d "$d" ] || fail ResourceNotFoundException "no principal $p"
  [ "$query" = 'things[]' ] || fail InvalidRequestException "query $query"
  names=()
  for f in "$d"/things/*; do
[ -e "$f" ] || continue
lag=$(cat "$f")
# A detached thing stays listed for a few listings (DetachThingPrincipal is asynchronous).
if [ -n "$lag" ]; then
  if [ "$lag" -le 0 ]; then rm "$f"; continue; fi
  echo $((lag - 1)) >"$f"
fi
names+=("${f##*/}")
  done
  if [ ${#names[@]} -gt 0 ]; then (IFS=$'\t'; echo "${names[*]}"); fi
  ;;
detach-thing-principal)
  p=$(arg --principal "$@")
  f=$state/certs/${p##*/}/things/$(arg --thing-name "$@")
  [ -e "$f" ] || fail ResourceNotFoundException "not attached"
  [ -n "$(cat "$f")" ] || echo 2 >"$f"
  ;;
update-certificate)
  d=$state/certs/$(arg --certificate-id "$@")
  [ -d "$d" ] || fail ResourceNotFoundException "no certificate"
  [ "$(arg --new-status "$@")" = INACTIVE ] || fail InvalidRequestException "status"
  [ "$(cat "$d/status")" != PENDING_ACTIVATION ] || fail CertificateStateException "pending"
  echo INACTIVE >"$d/status"
  ;;
list-thing-principals)
  t=$(arg --thing-name "$@")
  [ -e "$state/things/$t" ] || fail ResourceNotFoundException "no thing $t"
  [ "$query" = 'principals[]' ] || fail InvalidRequestException "query $query"
  names=()
  for f in "$state"/certs/*/things/"$t"; do
[ -e "$f" ] || continue
d=${f%/things/*}
names+=("arn:aws:iot:eu-west-1:111122223333:cert/${d##*/}")
  done
  if [ ${#names[@]} -gt 0 ]; then (IFS=$'\t'; echo "${names[*]}"); fi
  ;;
delete-thing)
  t=$(arg --thing-name "$@")
  for f in "$state"/certs/*/things/"$t"; do
if [ -e "$f" ]; then fail InvalidRequestException "thing $t has principals attached"; fi
  done
  rm -f "$state/things/$t"
  ;;
delete-certificate)
  d=$state/certs/$(arg --certificate-id "$@")
  [ -d "$d" ] || fail ResourceNotFoundException "no certificate"
  [ "$(cat "$d/status")" != ACTIVE ] || fail CertificateStateException "the certificate is ACTIVE"
  [ -z "$(ls "$d/things")" ] || fail DeleteConflictException "attached to a thing"
  case " $* " in *" --force-delete "*) ;; *) [ ! -s "$d/policies" ] || fail DeleteConflictException "policies" ;; esac
  rm -r "$d"
  ;;
*) fail InvalidRequestException "unknown operation $op" ;;
esac
"##;

struct FakeAws {
    dir: tempfile::TempDir,
}

impl FakeAws {
    fn new() -> FakeAws {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.path().join("state/certs")).unwrap();
        std::fs::write(dir.path().join("state/calls"), "").unwrap();
        // `sleep` between listings only records that the script waited.
        for (name, text) in [
            ("aws", FAKE_AWS),
            (
                "sleep",
                "#!/bin/sh\necho \"sleep $*\" >>\"$AWS_FAKE/calls\"\n",
            ),
        ] {
            let path = bin.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        FakeAws { dir }
    }

    fn add(&self, id: &str, status: &str, things: &[&str], policies: bool) {
        let d = self.dir.path().join("state/certs").join(id);
        std::fs::create_dir_all(d.join("things")).unwrap();
        std::fs::write(d.join("status"), format!("{status}\n")).unwrap();
        std::fs::write(d.join("policies"), if policies { "1" } else { "" }).unwrap();
        for t in things {
            std::fs::write(d.join("things").join(t), "").unwrap();
        }
    }

    /// A thing (the certificates name it in `add`).
    fn add_thing(&self, name: &str) {
        let d = self.dir.path().join("state/things");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), "").unwrap();
    }

    fn things(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("state/things")) else {
            return Vec::new();
        };
        let mut v: Vec<String> = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn set(&self, id: &str, file: &str, text: &str) {
        std::fs::write(
            self.dir.path().join("state/certs").join(id).join(file),
            text,
        )
        .unwrap();
    }

    fn certificates(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path().join("state/certs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("state/calls"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn run(&self, script: &str) -> std::process::Output {
        let path = self.dir.path().join("cleanup.sh");
        std::fs::write(&path, script).unwrap();
        let bin = self.dir.path().join("bin");
        std::process::Command::new("bash")
            .arg(&path)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("AWS_FAKE", self.dir.path().join("state"))
            .output()
            .unwrap()
    }
}

#[test]
fn the_script_cleans_up_against_a_stand_in_for_the_aws_cli() {
    const C4: &str = "c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4";
    const C5: &str = "c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5";
    let aws = FakeAws::new();
    // Active, attached to its thing and to one the ledger never saw, with a policy.
    aws.add(C1, "ACTIVE", &["t1", "t-extra"], true);
    // Pending and still there.
    aws.add(C2, "PENDING_ACTIVATION", &[], false);
    // C3: pending, already deleted by AWS (not added).
    // Pending, deleted by AWS while the script runs.
    aws.add(C4, "PENDING_ACTIVATION", &[], false);
    aws.set(C4, "expires_after", "9");
    // Unknown: a lost RegisterThing did activate it.
    aws.add(C5, "ACTIVE", &["t5"], true);
    let script = cleanup_script(&[
        orphan(Some(C1), "active", Some("t1")),
        orphan(Some(C2), "pending", None),
        orphan(Some(C3), "pending", None),
        orphan(Some(C4), "pending", None),
        orphan(Some(C5), "unknown", None),
        orphan(None, "pending", None),
    ]);
    let out = aws.run(&script);
    let calls = aws.calls();
    assert!(
        out.status.success(),
        "{}\n{}\n{calls:#?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(aws.certificates().is_empty(), "{:?}", aws.certificates());
    // For C1: detach both things, wait for the listing to be empty, deactivate, delete.
    let c1: Vec<&str> = calls
        .iter()
        .filter(|c| c.contains(C1) || c.starts_with("sleep"))
        .map(|c| c.split(' ').next().unwrap())
        .collect();
    let first = |op: &str| c1.iter().position(|c| *c == op).unwrap();
    let last = |op: &str| c1.iter().rposition(|c| *c == op).unwrap();
    assert_eq!(
        c1.iter()
            .filter(|c| **c == "detach-thing-principal")
            .count(),
        2
    );
    assert!(first("sleep") < last("list-principal-things"), "{c1:?}");
    assert!(last("detach-thing-principal") < last("list-principal-things"));
    assert!(last("list-principal-things") < first("update-certificate"));
    assert!(first("update-certificate") < first("delete-certificate"));
    // A pending certificate is never set INACTIVE (not documented for PENDING_ACTIVATION).
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("update-certificate") && c.contains(C2))
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("certificate {C3}: AWS no longer has it")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("certificate {C4}: AWS no longer has it")),
        "{stdout}"
    );

    // Run again: everything is gone, nothing fails.
    let again = aws.run(&script);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // A pending certificate that AWS deletes at any point of its own block.
    for after in 1..=6 {
        let aws = FakeAws::new();
        aws.add(C4, "PENDING_ACTIVATION", &[], false);
        aws.set(C4, "expires_after", &after.to_string());
        let out = aws.run(&cleanup_script(&[orphan(Some(C4), "pending", None)]));
        assert!(
            out.status.success(),
            "gone after {after} calls: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(aws.certificates().is_empty());
    }
}

#[test]
fn the_script_stops_at_an_error_that_is_not_a_missing_certificate() {
    let aws = FakeAws::new();
    aws.add(C1, "ACTIVE", &["t1"], false);
    aws.set(C1, "deny", "");
    aws.add(C2, "INACTIVE", &[], false);
    let out = aws.run(&cleanup_script(&[
        orphan(Some(C1), "active", Some("t1")),
        orphan(Some(C2), "pending", None),
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("AccessDeniedException"));
    assert_eq!(aws.certificates(), [C1, C2], "it stopped at the first");
}

/// `bash -n` accepts the script.
fn assert_valid_bash(script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cleanup.sh");
    std::fs::write(&path, script).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_script_is_valid_bash() {
    let script = cleanup_script(&[
        orphan(Some(C1), "active", Some("t1")),
        orphan(Some(C2), "pending", None),
        orphan(None, "unknown", None),
    ]);
    assert_valid_bash(&script);
}

fn device(serial: &str, state: DeviceState, cert: Option<&str>, thing: Option<&str>) -> DeviceRow {
    DeviceRow {
        id: 1,
        serial: serial.into(),
        jig: "loadtest".into(),
        station: "s".into(),
        state,
        key_source: Some("pool".into()),
        certificate_id: cert.map(str::to_string),
        thing_name: thing.map(str::to_string),
        reason: None,
        attempts: 1,
        created_ms: 0,
        updated_ms: 0,
    }
}

#[test]
fn a_load_test_s_certificates_and_things_are_removed_and_a_thing_it_may_not_own_is_kept() {
    use super::loadtest::loadtest_plan;
    const C4: &str = "c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4";
    const C5: &str = "c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5";
    let aws = FakeAws::new();
    for t in ["LT-1", "LT-2", "LT-3", "shared-thing"] {
        aws.add_thing(t);
    }
    aws.add(C1, "ACTIVE", &["LT-1"], true);
    aws.add(C2, "ACTIVE", &["LT-2"], true);
    // Issued, and registered by a request whose answer the load test never got.
    aws.add(C3, "ACTIVE", &["LT-3"], true);
    // Registered onto a thing every device shares (a template with a static ThingName).
    aws.add(C4, "ACTIVE", &["shared-thing"], true);
    // A failed device's certificate, never registered.
    aws.add(C5, "PENDING_ACTIVATION", &[], false);
    let devices = [
        device("LT-1", DeviceState::Registered, Some(C1), Some("LT-1")),
        device("LT-2", DeviceState::Registered, Some(C2), Some("LT-2")),
        device("LT-3", DeviceState::CertificateIssued, Some(C3), None),
        device(
            "LT-4",
            DeviceState::Registered,
            Some(C4),
            Some("shared-thing"),
        ),
        device("LT-5", DeviceState::Failed, Some(C5), None),
        device("LT-6", DeviceState::Started, None, None),
    ];
    let mut failed = orphan(Some(C5), "pending", None);
    failed.serial = "LT-5".into();
    let plan = loadtest_plan(&devices, &[failed]);
    assert_eq!(plan.certificates.len(), 5);
    let script = plan.script();
    let out = aws.run(&script);
    assert!(
        out.status.success(),
        "{}\n{}\n{:#?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        aws.calls()
    );
    assert!(aws.certificates().is_empty(), "{:?}", aws.certificates());
    // LT-3's thing was never named to the ledger; the shared thing may not be the test's.
    assert_eq!(aws.things(), ["LT-3", "shared-thing"]);
    // Every thing is deleted after the last certificate's steps, once it has no principal.
    let calls = aws.calls();
    let last_cert = calls
        .iter()
        .rposition(|c| c.starts_with("delete-certificate"))
        .unwrap();
    let first_thing = calls
        .iter()
        .position(|c| c.starts_with("delete-thing"))
        .unwrap();
    assert!(last_cert < first_thing, "{calls:#?}");
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("delete-thing"))
            .count(),
        2
    );

    // Run again: everything is gone, nothing fails.
    let again = aws.run(&script);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let json: serde_json::Value = serde_json::from_str(&plan.json()).unwrap();
    let things = json["things"].as_array().unwrap();
    let shared = things
        .iter()
        .find(|t| t["thing_name"] == "shared-thing")
        .unwrap();
    assert!(shared["steps"].as_array().unwrap().is_empty());
    assert!(
        shared["kept_because"]
            .as_str()
            .unwrap()
            .contains("existed before")
    );
    let lt1 = things.iter().find(|t| t["thing_name"] == "LT-1").unwrap();
    assert_eq!(
        lt1["steps"],
        serde_json::json!([{"step": "delete_thing", "thing_name": "LT-1"}])
    );
    let c3 = json["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["certificate_id"] == C3)
        .unwrap();
    assert_eq!(c3["status"], "unknown");
    assert_eq!(c3["steps"][0]["step"], "skip_if_gone");
    assert!(
        json["policies"]
            .as_str()
            .unwrap()
            .starts_with("not deleted")
    );
}

#[test]
fn a_load_test_s_script_is_valid_bash_and_names_no_unsafe_thing() {
    use super::loadtest::loadtest_plan;
    let devices = [
        device("LT-1", DeviceState::Registered, Some(C1), Some("LT-1")),
        device(
            "LT-2",
            DeviceState::Registered,
            Some(C2),
            Some("LT-2; rm -rf /"),
        ),
    ];
    let plan = loadtest_plan(&devices, &[]);
    let script = plan.script();
    assert!(!script.contains("delete_thing LT-2"), "{script}");
    assert!(script.contains("delete_thing LT-1\n"));
    assert_valid_bash(&script);
}
