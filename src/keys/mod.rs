//! Station-made key pairs and CSRs.
//!
//! - [`KeySource`], [`KeyAlgorithm`]: where a device's key comes from and what kind a
//!   station-made one is (the domain types `station.toml`, the ledger and the engine share).
//! - [`KeyMaterial`]: one private key (PEM, zeroized on drop, redacted in `Debug`) with its
//!   CSR and public key.
//! - [`pool`]: crossbeam worker threads keeping a bounded stock of ready key material, so
//!   provisioning never waits on key generation.

pub mod pool;

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use zeroize::Zeroizing;

pub use pool::KeyPool;

/// Key algorithm of station-made keys (`keys.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    P256,
    P384,
    /// RSA-2048: ~50 ms a key, so keep a deep stock.
    Rsa2048,
}

/// Where a device's private key comes from (`keys.source`; a column of the ledger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
    /// Made by the station's key pool.
    Pool,
    /// Made on the board (GEN_CSR); it never leaves the board.
    Device,
    /// Made by AWS (CreateKeysAndCertificate); it crosses the network.
    Aws,
}

impl KeySource {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Pool => "pool",
            KeySource::Device => "device",
            KeySource::Aws => "aws",
        }
    }

    pub fn parse(s: &str) -> Option<KeySource> {
        match s {
            "pool" => Some(KeySource::Pool),
            "device" => Some(KeySource::Device),
            "aws" => Some(KeySource::Aws),
            _ => None,
        }
    }
}

/// Why key material could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[error("key generation failed: {0}")]
pub struct KeyError(String);

/// A private key with its CSR, ready for `CreateCertificateFromCsr`.
pub struct KeyMaterial {
    algorithm: KeyAlgorithm,
    private_key_pem: Zeroizing<String>,
    csr_pem: String,
    spki_der: Vec<u8>,
}

impl KeyMaterial {
    /// Generates a key pair and a CSR whose subject is `common_name`.
    pub fn generate(algorithm: KeyAlgorithm, common_name: &str) -> Result<KeyMaterial, KeyError> {
        let key = match algorithm {
            KeyAlgorithm::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyAlgorithm::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyAlgorithm::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
        }
        .map_err(|e| KeyError(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let csr = params
            .serialize_request(&key)
            .map_err(|e| KeyError(e.to_string()))?;
        Ok(KeyMaterial {
            algorithm,
            private_key_pem: Zeroizing::new(key.serialize_pem()),
            csr_pem: csr.pem().map_err(|e| KeyError(e.to_string()))?,
            spki_der: key.subject_public_key_info(),
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The CSR (PEM) to send to AWS.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// DER SubjectPublicKeyInfo of the key: the certificate AWS returns must carry it.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The private key (PKCS#8 PEM). Only the jig writer calls this, to write it to the board.
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }

    /// SHA-256 (hex) of the public key: how the ledger names a key without holding it.
    pub fn public_key_sha256(&self) -> String {
        public_key_sha256(&self.spki_der)
    }
}

/// SHA-256 (hex) of a DER SubjectPublicKeyInfo.
pub fn public_key_sha256(spki_der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, spki_der))
}

/// The SubjectPublicKeyInfo (DER) of a PEM CSR, if it parses and its signature verifies.
pub fn csr_public_key(csr_pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::{CertificateSigningRequestDer, pem::PemObject};
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).ok()?;
    let (_, req) = X509CertificationRequest::from_der(der.as_ref()).ok()?;
    req.verify_signature().ok()?;
    Some(req.certification_request_info.subject_pki.raw.to_vec())
}

/// The SubjectPublicKeyInfo (DER) of a PEM certificate.
pub fn certificate_public_key(certificate_pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = CertificateDer::from_pem_slice(certificate_pem.as_bytes()).ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some(cert.public_key().raw.to_vec())
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("algorithm", &self.algorithm)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// Does this certificate (PEM) carry exactly this public key? Used to refuse stale or
/// foreign `CreateCertificateFromCsr` responses.
pub fn certificate_matches_key(certificate_pem: &str, spki_der: &[u8]) -> bool {
    certificate_public_key(certificate_pem).is_some_and(|k| k == spki_der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_csr_for_the_key_and_redacts_it() {
        for alg in [
            KeyAlgorithm::P256,
            KeyAlgorithm::P384,
            KeyAlgorithm::Rsa2048,
        ] {
            let k = KeyMaterial::generate(alg, "dev").unwrap();
            assert!(
                k.csr_pem()
                    .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
            );
            assert!(
                k.private_key_pem()
                    .starts_with("-----BEGIN PRIVATE KEY-----")
            );
            let dbg = format!("{k:?}");
            assert!(!dbg.contains("BEGIN"), "{dbg}");
            let csr = rcgen::CertificateSigningRequestParams::from_pem(k.csr_pem()).unwrap();
            assert_eq!(
                csr.public_key.der_bytes(),
                KeyPair::from_pem(k.private_key_pem()).unwrap().der_bytes()
            );
            assert_eq!(csr_public_key(k.csr_pem()).unwrap(), k.spki_der());
        }
    }

    #[test]
    fn certificate_key_match_detects_a_foreign_certificate() {
        let k = KeyMaterial::generate(KeyAlgorithm::P256, "dev").unwrap();
        let own = KeyPair::from_pem(k.private_key_pem()).unwrap();
        let own_cert = CertificateParams::default().self_signed(&own).unwrap();
        assert!(certificate_matches_key(&own_cert.pem(), k.spki_der()));
        let other = KeyPair::generate().unwrap();
        let other_cert = CertificateParams::default().self_signed(&other).unwrap();
        assert!(!certificate_matches_key(&other_cert.pem(), k.spki_der()));
        assert!(!certificate_matches_key("garbage", k.spki_der()));
    }
}
