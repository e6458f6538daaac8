//! Criterion bench of the emulator's CA, the CPU cost behind each certificate API:
//! - `ca/sign P-256 key`: signing a device certificate for a public key already checked
//!   (what is left once a CSR has been parsed and verified; CreateKeysAndCertificate's cost
//!   apart from its RSA key);
//! - `ca/verify+sign P-256 CSR` and `ca/verify+sign RSA-2048 CSR`: the whole
//!   CreateCertificateFromCsr path (PEM decode, parse, key rules, signature check, signing);
//! - `keys/generate RSA-2048`: one key of the CreateKeysAndCertificate stock (what one
//!   stock worker can sustain).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fleet_station::emulator::ca::CertificateAuthority;
use fleet_station::emulator::key_stock::RsaKey;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};

fn csr_for(key: &KeyPair) -> String {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "bench device");
    p.serialize_request(key).expect("CSR").pem().expect("PEM")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = CertificateAuthority::load_or_create(dir.path()).expect("CA");

    let p256 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let p256_spki = p256.subject_public_key_info();
    let p256_csr = csr_for(&p256);
    let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("RSA key");
    let rsa_csr = csr_for(&rsa);
    ca.sign_csr(p256_csr.as_bytes()).expect("P-256 CSR signs");
    ca.sign_csr(rsa_csr.as_bytes()).expect("RSA CSR signs");

    c.bench_function("ca/sign P-256 key", |b| {
        b.iter(|| ca.issue_for_key(black_box(&p256_spki)))
    });
    c.bench_function("ca/verify+sign P-256 CSR", |b| {
        b.iter(|| ca.sign_csr(black_box(p256_csr.as_bytes())))
    });
    c.bench_function("ca/verify+sign RSA-2048 CSR", |b| {
        b.iter(|| ca.sign_csr(black_box(rsa_csr.as_bytes())))
    });
    let mut keys = c.benchmark_group("keys");
    keys.sample_size(10);
    keys.bench_function("generate RSA-2048", |b| b.iter(RsaKey::generate));
    keys.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
