//! A station's cleanup steps applied to an emulator's registry through its AWS control-plane
//! operations (with AWS's rules), as the printed script applies them to AWS.

use fleet_station::emulator::control::{self, ControlError};
use fleet_station::emulator::registry::{CertStatus, Registry};
use fleet_station::ledger::cleanup::CleanupStep;

/// Applies one orphan's (or a load test's) cleanup steps to the registry as the printed script would to AWS.
pub fn apply_cleanup(registry: &Registry, steps: &[CleanupStep]) {
    let gone = |e: &ControlError| matches!(e, ControlError::ResourceNotFoundException(_));
    for step in steps {
        match step {
            CleanupStep::Note(_) => {}
            CleanupStep::SkipIfGone { certificate_id } => {
                match control::describe_certificate(registry, certificate_id) {
                    Ok(_) => {}
                    Err(e) if gone(&e) => return,
                    Err(e) => panic!("describe-certificate {certificate_id}: {e}"),
                }
            }
            CleanupStep::DetachAllThings { certificate_id } => {
                let arn = control::certificate_arn(certificate_id);
                for thing in control::list_principal_things(registry, &arn).unwrap() {
                    control::detach_thing_principal(registry, &thing, &arn).unwrap();
                }
                assert!(
                    control::list_principal_things(registry, &arn)
                        .unwrap()
                        .is_empty()
                );
            }
            CleanupStep::Deactivate { certificate_id } => {
                let d = control::describe_certificate(registry, certificate_id).unwrap();
                if d.status == CertStatus::Active {
                    control::update_certificate(registry, certificate_id, CertStatus::Inactive)
                        .unwrap();
                }
            }
            CleanupStep::Delete {
                certificate_id,
                force,
            } => control::delete_certificate(registry, certificate_id, *force)
                .unwrap_or_else(|e| panic!("delete-certificate {certificate_id}: {e}")),
            CleanupStep::DeleteIfPresent { certificate_id } => {
                match control::delete_certificate(registry, certificate_id, true) {
                    Ok(()) => {}
                    Err(e) if gone(&e) => {}
                    Err(e) => panic!("delete-certificate {certificate_id}: {e}"),
                }
            }
            CleanupStep::DeleteThing { thing_name } => {
                let principals = control::list_thing_principals(registry, thing_name).unwrap();
                assert!(principals.is_empty(), "{thing_name}: {principals:?}");
                control::delete_thing(registry, thing_name).unwrap();
            }
        }
    }
}
