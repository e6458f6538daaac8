//! The key file (`<ledger>.key`) belongs to its ledger: a ledger whose sealed keys need it
//! is refused without it or with another ledger's, and left as found; a ledger without
//! sealed keys gets a new one.

use super::*;
use crate::ledger::{LedgerError, Transition, seal};

async fn a_missing_key_file_is_refused_while_keys_are_sealed_under_it(s: Scratch) {
    let key = s.key("st");
    {
        let ledger = s.open("st").unwrap();
        for serial in ["SN-1", "SN-2"] {
            let id = ledger.begin(serial, "j").await.unwrap().id;
            ledger.record(id, key_reserved()).await.unwrap();
        }
    }
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let err = s.open("st").err().expect("refused");
    assert!(
        matches!(&err, LedgerError::KeyMissing { sealed: 2, key: k, .. } if k == &key),
        "{err:?}"
    );
    let shown = format!("{:?}", miette::Report::new(err));
    assert!(
        shown.contains("restore <ledger>.key from the backup"),
        "{shown}"
    );
    assert!(!key.exists(), "no new key was made");

    // Restored from the backup, the devices resume with their keys.
    std::fs::write(&key, &saved).unwrap();
    let ledger = s.open("st").unwrap();
    let r = ledger.begin("SN-1", "j").await.unwrap().resume.unwrap();
    assert!(r.private_key.is_some());
}

async fn a_key_file_of_another_ledger_is_refused(s: Scratch) {
    {
        let ledger = s.open("st").unwrap();
        let id = ledger.begin("SN-1", "j").await.unwrap().id;
        ledger.record(id, key_reserved()).await.unwrap();
    }
    let key = s.key("st");
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    seal::Sealer::create_new(&key).unwrap();
    let err = s.open("st").err().expect("refused");
    assert!(
        matches!(&err, LedgerError::KeyMismatch { serial, sealed: 1, .. } if serial == "SN-1"),
        "{err:?}"
    );
    assert_ne!(
        std::fs::read(&key).unwrap(),
        saved,
        "the wrong key is left as found"
    );
}

async fn a_ledger_without_sealed_keys_gets_a_new_key_file(s: Scratch) {
    {
        let ledger = s.open("st").unwrap();
        let id = ledger.begin("SN-1", "j").await.unwrap().id;
        ledger.record(id, key_reserved()).await.unwrap();
        ledger
            .record(id, Transition::Failed { reason: "r".into() })
            .await
            .unwrap();
    }
    let key = s.key("st");
    let old = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let ledger = s.open("st").unwrap();
    assert!(key.exists());
    assert_ne!(std::fs::read(&key).unwrap(), old);
    let id = ledger.begin("SN-1", "j").await.unwrap().id;
    ledger.record(id, key_reserved()).await.unwrap();
}

on_both_stores!(async a_missing_key_file_is_refused_while_keys_are_sealed_under_it, a_key_file_of_another_ledger_is_refused, a_ledger_without_sealed_keys_gets_a_new_key_file);
