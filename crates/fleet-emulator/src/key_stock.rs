//! The stock of RSA-2048 key pairs behind `CreateKeysAndCertificate`.
//!
//! AWS makes "a 2048-bit RSA key pair" for every `CreateKeysAndCertificate`
//! (docs/aws-fleet-provisioning.md §1.2, §1.4). Generating one takes tens of milliseconds, far too
//! long for the async reactor and long enough to matter under load, so background worker threads
//! keep a bounded stock of ready keys: a request takes one (waiting only when the stock is empty)
//! and the workers make the next. The stock is a bounded channel, so full stock means idle workers.
//!
//! Each key is stored ready to serve: its SubjectPublicKeyInfo (for the CA to sign) and its
//! private key as PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`, the form AWS returns), in
//! zeroizing buffers. The PKCS#8 → PKCS#1 step unwraps the `privateKey` OCTET STRING of the
//! PKCS#8 `PrivateKeyInfo` with asn1-rs (re-exported by x509-parser), after checking that
//! the algorithm is `rsaEncryption`.
//!
//! The workers start at the first request, so an emulator that only serves
//! `CreateCertificateFromCsr` never spends CPU on RSA keys. A stock size of 0 disables the
//! stock: each request generates its key on the blocking thread pool. Workers end when the
//! stock is dropped.

use std::fmt;
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use tokio::sync::mpsc;
use x509_parser::asn1_rs::{FromDer, OctetString, Sequence};
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
use x509_parser::x509::AlgorithmIdentifier;
use zeroize::{Zeroize, Zeroizing};

/// One ready RSA-2048 key pair. Its `Debug` shows no key material.
pub struct RsaKey {
    spki_der: Vec<u8>,
    private_pem: Zeroizing<String>,
}

impl RsaKey {
    /// Makes a new RSA-2048 key pair (tens of milliseconds: never call it on the reactor).
    pub fn generate() -> Result<RsaKey, KeyStockError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyStockError::Generate)?;
        let pkcs8 = pair.as_der().map_err(|_| KeyStockError::Generate)?;
        let spki_der = pair
            .public_key()
            .as_der()
            .map_err(|_| KeyStockError::Generate)?
            .as_ref()
            .to_vec();
        let private_pem = pkcs1_pem_from_pkcs8(pkcs8.as_ref())?;
        Ok(RsaKey {
            spki_der,
            private_pem,
        })
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub(crate) fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The private key as PKCS#1 PEM. Secret: callers must not log it.
    pub(crate) fn private_pem(&self) -> &str {
        &self.private_pem
    }
}

impl fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RsaKey(<redacted>)")
    }
}

/// Why no key could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyStockError {
    #[error("RSA key generation failed")]
    Generate,
    #[error("the generated private key is not a PKCS#8 RSA key: {0}")]
    Pkcs8(String),
    #[error("the RSA key workers have stopped")]
    Stopped,
}

/// Converts a PKCS#8 `PrivateKeyInfo` holding an RSA key into PKCS#1 PEM.
///
/// `PrivateKeyInfo ::= SEQUENCE { version INTEGER, privateKeyAlgorithm AlgorithmIdentifier,
/// privateKey OCTET STRING (the PKCS#1 RSAPrivateKey DER), attributes [0] OPTIONAL }`.
pub(crate) fn pkcs1_pem_from_pkcs8(pkcs8: &[u8]) -> Result<Zeroizing<String>, KeyStockError> {
    let bad = |what: &str| KeyStockError::Pkcs8(what.to_string());
    let (_, seq) = Sequence::from_der(pkcs8).map_err(|_| bad("not a DER SEQUENCE"))?;
    let content: &[u8] = seq.content.as_ref();
    let (rest, version) = u32::from_der(content).map_err(|_| bad("no version"))?;
    if version > 1 {
        return Err(bad("unknown version"));
    }
    let (rest, alg) = AlgorithmIdentifier::from_der(rest).map_err(|_| bad("no algorithm"))?;
    if alg.algorithm != OID_PKCS1_RSAENCRYPTION {
        return Err(bad("not an rsaEncryption key"));
    }
    let (_, key) = OctetString::from_der(rest).map_err(|_| bad("no privateKey"))?;
    let pkcs1 = Zeroizing::new(key.as_ref().to_vec());
    let pem = pem::Pem::new("RSA PRIVATE KEY", pkcs1.to_vec());
    let text = Zeroizing::new(pem::encode_config(
        &pem,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    ));
    pem.into_contents().zeroize();
    Ok(text)
}

/// A bounded stock of ready RSA keys filled by worker threads.
pub(crate) struct KeyStock {
    capacity: usize,
    workers: usize,
    rx: tokio::sync::Mutex<mpsc::Receiver<RsaKey>>,
    /// Taken (and handed to the workers) at the first request.
    tx: Mutex<Option<mpsc::Sender<RsaKey>>>,
}

impl fmt::Debug for KeyStock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStock")
            .field("capacity", &self.capacity)
            .field("workers", &self.workers)
            .finish()
    }
}

impl KeyStock {
    /// A stock of up to `capacity` keys made by `workers` threads (at least one). Nothing is
    /// generated before the first [`KeyStock::take`].
    pub(crate) fn new(capacity: usize, workers: usize) -> KeyStock {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        KeyStock {
            capacity,
            workers: workers.max(1),
            rx: tokio::sync::Mutex::new(rx),
            tx: Mutex::new((capacity > 0).then_some(tx)),
        }
    }

    /// Keys ready right now.
    #[cfg(test)]
    pub(crate) async fn ready(&self) -> usize {
        self.rx.lock().await.len()
    }

    /// Takes a key, waiting for one when the stock is empty. Never blocks the reactor.
    pub(crate) async fn take(&self) -> Result<RsaKey, KeyStockError> {
        if self.capacity == 0 {
            return tokio::task::spawn_blocking(RsaKey::generate)
                .await
                .map_err(|_| KeyStockError::Generate)?;
        }
        self.start_workers();
        self.rx
            .lock()
            .await
            .recv()
            .await
            .ok_or(KeyStockError::Stopped)
    }

    /// Starts the workers once; they keep the stock full until it is dropped.
    fn start_workers(&self) {
        let Some(tx) = self.tx.lock().expect("key stock lock").take() else {
            return;
        };
        let tx = Arc::new(tx);
        for i in 0..self.workers {
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("rsa-keys-{i}"))
                .spawn(move || worker(&tx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "emulator: cannot start an RSA key worker");
            }
        }
    }
}

fn worker(tx: &mpsc::Sender<RsaKey>) {
    loop {
        let key = match RsaKey::generate() {
            Ok(key) => key,
            Err(e) => {
                tracing::error!(error = %e, "emulator: RSA key worker stops");
                return;
            }
        };
        // Waits while the stock is full; fails once the stock has been dropped.
        if tx.blocking_send(key).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::RsaKeyPair as SigningRsaKeyPair;
    use rustls_pki_types::{PrivatePkcs1KeyDer, pem::PemObject};

    #[test]
    fn keys_are_pkcs1_rsa_2048_and_match_their_public_key() {
        let key = RsaKey::generate().unwrap();
        assert!(
            key.private_pem()
                .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
        );
        assert!(!key.private_pem().contains('\r'));
        let der = PrivatePkcs1KeyDer::from_pem_slice(key.private_pem().as_bytes()).unwrap();
        let pair = SigningRsaKeyPair::from_der(der.secret_pkcs1_der()).unwrap();
        assert_eq!(pair.public_modulus_len() * 8, 2048);
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(key.spki_der()).unwrap();
        assert_eq!(
            pair.public_key().as_ref(),
            &spki.subject_public_key.data[..]
        );
        assert!(!format!("{key:?}").contains("BEGIN"));
    }

    #[test]
    fn pkcs8_that_is_not_rsa_is_refused() {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert_eq!(
            pkcs1_pem_from_pkcs8(&ec.serialize_der()).unwrap_err(),
            KeyStockError::Pkcs8("not an rsaEncryption key".into())
        );
        assert!(pkcs1_pem_from_pkcs8(b"\x30\x03\x02\x01").is_err());
        assert!(pkcs1_pem_from_pkcs8(b"").is_err());
    }

    #[tokio::test]
    async fn the_stock_refills_up_to_its_capacity() {
        let stock = KeyStock::new(2, 1);
        assert_eq!(
            stock.ready().await,
            0,
            "nothing is made before the first take"
        );
        let a = stock.take().await.unwrap();
        let b = stock.take().await.unwrap();
        assert_ne!(a.spki_der(), b.spki_der());
        // The worker refills; the channel bounds the stock at its capacity.
        let c = stock.take().await.unwrap();
        assert_ne!(b.spki_der(), c.spki_der());
        assert!(stock.ready().await <= 2);
    }

    #[tokio::test]
    async fn a_zero_stock_generates_per_request() {
        let stock = KeyStock::new(0, 4);
        let key = stock.take().await.unwrap();
        assert_eq!(key.spki_der()[0], 0x30);
        assert_eq!(stock.ready().await, 0);
    }
}
