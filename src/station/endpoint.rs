//! Where the station provisions: the embedded emulator (started in-process, its CA and claim
//! identity used automatically) or a real AWS IoT endpoint from `[endpoint]`.
//!
//! The embedded emulator has its own stop: it stands in for AWS, which does not go away when
//! the station is told to stop, so requests already sent still get their answers during the
//! station's stop grace. It stops when the endpoint is dropped.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::emulator::Emulator;
use crate::provision::tls::{ClaimFiles, claim_client_config};
use crate::shutdown::Shutdown;

/// A resolved endpoint.
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub claim: ClaimFiles,
    pub tls: Arc<rustls::ClientConfig>,
    /// The root CA written to boards (their trust anchor for the endpoint).
    pub board_root_ca: PathBuf,
    /// The embedded emulator, when that is the endpoint.
    pub emulator: Option<Emulator>,
}

impl Endpoint {
    /// Starts the embedded emulator if configured, and builds the claim TLS config.
    pub async fn resolve(cfg: &Config) -> crate::Result<Endpoint> {
        let e = &cfg.endpoint;
        let (host, port, claim, emulator) = if e.is_embedded() {
            let emu = Emulator::start(&cfg.emulator, Shutdown::new()).await?;
            let p = emu.paths().clone();
            let claim = ClaimFiles {
                root_ca: p.ca_cert,
                claim_cert: p.claim_cert,
                claim_key: p.claim_key,
            };
            // "localhost" so that the server name is checked (and sent as SNI) as it would be
            // for a real endpoint.
            (
                "localhost".to_string(),
                emu.local_addr().port(),
                claim,
                Some(emu),
            )
        } else {
            let need = |p: &Option<PathBuf>| p.clone().unwrap_or_default();
            let claim = ClaimFiles {
                root_ca: need(&e.root_ca),
                claim_cert: need(&e.claim_cert),
                claim_key: need(&e.claim_key),
            };
            (e.endpoint.clone(), e.port, claim, None)
        };
        let tls = claim_client_config(&claim, port)?;
        let board_root_ca = cfg
            .jigs
            .board_root_ca
            .clone()
            .unwrap_or_else(|| claim.root_ca.clone());
        Ok(Endpoint {
            host,
            port,
            claim,
            tls,
            board_root_ca,
            emulator,
        })
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(emu) = &self.emulator {
            emu.stop();
        }
    }
}
