//! Criterion bench of the wire contract's payload codec (`fleet_wire::payloads::encode` and
//! `decode`), in JSON and CBOR, both directions, for the four payloads of one device's
//! CreateCertificateFromCsr → RegisterThing: the two requests the station encodes and the
//! emulator decodes, and the two accepted replies the emulator encodes and the station decodes.
//! The values are real: a P-256 CSR from the key pool's code, a certificate the emulator's CA
//! signed for it, a 96-hex-character ownership token as the emulator makes them, and the
//! station's default template parameters (`station.toml`) and FleetTemplate's configuration.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fleet_station::emulator::ca::CertificateAuthority;
use fleet_station::fleet::payloads::{self, Secret};
use fleet_station::fleet::{
    CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse, Format,
    RegisterThingRequest, RegisterThingResponse,
};
use fleet_station::keys::{KeyAlgorithm, KeyMaterial};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes and decodes `value` in both formats, under `group/<format>`.
fn codec<T: Serialize + DeserializeOwned>(c: &mut Criterion, name: &str, value: &T) {
    let mut group = c.benchmark_group(format!("payloads/{name}"));
    for format in [Format::Json, Format::Cbor] {
        let bytes = payloads::encode(format, value);
        payloads::decode::<T>(format, &bytes).expect("round trip");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("encode", format.as_str()),
            value,
            |b, v| b.iter(|| payloads::encode(format, black_box(v))),
        );
        group.bench_with_input(
            BenchmarkId::new("decode", format.as_str()),
            &bytes,
            |b, bytes| b.iter(|| payloads::decode::<T>(format, black_box(bytes)).expect("decodes")),
        );
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = CertificateAuthority::load_or_create(dir.path()).expect("CA");
    let key = KeyMaterial::generate(KeyAlgorithm::P256, "LT-20261203145200-0000001").expect("key");
    let issued = ca.sign_csr(key.csr_pem().as_bytes()).expect("CSR signs");
    let token = hex::encode([0x5au8; 48]);
    let serial = "LT-20261203145200-0000001";

    codec(
        c,
        "CreateCertificateFromCsr request",
        &CreateCertificateFromCsrRequest {
            certificate_signing_request: Some(key.csr_pem().to_string()),
        },
    );
    codec(
        c,
        "CreateCertificateFromCsr accepted",
        &CreateCertificateFromCsrResponse {
            certificate_id: issued.id.clone(),
            certificate_pem: issued.pem.clone(),
            certificate_ownership_token: Secret::new(token.clone()),
        },
    );
    let parameters: BTreeMap<String, String> = [
        ("ThingName", serial),
        ("SerialNumber", serial),
        ("DeviceLocation", "Seattle"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    codec(
        c,
        "RegisterThing request",
        &RegisterThingRequest {
            certificate_ownership_token: Some(Secret::new(token)),
            parameters: Some(parameters),
        },
    );
    let device_configuration: BTreeMap<String, String> = [
        ("FallbackUrl", "https://www.example.com/test-site"),
        ("LocationUrl", "https://example.aws"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    codec(
        c,
        "RegisterThing accepted",
        &RegisterThingResponse {
            device_configuration,
            thing_name: Some(serial.to_string()),
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
