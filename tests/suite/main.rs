//! The integration suite, one test binary: every file here is a module (one per concern, as
//! the file names say), the `*_support` and `common` folders their shared helpers. One binary
//! instead of one per file links the station's dependency graph once, not twenty-one times:
//! that is most of a debug build's time after an edit.

mod api_support;
mod broker_support;
mod common;
mod jig_support;

mod broker;
mod cli;
mod crash;
mod e2e;
mod emulator;
mod emulator_api;
mod emulator_durability;
mod emulator_faults;
mod emulator_registry_compat;
mod emulator_registry_rules;
mod endpoint_errors;
mod faults;
mod jig_faults;
mod jig_hotplug;
mod jig_link;
mod jig_nrf91;
mod jig_pacing;
mod jig_zephyr;
mod knee;
mod ledger_cli;
mod ledger_fixture;
mod ledger_postgres;
mod loadtest_cleanup;
mod metrics;
mod outage;
mod policy_conditions;
mod provision;
mod readme;
mod report;
mod stop;
