//! The emulator's certificate authority.
//!
//! At first start it creates, in the state directory, a root CA, a TLS server certificate (SAN
//! `localhost`, `127.0.0.1`) and a claim certificate + key; later starts load them. It signs device
//! certificates the way AWS does (docs/aws-fleet-provisioning.md §1.2, §1.4): the issuer is the
//! AWS-style DN below and the certificate expires at the end of 2049, whether it is signed from a
//! CSR (`CreateCertificateFromCsr`: the CSR's signature and key are checked, its subject is kept)
//! or for a key the emulator made (`CreateKeysAndCertificate`: subject `CN=AWS IoT Certificate`).
//!
//! CSR rules (API-CreateCertificateFromCsr): RSA keys of 2048 to 8192 bits (8192 is the
//! largest a signature can be verified for) and ECC keys on P-256, P-384 or P-521; any other
//! key (RSA-1024, Ed25519, secp256k1, ...) is refused. The signature must verify with SHA-256,
//! SHA-384 or SHA-512 (PKCS#1 v1.5, RSASSA-PSS or ECDSA); SHA-1 and unknown algorithms are
//! refused. Signatures are verified with aws-lc-rs directly, since x509-parser's own
//! verification knows neither P-521 nor ECDSA with SHA-512.
//!
//! The CA key is P-256 (AWS signs with RSA; an ECDSA CA signs in ~20 µs instead of ~1 ms, and
//! no device can tell which kind of key signed its certificate). Parse the CA once at start:
//! signing reuses the parsed issuer.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use ring::digest;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512,
    OID_X509_COMMON_NAME, OID_X509_COUNTRY_NAME, OID_X509_DN_QUALIFIER, OID_X509_LOCALITY_NAME,
    OID_X509_ORGANIZATION_NAME, OID_X509_ORGANIZATIONAL_UNIT, OID_X509_SERIALNUMBER,
    OID_X509_STATE_OR_PROVINCE_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::signature_algorithm::RsaSsaPssParams;

use super::template::SubjectFields;
use crate::files;

/// File names in the state directory.
pub(crate) const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const SERVER_CERT: &str = "server-cert.pem";
const SERVER_KEY: &str = "server-key.pem";
pub(crate) const CLAIM_CERT: &str = "claim-cert.pem";
pub(crate) const CLAIM_KEY: &str = "claim-key.pem";

/// Why the CA could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable PEM certificate or key: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Why a CSR was refused (the message goes into the rejected payload).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrRejection {
    #[error("The CSR could not be parsed as a PEM or DER PKCS#10 request")]
    Unparsable,
    #[error("The CSR signature is not valid")]
    BadSignature,
    #[error(
        "The CSR key is not supported: {0}. Use RSA of at least 2048 bits or ECC on P-256, P-384 or P-521"
    )]
    UnsupportedKey(String),
    #[error(
        "The CSR signature algorithm is not supported: {0}. Sign the CSR with SHA-256, SHA-384 or SHA-512"
    )]
    UnsupportedSignature(String),
}

/// The largest RSA modulus whose signatures can be verified (aws-lc-rs: 8192 bits).
pub(crate) const MAX_RSA_BITS: usize = 8192;

/// The subject AWS gives certificates whose key it made (docs/aws-fleet-provisioning.md §1.4).
pub(crate) const AWS_DEVICE_SUBJECT_CN: &str = "AWS IoT Certificate";

/// A device certificate the CA has just signed.
#[derive(Clone)]
pub struct IssuedCertificate {
    /// 64 lowercase hex characters: SHA-256 of the DER (docs/aws-fleet-provisioning.md §1.2).
    pub id: String,
    pub pem: String,
    pub der: CertificateDer<'static>,
    pub subject: SubjectFields,
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("id", &self.id)
            .finish()
    }
}

/// Paths of the files a client needs to talk to the emulator.
#[derive(Debug, Clone)]
pub struct CaPaths {
    pub ca_cert: PathBuf,
    pub claim_cert: PathBuf,
    pub claim_key: PathBuf,
}

/// The emulator CA: signs device certificates and provides the TLS server identity.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key_der: Vec<u8>,
    claim_cert_der: CertificateDer<'static>,
    paths: CaPaths,
}

/// `certificateId` of a certificate: SHA-256 of its DER, lowercase hex.
pub fn certificate_id(der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, der))
}

fn aws_issuer_dn() -> DistinguishedName {
    // The issuer DN AWS puts on the certificates it issues (docs/aws-fleet-provisioning.md §1.4).
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationalUnitName, "Amazon Web Services");
    dn.push(DnType::OrganizationName, "Amazon.com Inc.");
    dn.push(DnType::LocalityName, "Seattle");
    dn.push(DnType::StateOrProvinceName, "Washington");
    dn.push(DnType::CountryName, "US");
    dn
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    fastrand::fill(&mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and without a leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn now_minus_a_minute() -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::minutes(1)
}

/// The NotAfter AWS puts on device certificates: Dec 31 23:59:59 2049 GMT.
fn aws_not_after() -> OffsetDateTime {
    time::macros::datetime!(2049-12-31 23:59:59 UTC)
}

impl CertificateAuthority {
    /// Loads the CA from `state_dir`, creating it (and the server and claim identities) if
    /// the directory holds none yet.
    pub fn load_or_create(state_dir: &Path) -> Result<CertificateAuthority, CaError> {
        let p = |name: &str| state_dir.join(name);
        let all_present = [
            CA_CERT,
            CA_KEY,
            SERVER_CERT,
            SERVER_KEY,
            CLAIM_CERT,
            CLAIM_KEY,
        ]
        .iter()
        .all(|n| p(n).exists());
        if !all_present {
            Self::create(state_dir)?;
        }
        Self::load(state_dir)
    }

    fn create(state_dir: &Path) -> Result<(), CaError> {
        let write = |name: &str, data: &str, private: bool| {
            let path = state_dir.join(name);
            let r = if private {
                files::write_private(&path, data.as_bytes())
            } else {
                files::write_atomic(&path, data.as_bytes())
            };
            r.map_err(|source| CaError::Write { path, source })
        };

        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = aws_issuer_dn();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.not_before = now_minus_a_minute();
        ca_params.not_after = aws_not_after();
        ca_params.serial_number = Some(random_serial());
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        server_params.distinguished_name = DistinguishedName::new();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress("127.0.0.1".parse().expect("literal IP")),
        ];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.not_before = now_minus_a_minute();
        server_params.not_after = aws_not_after();
        server_params.serial_number = Some(random_serial());
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        let claim_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut claim_params = CertificateParams::default();
        claim_params.distinguished_name = DistinguishedName::new();
        claim_params
            .distinguished_name
            .push(DnType::CommonName, "fleet-station emulator claim");
        claim_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        claim_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        claim_params.not_before = now_minus_a_minute();
        claim_params.not_after = aws_not_after();
        claim_params.serial_number = Some(random_serial());
        let claim_cert = claim_params.signed_by(&claim_key, &issuer)?;

        // Keys first, certificates last: `load_or_create` treats a missing certificate as
        // "not created yet", so a crash in between only causes a fresh start.
        write(CA_KEY, &issuer.key().serialize_pem(), true)?;
        write(SERVER_KEY, &server_key.serialize_pem(), true)?;
        write(CLAIM_KEY, &claim_key.serialize_pem(), true)?;
        write(SERVER_CERT, &server_cert.pem(), false)?;
        write(CLAIM_CERT, &claim_cert.pem(), false)?;
        write(CA_CERT, &ca_cert.pem(), false)?;
        Ok(())
    }

    fn load(state_dir: &Path) -> Result<CertificateAuthority, CaError> {
        let read = |name: &str| {
            let path = state_dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CaError::Read { path, source })
        };
        let bad = |name: &str, reason: String| CaError::BadPem {
            path: state_dir.join(name),
            reason,
        };
        let cert_der = |name: &str| -> Result<CertificateDer<'static>, CaError> {
            CertificateDer::from_pem_slice(read(name)?.as_bytes())
                .map_err(|e| bad(name, e.to_string()))
        };

        let ca_pem = read(CA_CERT)?;
        let ca_key = KeyPair::from_pem(&read(CA_KEY)?).map_err(|e| bad(CA_KEY, e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| bad(CA_CERT, e.to_string()))?;
        let ca_der = cert_der(CA_CERT)?;
        let server_der = cert_der(SERVER_CERT)?;
        let server_key_der = PrivateKeyDer::from_pem_slice(read(SERVER_KEY)?.as_bytes())
            .map_err(|e| bad(SERVER_KEY, e.to_string()))?
            .secret_der()
            .to_vec();
        let claim_cert_der = cert_der(CLAIM_CERT)?;
        Ok(CertificateAuthority {
            issuer,
            server_chain: vec![server_der, ca_der.clone()],
            ca_der,
            server_key_der,
            claim_cert_der,
            paths: CaPaths {
                ca_cert: state_dir.join(CA_CERT),
                claim_cert: state_dir.join(CLAIM_CERT),
                claim_key: state_dir.join(CLAIM_KEY),
            },
        })
    }

    pub(crate) fn paths(&self) -> &CaPaths {
        &self.paths
    }

    pub(crate) fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The TLS server certificate chain (leaf, CA).
    pub(crate) fn server_chain(&self) -> Vec<CertificateDer<'static>> {
        self.server_chain.clone()
    }

    /// The TLS server private key (PKCS#8 DER).
    pub(crate) fn server_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.server_key_der.clone().into())
    }

    /// The claim certificate's id, for registering it with the claim policy.
    pub(crate) fn claim_certificate_id(&self) -> String {
        certificate_id(&self.claim_cert_der)
    }

    /// Signs a device certificate from a PEM (or DER) CSR, as `CreateCertificateFromCsr` does.
    pub fn sign_csr(&self, csr: &[u8]) -> Result<IssuedCertificate, CsrRejection> {
        let der = csr_der(csr).ok_or(CsrRejection::Unparsable)?;
        let (_, req) =
            X509CertificationRequest::from_der(&der).map_err(|_| CsrRejection::Unparsable)?;
        check_key(&req)?;
        verify_csr_signature(&req)?;

        let info = &req.certification_request_info;
        let spki = SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
            .map_err(|e| CsrRejection::UnsupportedKey(e.to_string()))?;
        self.issue(
            distinguished_name(&info.subject),
            subject_fields(&info.subject),
            &spki,
        )
        .map_err(|e| CsrRejection::UnsupportedKey(e.to_string()))
    }

    /// Signs a device certificate for a key the emulator made, as `CreateKeysAndCertificate`
    /// does: subject `CN=AWS IoT Certificate`. `spki_der` is the key's SubjectPublicKeyInfo.
    pub fn issue_for_key(&self, spki_der: &[u8]) -> Result<IssuedCertificate, rcgen::Error> {
        let spki = SubjectPublicKeyInfo::from_der(spki_der)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, AWS_DEVICE_SUBJECT_CN);
        let fields = SubjectFields {
            common_name: Some(AWS_DEVICE_SUBJECT_CN.to_string()),
            ..SubjectFields::default()
        };
        self.issue(dn, fields, &spki)
    }

    /// The one place device certificates are signed: AWS issuer, NotAfter 2049, client auth.
    fn issue(
        &self,
        dn: DistinguishedName,
        subject: SubjectFields,
        key: &SubjectPublicKeyInfo,
    ) -> Result<IssuedCertificate, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.not_before = now_minus_a_minute();
        params.not_after = aws_not_after();
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(key, &self.issuer)?;
        let der = cert.der().clone();
        Ok(IssuedCertificate {
            id: certificate_id(&der),
            pem: cert.pem(),
            der,
            subject,
        })
    }
}

/// Accepts a PEM CSR (the documented form) and, leniently, raw DER.
fn csr_der(csr: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(csr).ok();
    match text {
        Some(t) if t.contains("-----BEGIN") => {
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(t.as_bytes())
                .ok()
                .map(|d| d.as_ref().to_vec())
        }
        _ if csr.first() == Some(&0x30) => Some(csr.to_vec()),
        _ => None,
    }
}

fn check_key(req: &X509CertificationRequest<'_>) -> Result<(), CsrRejection> {
    let spki = &req.certification_request_info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => 0,
        };
        if bits < 2048 {
            return Err(CsrRejection::UnsupportedKey(format!(
                "RSA key of {bits} bits"
            )));
        }
        if bits > MAX_RSA_BITS {
            return Err(CsrRejection::UnsupportedKey(format!(
                "RSA key of {bits} bits (at most {MAX_RSA_BITS} bits can be verified)"
            )));
        }
        return Ok(());
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 || c == OID_NIST_EC_P521 => Ok(()),
            Some(c) => Err(CsrRejection::UnsupportedKey(format!("elliptic curve {c}"))),
            None => Err(CsrRejection::UnsupportedKey(
                "elliptic-curve key without a named curve".into(),
            )),
        };
    }
    Err(CsrRejection::UnsupportedKey(format!("key algorithm {alg}")))
}

/// Verifies the CSR's self-signature with the algorithm it names (key checked beforehand).
fn verify_csr_signature(req: &X509CertificationRequest<'_>) -> Result<(), CsrRejection> {
    use aws_lc_rs::signature as sig;
    let alg = &req.signature_algorithm.algorithm;
    let spki = &req.certification_request_info.subject_pki;
    let unsupported = || CsrRejection::UnsupportedSignature(alg.to_id_string());
    let ecdsa = |hash_bits: u16| -> Result<&'static dyn sig::VerificationAlgorithm, CsrRejection> {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(unsupported)?;
        let p256 = curve == OID_EC_P256;
        let p384 = curve == OID_NIST_EC_P384;
        let p521 = curve == OID_NIST_EC_P521;
        Ok(match hash_bits {
            256 if p256 => &sig::ECDSA_P256_SHA256_ASN1,
            384 if p256 => &sig::ECDSA_P256_SHA384_ASN1,
            512 if p256 => &sig::ECDSA_P256_SHA512_ASN1,
            256 if p384 => &sig::ECDSA_P384_SHA256_ASN1,
            384 if p384 => &sig::ECDSA_P384_SHA384_ASN1,
            512 if p384 => &sig::ECDSA_P384_SHA512_ASN1,
            256 if p521 => &sig::ECDSA_P521_SHA256_ASN1,
            384 if p521 => &sig::ECDSA_P521_SHA384_ASN1,
            512 if p521 => &sig::ECDSA_P521_SHA512_ASN1,
            _ => return Err(unsupported()),
        })
    };
    let verifier: &dyn sig::VerificationAlgorithm = if *alg == OID_PKCS1_SHA256WITHRSA {
        &sig::RSA_PKCS1_2048_8192_SHA256
    } else if *alg == OID_PKCS1_SHA384WITHRSA {
        &sig::RSA_PKCS1_2048_8192_SHA384
    } else if *alg == OID_PKCS1_SHA512WITHRSA {
        &sig::RSA_PKCS1_2048_8192_SHA512
    } else if *alg == OID_PKCS1_RSASSAPSS {
        let params = req
            .signature_algorithm
            .parameters
            .as_ref()
            .and_then(|p| RsaSsaPssParams::try_from(p).ok())
            .ok_or_else(unsupported)?;
        let hash = params.hash_algorithm_oid();
        if *hash == OID_NIST_HASH_SHA256 {
            &sig::RSA_PSS_2048_8192_SHA256
        } else if *hash == OID_NIST_HASH_SHA384 {
            &sig::RSA_PSS_2048_8192_SHA384
        } else if *hash == OID_NIST_HASH_SHA512 {
            &sig::RSA_PSS_2048_8192_SHA512
        } else {
            return Err(unsupported());
        }
    } else if *alg == OID_SIG_ECDSA_WITH_SHA256 {
        ecdsa(256)?
    } else if *alg == OID_SIG_ECDSA_WITH_SHA384 {
        ecdsa(384)?
    } else if *alg == OID_SIG_ECDSA_WITH_SHA512 {
        ecdsa(512)?
    } else {
        return Err(unsupported());
    };
    sig::UnparsedPublicKey::new(verifier, &spki.subject_public_key.data)
        .verify(
            req.certification_request_info.raw,
            &req.signature_value.data,
        )
        .map_err(|_| CsrRejection::BadSignature)
}

fn subject_fields(name: &x509_parser::x509::X509Name<'_>) -> SubjectFields {
    let get = |oid| {
        name.iter_by_oid(oid)
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
    };
    SubjectFields {
        common_name: get(&OID_X509_COMMON_NAME),
        country: get(&OID_X509_COUNTRY_NAME),
        organization: get(&OID_X509_ORGANIZATION_NAME),
        organizational_unit: get(&OID_X509_ORGANIZATIONAL_UNIT),
        state_name: get(&OID_X509_STATE_OR_PROVINCE_NAME),
        serial_number: get(&OID_X509_SERIALNUMBER),
        dn_qualifier: get(&OID_X509_DN_QUALIFIER),
    }
}

/// Copies the CSR subject into the certificate (attributes that are not strings are dropped).
fn distinguished_name(name: &x509_parser::x509::X509Name<'_>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for attr in name.iter_attributes() {
        let Ok(value) = attr.as_str() else { continue };
        let oid = attr.attr_type();
        let ty = if *oid == OID_X509_COMMON_NAME {
            DnType::CommonName
        } else if *oid == OID_X509_COUNTRY_NAME {
            DnType::CountryName
        } else if *oid == OID_X509_ORGANIZATION_NAME {
            DnType::OrganizationName
        } else if *oid == OID_X509_ORGANIZATIONAL_UNIT {
            DnType::OrganizationalUnitName
        } else if *oid == OID_X509_STATE_OR_PROVINCE_NAME {
            DnType::StateOrProvinceName
        } else if *oid == OID_X509_LOCALITY_NAME {
            DnType::LocalityName
        } else if let Some(arcs) = oid.iter() {
            DnType::CustomDnType(arcs.collect())
        } else {
            continue;
        };
        dn.push(ty, value);
    }
    if dn.iter().next().is_none() {
        // AWS's own subject for certificates it names itself (docs/aws-fleet-provisioning.md §1.4).
        dn.push(DnType::CommonName, "AWS IoT Certificate");
    }
    dn
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;
    use x509_parser::prelude::X509Certificate;

    fn csr_for(key: &KeyPair, cn: &str) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 5]), "SN-1");
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn creates_once_then_loads_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let a = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let b = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(a.ca_der(), b.ca_der());
        assert_eq!(a.claim_certificate_id(), b.claim_certificate_id());
        use std::os::unix::fs::PermissionsExt;
        for key in [CA_KEY, SERVER_KEY, CLAIM_KEY] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    #[test]
    fn signs_a_csr_with_the_csr_key_and_subject() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let issued = ca.sign_csr(csr_for(&key, "board-1").as_bytes()).unwrap();
        assert_eq!(issued.id.len(), 64);
        assert_eq!(issued.id, certificate_id(&issued.der));
        assert_eq!(issued.subject.common_name.as_deref(), Some("board-1"));
        assert_eq!(issued.subject.serial_number.as_deref(), Some("SN-1"));

        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        let (_, ca_cert) = X509Certificate::from_der(ca.ca_der()).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(
            cert.validity().not_after.timestamp(),
            aws_not_after().unix_timestamp()
        );
        assert!(cert.issuer().to_string().contains("Amazon Web Services"));
    }

    #[test]
    fn refuses_bad_csrs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.sign_csr(b"hello").unwrap_err(), CsrRejection::Unparsable);
        assert_eq!(
            ca.sign_csr(
                b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            )
            .unwrap_err(),
            CsrRejection::Unparsable
        );
        // Ed25519 is not one of the key types AWS accepts.
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(matches!(
            ca.sign_csr(csr_for(&ed, "x").as_bytes()),
            Err(CsrRejection::UnsupportedKey(_))
        ));
        // A CSR whose signature does not match its content.
        let key = KeyPair::generate().unwrap();
        let pem = csr_for(&key, "x");
        let mut der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec();
        let last = der.len() - 5;
        der[last] ^= 0x55;
        assert_eq!(ca.sign_csr(&der).unwrap_err(), CsrRejection::BadSignature);
    }
}
