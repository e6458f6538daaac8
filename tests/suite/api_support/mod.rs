//! Helpers for the emulator tests (`tests/suite/emulator*.rs`, `tests/suite/broker.rs`): request bodies
//! and calls of the three fleet-provisioning APIs in either format over a real claim
//! connection, template directories with extra templates, hook targets from `fixtures/hooks`,
//! a one-shot HTTP hook server, and certificate checks.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use fleet_station::emulator::registry::Certificate;
use fleet_station::fleet::payloads::{Secret, decode, encode};
use fleet_station::fleet::{
    Api, CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse,
    CreateKeysAndCertificateResponse, ErrorResponse, Format, RegisterThingRequest,
    RegisterThingResponse, ReplyKind,
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::common::{RawClient, Seen, TestEmulator, fixtures};

/// The Lambda ARN of `fixtures/templates/HookedTemplate.json` (AWS's own example).
pub const HOOKED_TEMPLATE_ARN: &str =
    "arn:aws:lambda:us-east-1:765219403047:function:pre_provisioning_test";

pub const FORMATS: [Format; 2] = [Format::Json, Format::Cbor];

pub fn register_api(template: &str) -> Api {
    Api::RegisterThing {
        template: template.into(),
    }
}

/// A claim connection subscribed to the replies of every API (both formats) and of the
/// given templates.
pub async fn claim_client(emu: &TestEmulator, id: &str, templates: &[&str]) -> RawClient {
    claim_client_at(emu.port(), emu.claim_tls(), id, templates).await
}

/// [`claim_client`] for an emulator given by port and claim TLS config (e.g. one running as
/// `station emulate`).
pub async fn claim_client_at(
    port: u16,
    claim_tls: std::sync::Arc<rustls::ClientConfig>,
    id: &str,
    templates: &[&str],
) -> RawClient {
    let mut c = RawClient::connect(port, id, claim_tls);
    c.connected().await;
    let mut apis = vec![Api::CreateKeysAndCertificate, Api::CreateCertificateFromCsr];
    apis.extend(templates.iter().map(|t| register_api(t)));
    let filters: Vec<String> = apis
        .iter()
        .flat_map(|api| {
            FORMATS.into_iter().flat_map(move |f| {
                [ReplyKind::Accepted, ReplyKind::Rejected].map(|k| api.reply_topic(f, k))
            })
        })
        .collect();
    // AWS allows at most 8 filters per SUBSCRIBE.
    for chunk in filters.chunks(8) {
        let codes = c.subscribe(chunk).await;
        assert!(
            codes
                .iter()
                .all(|r| matches!(r, rumqttc::SubscribeReasonCode::Success(_))),
            "{codes:?}"
        );
    }
    c
}

/// Publishes a request and decodes the reply: `Ok` on accepted, `Err` on rejected.
pub async fn call<T: DeserializeOwned>(
    c: &mut RawClient,
    api: &Api,
    format: Format,
    payload: Vec<u8>,
) -> Result<T, ErrorResponse> {
    let (topic, reply) = c.request(&api.request_topic(format), payload).await;
    if topic == api.reply_topic(format, ReplyKind::Accepted) {
        Ok(decode(format, &reply).expect("accepted payload decodes"))
    } else {
        assert_eq!(topic, api.reply_topic(format, ReplyKind::Rejected));
        Err(decode(format, &reply).expect("rejected payload decodes"))
    }
}

pub async fn create_keys(
    c: &mut RawClient,
    format: Format,
    payload: &[u8],
) -> Result<CreateKeysAndCertificateResponse, ErrorResponse> {
    call(c, &Api::CreateKeysAndCertificate, format, payload.to_vec()).await
}

/// The next PUBLISH the client receives (skipping acks), within `RawClient::next`'s bound.
pub async fn next_publish(c: &mut RawClient) -> (String, bytes::Bytes) {
    loop {
        match c.next().await {
            Seen::Publish(t, p) => return (t, p),
            Seen::Down(e) => panic!("connection lost waiting for a PUBLISH: {e}"),
            _ => {}
        }
    }
}

/// A `CreateCertificateFromCsr` request body.
pub fn csr_request(format: Format, csr_pem: &str) -> Vec<u8> {
    encode(
        format,
        &CreateCertificateFromCsrRequest {
            certificate_signing_request: Some(csr_pem.to_string()),
        },
    )
}

pub async fn create_from_csr(
    c: &mut RawClient,
    format: Format,
    csr_pem: &str,
) -> Result<CreateCertificateFromCsrResponse, ErrorResponse> {
    let body = csr_request(format, csr_pem);
    call(c, &Api::CreateCertificateFromCsr, format, body).await
}

/// A CSR for a fresh P-256 key (and the key).
pub fn p256_csr() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = csr_for(&key);
    (key, csr)
}

pub fn csr_for(key: &rcgen::KeyPair) -> String {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "api test device");
    p.serialize_request(key).unwrap().pem().unwrap()
}

/// A CSR fixture from `tests/suite/api_support/csr/` (made with openssl; the keys were discarded).
pub fn csr_fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/suite/api_support/csr")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `RegisterThing` request body.
pub fn register_request(format: Format, token: &str, params: &[(&str, &str)]) -> Vec<u8> {
    encode(
        format,
        &RegisterThingRequest {
            certificate_ownership_token: Some(Secret::new(token)),
            parameters: Some(
                params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
        },
    )
}

pub async fn register(
    c: &mut RawClient,
    template: &str,
    format: Format,
    token: &str,
    params: &[(&str, &str)],
) -> Result<RegisterThingResponse, ErrorResponse> {
    let body = register_request(format, token, params);
    call(c, &register_api(template), format, body).await
}

/// Asserts a rejection's status and errorCode.
pub fn assert_rejected(e: &ErrorResponse, status: u16, code: &str) {
    assert_eq!(
        (e.status_code, e.error_code.as_str()),
        (status, code),
        "{e}"
    );
}

/// A template directory holding the fixture templates plus `extra` (`NAME.json`, text).
pub fn templates_with(extra: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("templates")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// `command:<abs path of fixtures/hooks/NAME> ARGS`.
pub fn hook_command(name: &str, args: &[&str]) -> String {
    let mut s = format!("command:{}", fixtures().join("hooks").join(name).display());
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// An emulator whose HookedTemplate hook calls `target`.
pub async fn emulator_with_hook(target: String, timeout_ms: u64) -> TestEmulator {
    TestEmulator::start_with(|cfg| {
        cfg.hooks
            .insert(HOOKED_TEMPLATE_ARN.to_string(), target.clone());
        cfg.hook_timeout_ms = timeout_ms;
    })
    .await
}

/// The certificate's DER from its PEM.
pub fn cert_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
}

/// The certificate id the emulator gives the claim certificate.
pub fn claim_certificate_id(emu: &TestEmulator) -> String {
    let pem = std::fs::read_to_string(&emu.emulator.paths().claim_cert).unwrap();
    fleet_station::emulator::ca::certificate_id(&cert_der(&pem))
}

pub fn certificate(emu: &TestEmulator, id: &str) -> Option<Certificate> {
    emu.emulator.registry().certificate(id).unwrap()
}

/// Whether an unused ownership token for the certificate is still stored.
pub fn has_unused_token(emu: &TestEmulator, certificate_id: &str) -> bool {
    emu.emulator
        .registry()
        .tokens_of(certificate_id)
        .unwrap()
        .iter()
        .any(|t| !t.used)
}

/// A one-route HTTP server standing in for a Lambda: answers every POST with `status` and
/// `body`, and hands each request (headers, body) to the test.
pub struct HttpHook {
    pub url: String,
    pub requests: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

impl HttpHook {
    pub async fn start(status: u16, body: &'static str) -> HttpHook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let _ = tx.send((head, buf[head_end..head_end + length].to_vec()));
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        HttpHook { url, requests }
    }
}
