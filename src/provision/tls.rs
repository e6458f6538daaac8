//! TLS client configuration for MQTT sessions: the endpoint's root CA as the only trust
//! anchor and the claim certificate + key as the client identity (mutual TLS). SNI is always
//! sent for host names (rustls does so whenever the server name is a DNS name). Port 443
//! needs the ALPN protocol `x-amzn-mqtt-ca` (docs/aws-fleet-provisioning.md §7).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol AWS IoT requires for MQTT over X.509 on port 443.
pub const AWS_MQTT_ALPN: &[u8] = b"x-amzn-mqtt-ca";

/// Why the TLS client setup failed. Messages name the file, never its contents.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum TlsSetupError {
    #[error("cannot read {what} {path}: {source}")]
    #[diagnostic(
        code(station::tls::read),
        help("check the path in [endpoint] (or the emulator state_dir) and the file permissions")
    )]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no usable PEM {kind}")]
    #[diagnostic(
        code(station::tls::pem),
        help("the file must be PEM text starting with -----BEGIN {kind}-----")
    )]
    Pem {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("claim key {path} is encrypted with a passphrase")]
    #[diagnostic(
        code(station::tls::encrypted_key),
        help(
            "the station cannot ask for a passphrase on the line: store the key unencrypted in a file only the station user can read (openssl pkey -in ENCRYPTED.pem -out claim-key.pem && chmod 600 claim-key.pem)"
        )
    )]
    EncryptedKey { path: PathBuf },
    #[error("the claim certificate and key do not form a usable client identity: {0}")]
    #[diagnostic(
        code(station::tls::identity),
        help("claim_cert and claim_key must belong together (same key pair)")
    )]
    Identity(rustls::Error),
}

/// Paths of the files a claim session needs.
#[derive(Debug, Clone)]
pub struct ClaimFiles {
    pub root_ca: PathBuf,
    pub claim_cert: PathBuf,
    pub claim_key: PathBuf,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the root CA(s) from a PEM file.
pub fn read_roots(path: &Path) -> Result<rustls::RootCertStore, TlsSetupError> {
    let pem = read("root CA", path)?;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&pem).flatten() {
        let _ = roots.add(der);
    }
    if roots.is_empty() {
        return Err(TlsSetupError::Pem {
            what: "root CA",
            path: path.to_path_buf(),
            kind: "CERTIFICATE",
        });
    }
    Ok(roots)
}

/// Builds a client config that trusts `roots` and authenticates with `cert_pem` + `key_pem`.
pub fn client_config_from_pem(
    roots: rustls::RootCertStore,
    cert_pem: &[u8],
    key_pem: &[u8],
    alpn: bool,
) -> Result<ClientConfig, TlsSetupError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).flatten().collect();
    if chain.is_empty() {
        return Err(TlsSetupError::Pem {
            what: "client certificate",
            path: PathBuf::new(),
            kind: "CERTIFICATE",
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsSetupError::Pem {
        what: "client key",
        path: PathBuf::new(),
        kind: "PRIVATE KEY",
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsSetupError::Identity)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(TlsSetupError::Identity)?;
    if alpn {
        config.alpn_protocols = vec![AWS_MQTT_ALPN.to_vec()];
    }
    Ok(config)
}

/// The claim session's client config from files.
pub fn claim_client_config(
    files: &ClaimFiles,
    port: u16,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let roots = read_roots(&files.root_ca)?;
    let cert = read("claim certificate", &files.claim_cert)?;
    let key = zeroize::Zeroizing::new(read("claim key", &files.claim_key)?);
    // PKCS#8 `ENCRYPTED PRIVATE KEY`, or a legacy PEM with `Proc-Type: 4,ENCRYPTED`.
    if key.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(TlsSetupError::EncryptedKey {
            path: files.claim_key.clone(),
        });
    }
    if !cert.windows(11).any(|w| w == b"CERTIFICATE") {
        return Err(TlsSetupError::Pem {
            what: "claim certificate",
            path: files.claim_cert.clone(),
            kind: "CERTIFICATE",
        });
    }
    client_config_from_pem(roots, &cert, &key, port == 443)
        .map(Arc::new)
        .map_err(|e| match e {
            TlsSetupError::Pem { what, kind, .. } => TlsSetupError::Pem {
                what,
                path: if what == "client key" {
                    files.claim_key.clone()
                } else {
                    files.claim_cert.clone()
                },
                kind,
            },
            other => other,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encrypted_claim_key_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".into()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let files = ClaimFiles {
            root_ca: dir.path().join("ca.pem"),
            claim_cert: dir.path().join("cert.pem"),
            claim_key: dir.path().join("key.pem"),
        };
        std::fs::write(&files.root_ca, ca.pem()).unwrap();
        std::fs::write(&files.claim_cert, ca.pem()).unwrap();
        for encrypted in [
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkq\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAAAA\n-----END EC PRIVATE KEY-----\n",
        ] {
            std::fs::write(&files.claim_key, encrypted).unwrap();
            let e = claim_client_config(&files, 8883).unwrap_err();
            assert!(
                matches!(&e, TlsSetupError::EncryptedKey { path } if *path == files.claim_key),
                "{e}"
            );
            let help = miette::Diagnostic::help(&e).unwrap().to_string();
            assert!(help.contains("openssl pkey"), "{help}");
        }
    }
}
