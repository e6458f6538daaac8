//! The emulator's fleet-provisioning API layer over real TLS sockets, driven as a device
//! would: CreateKeysAndCertificate, CreateCertificateFromCsr key rules, the pre-provisioning
//! hook (command and HTTP), ownership tokens, disabled and unknown templates. Every API is
//! exercised in JSON and CBOR.

use crate::common;

use std::time::Duration;

use crate::api_support::*;
use crate::common::{RawClient, TestEmulator};
use aws_lc_rs::signature::RsaKeyPair;
use fleet_station::emulator::registry::{CertStatus, now_ms};
use fleet_station::fleet::payloads::encode;
use fleet_station::fleet::{Api, CreateCertificateFromCsrResponse, Format};
use rustls_pki_types::{PrivatePkcs1KeyDer, pem::PemObject};
use x509_parser::prelude::{FromDer, X509Certificate};

const PY: &str = "PySampleTemplate";
const HOOKED: &str = "HookedTemplate";

fn py_params(serial: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SerialNumber", serial.to_string()),
        ("DeviceLocation", "Seattle".to_string()),
    ]
}

fn as_refs<'a>(p: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    p.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Checks a CreateKeysAndCertificate answer: PKCS#1 RSA-2048 key matching the certificate,
/// AWS subject, issuer and expiry, 64-hex id, registered PENDING_ACTIVATION.
fn check_keys_and_certificate(
    emu: &TestEmulator,
    r: &fleet_station::fleet::CreateKeysAndCertificateResponse,
) {
    assert_eq!(r.certificate_id.len(), 64);
    assert!(
        r.certificate_id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    let key_pem = r.private_key.expose();
    assert!(
        key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"),
        "PKCS#1 PEM"
    );
    assert!(
        key_pem
            .trim_end()
            .ends_with("-----END RSA PRIVATE KEY-----")
    );
    let pkcs1 = PrivatePkcs1KeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let pair = RsaKeyPair::from_der(pkcs1.secret_pkcs1_der()).expect("a PKCS#1 RSA key");
    assert_eq!(pair.public_modulus_len() * 8, 2048);

    let der = cert_der(&r.certificate_pem);
    assert_eq!(
        r.certificate_id,
        fleet_station::emulator::ca::certificate_id(&der)
    );
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    use aws_lc_rs::signature::KeyPair as _;
    assert_eq!(
        &cert.public_key().subject_public_key.data[..],
        pair.public_key().as_ref(),
        "the private key matches the certificate"
    );
    assert_eq!(cert.subject().to_string(), "CN=AWS IoT Certificate");
    assert_eq!(
        cert.issuer().to_string(),
        "OU=Amazon Web Services, O=Amazon.com Inc., L=Seattle, ST=Washington, C=US"
    );
    assert_eq!(
        cert.validity().not_after.to_datetime(),
        time::macros::datetime!(2049-12-31 23:59:59 UTC)
    );
    let ca_pem = std::fs::read_to_string(&emu.emulator.paths().ca_cert).unwrap();
    let ca_der = cert_der(&ca_pem);
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(
        certificate(emu, &r.certificate_id).unwrap().status,
        CertStatus::PendingActivation
    );
    assert!(!r.certificate_ownership_token.is_empty());
}

/// The full flow with an emulator-made key: keys → register → the device connects with the
/// returned key and certificate.
async fn keys_register_connect(format: Format, request: &[u8], serial: &str) {
    let emu = TestEmulator::start().await;
    let mut c = claim_client(&emu, &format!("claim-keys-{serial}"), &[PY]).await;
    let created = create_keys(&mut c, format, request).await.unwrap();
    check_keys_and_certificate(&emu, &created);

    let params = py_params(serial);
    let r = register(
        &mut c,
        PY,
        format,
        created.certificate_ownership_token.expose(),
        &as_refs(&params),
    )
    .await
    .unwrap();
    let thing = format!("ThingPrefix_{serial}");
    assert_eq!(r.thing_name.as_deref(), Some(thing.as_str()));
    assert_eq!(r.device_configuration["LocationUrl"], "https://example.aws");
    let cert = certificate(&emu, &created.certificate_id).unwrap();
    assert_eq!(cert.status, CertStatus::Active);
    assert!(cert.things.contains(&thing));

    let tls = emu.tls_with(
        created.certificate_pem.as_bytes(),
        created.private_key.expose().as_bytes(),
    );
    let mut device = RawClient::connect(emu.port(), &thing, tls);
    device.connected().await;
    let codes = device.subscribe(&[format!("things/{thing}/#")]).await;
    assert!(matches!(codes[0], rumqttc::SubscribeReasonCode::Success(_)));
}

#[tokio::test]
async fn keys_and_certificate_in_json_register_and_the_device_connects() {
    keys_register_connect(Format::Json, b"{}", "json1").await;
}

#[tokio::test]
async fn keys_and_certificate_in_cbor_register_and_the_device_connects() {
    keys_register_connect(Format::Cbor, b"\xa0", "cbor1").await;
}

#[tokio::test]
async fn keys_and_certificate_accept_empty_payloads_and_unknown_keys_only() {
    let emu = TestEmulator::start_with(|cfg| cfg.rsa_stock = 2).await;
    let mut c = claim_client(&emu, "claim-keys-payloads", &[]).await;
    // {"certificateId": "x"} in CBOR: an unknown key (as the old beta SDK sent).
    let cbor_unknown = encode(
        Format::Cbor,
        &serde_json::json!({"certificateId": "x", "n": 1}),
    );
    let mut ids = std::collections::BTreeSet::new();
    for (format, payload) in [
        (Format::Json, &b""[..]),
        (
            Format::Json,
            br#"{"certificateId":"ignored","extra":{"a":[1]}}"#,
        ),
        (Format::Cbor, b""),
        (Format::Cbor, &cbor_unknown),
    ] {
        let r = create_keys(&mut c, format, payload)
            .await
            .unwrap_or_else(|e| panic!("{format:?} {payload:?}: {e}"));
        check_keys_and_certificate(&emu, &r);
        assert!(ids.insert(r.certificate_id), "every call makes a new key");
    }
    for (format, payload) in [
        (Format::Json, &b"[]"[..]),
        (Format::Json, b"{\"a\":"),
        (Format::Json, b"\xa0"),
        (Format::Cbor, b"\x80"),
        (Format::Cbor, b"\xff\xff"),
    ] {
        let e = create_keys(&mut c, format, payload).await.unwrap_err();
        assert_rejected(&e, 400, "InvalidPayload");
    }
    assert_eq!(
        common::issued_certificates(emu.emulator.registry()),
        4,
        "rejected requests register nothing"
    );
}

#[tokio::test]
async fn keys_and_certificate_work_without_a_stock() {
    let emu = TestEmulator::start_with(|cfg| cfg.rsa_stock = 0).await;
    let mut c = claim_client(&emu, "claim-keys-nostock", &[]).await;
    let r = create_keys(&mut c, Format::Json, b"{}").await.unwrap();
    check_keys_and_certificate(&emu, &r);
}

/// Every CSR key type AWS accepts, in both formats; the certificate carries the CSR's key.
#[tokio::test]
async fn csr_with_every_accepted_key_type_is_signed_in_json_and_cbor() {
    let emu = TestEmulator::start().await;
    let mut c = claim_client(&emu, "claim-csr-keys", &[]).await;
    let mut csrs: Vec<(&str, String)> = Vec::new();
    for (name, alg) in [
        ("P-256/SHA-256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("P-384/SHA-384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("P-521/SHA-512", &rcgen::PKCS_ECDSA_P521_SHA512),
    ] {
        csrs.push((name, csr_for(&rcgen::KeyPair::generate_for(alg).unwrap())));
    }
    let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    csrs.push(("RSA-2048/SHA-256", csr_for(&rsa)));
    for (name, file) in [
        ("RSA-4096/SHA-256", "rsa4096.pem"),
        ("RSA-2048/PSS-SHA-256", "rsa2048-pss.pem"),
        ("P-256/SHA-512", "p256-sha512.pem"),
        ("P-521/SHA-384", "p521-sha384.pem"),
    ] {
        csrs.push((name, csr_fixture(file)));
    }
    for (name, csr) in &csrs {
        let csr_der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes()).unwrap();
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der)
                .unwrap();
        for format in FORMATS {
            let r = create_from_csr(&mut c, format, csr)
                .await
                .unwrap_or_else(|e| panic!("{name} {format:?}: {e}"));
            let der = cert_der(&r.certificate_pem);
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(
                cert.public_key().raw,
                req.certification_request_info.subject_pki.raw,
                "{name}"
            );
            let subject = cert.subject().to_string();
            assert!(
                subject == "CN=api test device" || subject == "CN=fixture device",
                "{name}: the CSR subject is kept, got {subject}"
            );
            assert_eq!(
                certificate(&emu, &r.certificate_id).unwrap().status,
                CertStatus::PendingActivation
            );
        }
    }
    // A new certificate every time, even for the same CSR.
    let a = create_from_csr(&mut c, Format::Json, &csrs[0].1)
        .await
        .unwrap();
    let b = create_from_csr(&mut c, Format::Json, &csrs[0].1)
        .await
        .unwrap();
    assert_ne!(a.certificate_id, b.certificate_id);
}

/// Keys AWS refuses, bad signatures and non-CSRs: 400 InvalidCSR in both formats, and
/// nothing is registered.
#[tokio::test]
async fn csr_with_a_refused_key_or_a_bad_signature_is_400_in_json_and_cbor() {
    let emu = TestEmulator::start().await;
    let mut c = claim_client(&emu, "claim-csr-refused", &[]).await;
    let ed25519 = csr_for(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap());
    // A P-256 CSR whose signature no longer matches its content.
    let (_, good) = p256_csr();
    let mut der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let n = der.len();
    der[n - 3] ^= 0x5a;
    let tampered = pem::encode_config(
        &pem::Pem::new("CERTIFICATE REQUEST", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "RSA-1024",
            csr_fixture("rsa1024.pem"),
            "not supported: RSA key of 1024 bits",
        ),
        (
            "RSA-8448",
            csr_fixture("rsa8448.pem"),
            "not supported: RSA key of 8448 bits",
        ),
        ("Ed25519", ed25519, "not supported: key algorithm"),
        (
            "Ed448",
            csr_fixture("ed448.pem"),
            "not supported: key algorithm",
        ),
        (
            "secp256k1",
            csr_fixture("secp256k1.pem"),
            "not supported: elliptic curve",
        ),
        (
            "P-224",
            csr_fixture("p224.pem"),
            "not supported: elliptic curve",
        ),
        (
            "RSA-2048/SHA-1",
            csr_fixture("rsa2048-sha1.pem"),
            "signature algorithm is not supported",
        ),
        ("bad signature", tampered, "signature is not valid"),
        ("not a CSR", "hello".into(), "could not be parsed"),
        (
            "empty",
            String::new(),
            "certificateSigningRequest is required",
        ),
    ];
    for (name, csr, message) in &cases {
        for format in FORMATS {
            let e = create_from_csr(&mut c, format, csr)
                .await
                .map(|r| r.certificate_id)
                .unwrap_err();
            assert_rejected(&e, 400, "InvalidCSR");
            assert!(e.error_message.contains(message), "{name}: {e}");
        }
    }
    // A payload that is not a request at all.
    for (format, payload) in [
        (Format::Json, &b"{\"certificateSigningRequest\": 5}"[..]),
        (Format::Cbor, b"\xa1"),
    ] {
        let r: Result<CreateCertificateFromCsrResponse, _> = call(
            &mut c,
            &Api::CreateCertificateFromCsr,
            format,
            payload.to_vec(),
        )
        .await;
        assert_rejected(
            &r.map(|r| r.certificate_id).unwrap_err(),
            400,
            "InvalidPayload",
        );
    }
    assert_eq!(common::issued_certificates(emu.emulator.registry()), 0);
}

// ---------------------------------------------------------------------------------------
// Pre-provisioning hook
// ---------------------------------------------------------------------------------------

/// A certificate (from a CSR) on a claim connection subscribed to HookedTemplate.
async fn hooked_setup(emu: &TestEmulator, id: &str) -> (RawClient, String, String, String) {
    let mut c = claim_client(emu, id, &[HOOKED]).await;
    let (_, csr) = p256_csr();
    let created = create_from_csr(&mut c, Format::Json, &csr).await.unwrap();
    let token = created.certificate_ownership_token.expose().to_string();
    (c, created.certificate_id, created.certificate_pem, token)
}

const HOOKED_PARAMS: [(&str, &str); 2] = [("SerialNumber", "1"), ("DeviceLocation", "Seattle")];

#[tokio::test]
async fn hook_gets_the_documented_input_and_allows() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("input.json");
    let emu = emulator_with_hook(
        hook_command("record_input.sh", &[&record.display().to_string()]),
        5000,
    )
    .await;
    let client_id = "claim-hook-input";
    let (mut c, cert_id, cert_pem, token) = hooked_setup(&emu, client_id).await;
    let r = register(&mut c, HOOKED, Format::Json, &token, &HOOKED_PARAMS)
        .await
        .unwrap();
    assert_eq!(r.thing_name.as_deref(), Some("ThingPrefix_1"));
    assert_eq!(
        certificate(&emu, &cert_id).unwrap().status,
        CertStatus::Active
    );

    // The reply came after the hook finished, so its record is complete.
    let input: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(
        input,
        serde_json::json!({
            "claimCertificateId": claim_certificate_id(&emu),
            "certificateId": cert_id,
            "certificatePem": cert_pem,
            "templateArn": "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/HookedTemplate",
            "clientId": client_id,
            "parameters": {"SerialNumber": "1", "DeviceLocation": "Seattle"},
        })
    );
}

#[tokio::test]
async fn hook_denial_is_403_and_creates_nothing() {
    let emu = emulator_with_hook(hook_command("deny.sh", &[]), 5000).await;
    let (mut c, cert_id, _, token) = hooked_setup(&emu, "claim-hook-deny").await;
    for format in FORMATS {
        let e = register(&mut c, HOOKED, format, &token, &HOOKED_PARAMS)
            .await
            .unwrap_err();
        assert_rejected(&e, 403, "AccessDenied");
        assert_eq!(
            e.error_message,
            "The pre-provisioning hook did not allow provisioning."
        );
    }
    assert!(
        emu.emulator
            .registry()
            .thing("ThingPrefix_1")
            .unwrap()
            .is_none()
    );
    let cert = certificate(&emu, &cert_id).unwrap();
    assert_eq!(cert.status, CertStatus::PendingActivation);
    assert!(cert.policies.is_empty() && cert.things.is_empty());
    assert!(
        has_unused_token(&emu, &cert_id),
        "a denial does not use up the token"
    );
}

#[tokio::test]
async fn hook_overrides_are_applied_over_the_request_parameters() {
    let emu = emulator_with_hook(hook_command("override_serial.sh", &[]), 5000).await;
    let (mut c, cert_id, _, token) = hooked_setup(&emu, "claim-hook-override").await;
    // CBOR this time; the hook answers `"allowProvisioning": 1`.
    let r = register(&mut c, HOOKED, Format::Cbor, &token, &HOOKED_PARAMS)
        .await
        .unwrap();
    assert_eq!(r.thing_name.as_deref(), Some("ThingPrefix_HOOK-7"));
    let thing = emu
        .emulator
        .registry()
        .thing("ThingPrefix_HOOK-7")
        .unwrap()
        .unwrap();
    assert_eq!(thing.thing_type.as_deref(), Some("ThingTypePrefix_HOOK-7"));
    assert!(thing.principals.contains(&cert_id));
    assert!(
        emu.emulator
            .registry()
            .thing("ThingPrefix_1")
            .unwrap()
            .is_none()
    );
    // Parameters the hook did not override keep the request's values.
    assert_eq!(r.device_configuration["LocationUrl"], "https://example.aws");
}

fn process_is_gone(pid: u32) -> bool {
    // Gone, or a zombie waiting for init to reap it: either way it no longer runs.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn hook_that_does_not_answer_in_time_is_killed_and_403() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let emu = emulator_with_hook(
        hook_command("slow.sh", &[&pids.display().to_string()]),
        1000,
    )
    .await;
    let (mut c, cert_id, _, token) = hooked_setup(&emu, "claim-hook-slow").await;
    let started = std::time::Instant::now();
    let e = register(&mut c, HOOKED, Format::Json, &token, &HOOKED_PARAMS)
        .await
        .unwrap_err();
    assert_rejected(&e, 403, "AccessDenied");
    assert!(e.error_message.contains("did not answer within 1 s"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The hook and the process it started were killed before the reply was sent.
    let pids: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    // SIGKILL is delivered asynchronously: wait (bounded) for the kernel to act on it.
    for pid in pids {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !process_is_gone(pid) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(process_is_gone(pid), "hook process {pid} still runs");
    }
    assert_eq!(
        certificate(&emu, &cert_id).unwrap().status,
        CertStatus::PendingActivation
    );
}

#[tokio::test]
async fn hook_with_output_that_is_not_json_is_403() {
    let emu = emulator_with_hook(hook_command("bad_output.sh", &[]), 5000).await;
    let (mut c, _, _, token) = hooked_setup(&emu, "claim-hook-bad").await;
    let e = register(&mut c, HOOKED, Format::Json, &token, &HOOKED_PARAMS)
        .await
        .unwrap_err();
    assert_rejected(&e, 403, "AccessDenied");
    assert!(e.error_message.contains("answer is not valid"), "{e}");
    assert!(
        !e.error_message.contains("yes"),
        "the hook's output is not echoed"
    );
}

#[tokio::test]
async fn hook_command_exiting_non_zero_is_403_even_when_it_printed_allow() {
    let emu = emulator_with_hook(hook_command("exit_nonzero.sh", &[]), 5000).await;
    let (mut c, _, _, token) = hooked_setup(&emu, "claim-hook-exit").await;
    let e = register(&mut c, HOOKED, Format::Cbor, &token, &HOOKED_PARAMS)
        .await
        .unwrap_err();
    assert_rejected(&e, 403, "AccessDenied");
    assert!(e.error_message.contains("exited with status 2"), "{e}");
    assert!(
        emu.emulator
            .registry()
            .thing("ThingPrefix_1")
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn unmapped_lambda_hook_is_403_saying_how_to_map_it() {
    let emu = TestEmulator::start().await;
    let (mut c, _, _, token) = hooked_setup(&emu, "claim-hook-unmapped").await;
    let e = register(&mut c, HOOKED, Format::Json, &token, &HOOKED_PARAMS)
        .await
        .unwrap_err();
    assert_rejected(&e, 403, "AccessDenied");
    assert!(e.error_message.contains(HOOKED_TEMPLATE_ARN), "{e}");
    assert!(e.error_message.contains("[emulator.hooks]"), "{e}");
}

#[tokio::test]
async fn http_hook_gets_the_input_and_its_overrides_apply() {
    let mut server = HttpHook::start(
        200,
        r#"{"allowProvisioning": true, "parameterOverrides": {"SerialNumber": "HTTP-9"}}"#,
    )
    .await;
    let emu = emulator_with_hook(server.url.clone(), 5000).await;
    let (mut c, cert_id, _, token) = hooked_setup(&emu, "claim-hook-http").await;
    let r = register(&mut c, HOOKED, Format::Json, &token, &HOOKED_PARAMS)
        .await
        .unwrap();
    assert_eq!(r.thing_name.as_deref(), Some("ThingPrefix_HTTP-9"));

    let (head, body) = server.requests.recv().await.unwrap();
    assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    let input: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(input["certificateId"], cert_id.as_str());
    assert_eq!(input["clientId"], "claim-hook-http");
    assert_eq!(input["parameters"]["SerialNumber"], "1");
}

#[tokio::test]
async fn http_hook_answering_an_error_status_is_403() {
    let server = HttpHook::start(500, r#"{"allowProvisioning": true}"#).await;
    let emu = emulator_with_hook(server.url.clone(), 5000).await;
    let (mut c, _, _, token) = hooked_setup(&emu, "claim-hook-http500").await;
    let e = register(&mut c, HOOKED, Format::Json, &token, &HOOKED_PARAMS)
        .await
        .unwrap_err();
    assert_rejected(&e, 403, "AccessDenied");
    assert!(e.error_message.contains("HTTP status 500"), "{e}");
}

#[tokio::test]
async fn http_hook_that_cannot_be_reached_is_403() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let emu = emulator_with_hook(format!("http://127.0.0.1:{port}/hook"), 5000).await;
    let (mut c, _, _, token) = hooked_setup(&emu, "claim-hook-http-down").await;
    let e = register(&mut c, HOOKED, Format::Json, &token, &HOOKED_PARAMS)
        .await
        .unwrap_err();
    assert_rejected(&e, 403, "AccessDenied");
}

// ---------------------------------------------------------------------------------------
// Ownership tokens
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_expired_token_fails_and_its_certificate_is_deleted() {
    // A TTL of 0: every token has expired by the time it is used.
    let emu = TestEmulator::start_with(|cfg| cfg.token_ttl_s = 0).await;
    let mut c = claim_client(&emu, "claim-token-expired", &[PY]).await;
    let (_, csr) = p256_csr();
    let created = create_from_csr(&mut c, Format::Json, &csr).await.unwrap();
    let params = py_params("exp");
    for format in FORMATS {
        let e = register(
            &mut c,
            PY,
            format,
            created.certificate_ownership_token.expose(),
            &as_refs(&params),
        )
        .await
        .unwrap_err();
        assert_rejected(&e, 400, "InvalidCertificateOwnershipToken");
    }
    assert!(
        emu.emulator
            .registry()
            .thing("ThingPrefix_exp")
            .unwrap()
            .is_none()
    );
    // The periodic sweep (or this call, whichever runs first) deletes the certificate.
    emu.emulator.registry().expire_tokens(now_ms()).unwrap();
    assert!(certificate(&emu, &created.certificate_id).is_none());
}

#[tokio::test]
async fn expiry_deletes_unregistered_certificates_only() {
    let emu = TestEmulator::start().await;
    let mut c = claim_client(&emu, "claim-token-sweep", &[PY]).await;
    let (_, csr) = p256_csr();
    let left = create_from_csr(&mut c, Format::Json, &csr).await.unwrap();
    let used = create_keys(&mut c, Format::Cbor, b"").await.unwrap();
    let params = py_params("sweep");
    register(
        &mut c,
        PY,
        Format::Cbor,
        used.certificate_ownership_token.expose(),
        &as_refs(&params),
    )
    .await
    .unwrap();

    // An hour (the default TTL) later.
    let deleted = emu
        .emulator
        .registry()
        .expire_tokens(now_ms() + 3_600_000 + 1)
        .unwrap();
    assert_eq!(deleted, vec![left.certificate_id.clone()]);
    assert!(certificate(&emu, &left.certificate_id).is_none());
    assert_eq!(
        certificate(&emu, &used.certificate_id).unwrap().status,
        CertStatus::Active
    );
    let e = register(
        &mut c,
        PY,
        Format::Json,
        left.certificate_ownership_token.expose(),
        &as_refs(&py_params("late")),
    )
    .await
    .unwrap_err();
    assert_rejected(&e, 400, "InvalidCertificateOwnershipToken");
}

#[tokio::test]
async fn a_token_is_single_use_in_both_formats() {
    let emu = TestEmulator::start().await;
    let mut c = claim_client(&emu, "claim-token-reuse", &[PY]).await;
    for (i, format) in FORMATS.into_iter().enumerate() {
        let (_, csr) = p256_csr();
        let created = create_from_csr(&mut c, format, &csr).await.unwrap();
        let token = created.certificate_ownership_token.expose();
        let params = py_params(&format!("reuse{i}"));
        register(&mut c, PY, format, token, &as_refs(&params))
            .await
            .unwrap();
        let other = py_params(&format!("again{i}"));
        let e = register(&mut c, PY, format, token, &as_refs(&other))
            .await
            .unwrap_err();
        assert_rejected(&e, 400, "InvalidCertificateOwnershipToken");
        assert!(
            emu.emulator
                .registry()
                .thing(&format!("ThingPrefix_again{i}"))
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test]
async fn a_token_registers_only_its_own_certificate() {
    let emu = TestEmulator::start().await;
    let mut c = claim_client(&emu, "claim-token-bound", &[PY]).await;
    let (_, csr_a) = p256_csr();
    let (_, csr_b) = p256_csr();
    let a = create_from_csr(&mut c, Format::Json, &csr_a).await.unwrap();
    let b = create_from_csr(&mut c, Format::Json, &csr_b).await.unwrap();

    // B's token, redeemed on another claim connection (tokens are not bound to one).
    let mut other = claim_client(&emu, "claim-token-bound-2", &[PY]).await;
    let params = py_params("bound");
    register(
        &mut other,
        PY,
        Format::Json,
        b.certificate_ownership_token.expose(),
        &as_refs(&params),
    )
    .await
    .unwrap();
    let thing = emu
        .emulator
        .registry()
        .thing("ThingPrefix_bound")
        .unwrap()
        .unwrap();
    assert_eq!(
        thing.principals.iter().collect::<Vec<_>>(),
        [&b.certificate_id]
    );
    assert_eq!(
        certificate(&emu, &b.certificate_id).unwrap().status,
        CertStatus::Active
    );
    let cert_a = certificate(&emu, &a.certificate_id).unwrap();
    assert_eq!(cert_a.status, CertStatus::PendingActivation);
    assert!(cert_a.things.is_empty() && cert_a.policies.is_empty());

    // A token the service never issued.
    let e = register(
        &mut c,
        PY,
        Format::Cbor,
        &"ab".repeat(48),
        &as_refs(&params),
    )
    .await
    .unwrap_err();
    assert_rejected(&e, 400, "InvalidCertificateOwnershipToken");
}

// ---------------------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_disabled_template_is_rejected_and_registers_nothing() {
    let body: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("templates/PySampleTemplate.json"))
            .unwrap(),
    )
    .unwrap();
    let envelope = serde_json::json!({
        "templateName": "DisabledTemplate",
        "templateBody": body.to_string(),
        "enabled": false,
        "provisioningRoleArn": "arn:aws:iam::123456789012:role/FleetProvisioningRole",
    });
    let templates = templates_with(&[("DisabledTemplate.json", envelope.to_string())]);
    let dir = templates.path().to_path_buf();
    let emu = TestEmulator::start_with(|cfg| cfg.templates = dir).await;
    let mut c = claim_client(&emu, "claim-disabled", &["DisabledTemplate"]).await;
    let (_, csr) = p256_csr();
    let created = create_from_csr(&mut c, Format::Json, &csr).await.unwrap();
    let params = py_params("off");
    for format in FORMATS {
        let e = register(
            &mut c,
            "DisabledTemplate",
            format,
            created.certificate_ownership_token.expose(),
            &as_refs(&params),
        )
        .await
        .unwrap_err();
        assert_rejected(&e, 400, "InvalidRequest");
        assert!(
            e.error_message.contains("DisabledTemplate is disabled"),
            "{e}"
        );
    }
    assert!(
        emu.emulator
            .registry()
            .thing("ThingPrefix_off")
            .unwrap()
            .is_none()
    );
    assert_eq!(
        certificate(&emu, &created.certificate_id).unwrap().status,
        CertStatus::PendingActivation
    );
}

#[tokio::test]
async fn an_unknown_template_is_404() {
    let emu = TestEmulator::start().await;
    let mut c = claim_client(&emu, "claim-unknown", &["NoSuchTemplate"]).await;
    let (_, csr) = p256_csr();
    let created = create_from_csr(&mut c, Format::Json, &csr).await.unwrap();
    for format in FORMATS {
        let e = register(
            &mut c,
            "NoSuchTemplate",
            format,
            created.certificate_ownership_token.expose(),
            &[("SerialNumber", "x")],
        )
        .await
        .unwrap_err();
        assert_rejected(&e, 404, "ResourceNotFound");
        assert!(e.error_message.contains("NoSuchTemplate"), "{e}");
    }
}
