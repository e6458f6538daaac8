//! Criterion bench of the emulator's template engine on the station's default template,
//! `fixtures/templates/FleetTemplate.json` (AWS's fleet provisioning example): the per-request
//! cost of `Template::evaluate`, and the one-off cost of `Template::parse`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fleet_station::emulator::template::{EvalContext, SubjectFields, Template};

const FLEET_TEMPLATE: &str = include_str!("../fixtures/templates/FleetTemplate.json");
const CERT_ID: &str = "770c2b3b0a8f1d0e5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a1217d0";

fn bench(c: &mut Criterion) {
    let template = Template::parse(FLEET_TEMPLATE).expect("FleetTemplate parses");
    let parameters: BTreeMap<String, String> = [
        ("ThingName", "MyLightBulb"),
        ("SerialNumber", "123456"),
        ("DeviceLocation", "Seattle"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let subject = SubjectFields {
        common_name: Some("AWS IoT Certificate".into()),
        ..SubjectFields::default()
    };
    let ctx = EvalContext {
        parameters: &parameters,
        certificate_id: CERT_ID,
        certificate_subject: &subject,
    };
    template.evaluate(&ctx).expect("FleetTemplate evaluates");

    c.bench_function("template/evaluate FleetTemplate", |b| {
        b.iter(|| black_box(&template).evaluate(black_box(&ctx)))
    });
    c.bench_function("template/parse FleetTemplate", |b| {
        b.iter(|| Template::parse(black_box(FLEET_TEMPLATE)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
