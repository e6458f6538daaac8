//! The fixture templates (AWS's examples) evaluate as their documents say.

use super::*;

// ---------------------------------------------------------------- fixtures

pub(super) fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../../fixtures/templates/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn fleet_template_fixture_is_the_aws_example() {
    let body = fixture("FleetTemplate");
    assert!(Template::parse_with(&body, ParseOptions::STRICT).is_ok());
    let out = eval(
        &body,
        &[
            ("ThingName", "MyLightBulb"),
            ("SerialNumber", "123456"),
            ("DeviceLocation", "Seattle"),
        ],
    )
    .unwrap();
    assert_eq!(out.thing_name(), Some("MyLightBulb"));
    assert_eq!(
        out.thing,
        Some(ThingSpec {
            logical_id: "thing".into(),
            name: "MyLightBulb".into(),
            attributes: params(&[("version", "v1"), ("serialNumber", "serialNumber")]),
            thing_type: Some("ThingPrefix_123456".into()),
            thing_groups: vec!["v1-lightbulbs".into(), "WA".into()],
            billing_group: Some("LightBulbBillingGroup".into()),
            overrides: ThingOverrides {
                attribute_payload: Some(Override::Merge),
                thing_type_name: Some(Override::Replace),
                thing_groups: Some(Override::DoNothing),
            },
        })
    );
    assert_eq!(
        out.certificate,
        Some(CertificateSpec {
            logical_id: "certificate".into(),
            certificate_id: CERT_ID.into(),
            status: CertificateStatus::Active,
            status_override: None,
        })
    );
    let doc = r#"{"Statement":[{"Action":["iot:Publish"],"Effect":"Allow","Resource":["arn:aws:iot:us-east-1:123456789012:topic/foo/bar"]}],"Version":"2012-10-17"}"#;
    assert_eq!(
        out.policies,
        vec![PolicySpec {
            logical_id: "policy".into(),
            name: sha256_hex(doc),
            document: Some(doc.into()),
        }]
    );
    assert_eq!(
        out.device_configuration,
        params(&[
            ("FallbackUrl", "https://www.example.com/test-site"),
            ("LocationUrl", "https://example.aws"),
        ])
    );
    let names: Vec<_> = Template::parse(&body)
        .unwrap()
        .declared_parameters()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(names, ["DeviceLocation", "SerialNumber", "ThingName"]);

    // Missing pieces fail the way AWS reports them.
    let e = eval(
        &body,
        &[
            ("ThingName", "t"),
            ("SerialNumber", "1"),
            ("DeviceLocation", "Portland"),
        ],
    )
    .unwrap_err();
    assert_eq!(e.path, "DeviceConfiguration.LocationUrl");
    let e = eval(
        &body,
        &[("SerialNumber", "1"), ("DeviceLocation", "Seattle")],
    )
    .unwrap_err();
    assert_eq!(
        e.error_message(),
        "Cannot resolve reference value: ThingName"
    );
}

#[test]
fn attached_thing_template_gives_a_thing_with_its_line_and_a_conditional_policy() {
    let body = fixture("AttachedThingTemplate");
    // Strict mode also checks that the emulator can evaluate its policy's conditions.
    assert!(Template::parse_with(&body, ParseOptions::STRICT).is_ok());
    let out = eval(&body, &[("SerialNumber", "1"), ("Line", "L1")]).unwrap();
    assert_eq!(out.thing_name(), Some("att_1"));
    let thing = out.thing.unwrap();
    assert_eq!(thing.attributes.get("line").map(String::as_str), Some("L1"));
    let doc = out.policies[0].document.as_deref().unwrap();
    assert!(doc.contains("iot:Connection.Thing.IsAttached"), "{doc}");
    assert!(
        doc.contains("${iot:Connection.Thing.Attributes[line]}"),
        "{doc}"
    );
}

#[test]
fn python_sdk_sample_template_gives_thing_prefix_1() {
    let body = fixture("PySampleTemplate");
    assert!(Template::parse_with(&body, ParseOptions::STRICT).is_ok());
    let out = eval(
        &body,
        &[("SerialNumber", "1"), ("DeviceLocation", "Seattle")],
    )
    .unwrap();
    assert_eq!(out.thing_name(), Some("ThingPrefix_1"));
    assert_eq!(
        out.device_configuration["LocationUrl"],
        "https://example.aws"
    );
    assert_eq!(
        out.device_configuration["FallbackUrl"],
        "https://www.example.com/test-site"
    );
    let cert = out.certificate.unwrap();
    assert_eq!(cert.status_override, Some(Override::Replace));
    assert_eq!(cert.certificate_id, CERT_ID);
    let thing = out.thing.unwrap();
    assert_eq!(thing.thing_type, None);
    assert!(thing.thing_groups.is_empty());
    assert_eq!(thing.overrides.thing_type_name, Some(Override::Replace));
    assert_eq!(out.policies.len(), 1);
    assert!(
        out.policies[0]
            .document
            .as_deref()
            .unwrap()
            .contains("iot:Connect")
    );
}

#[test]
fn embedded_c_demo_template_gives_fp_demo_names() {
    let body = fixture("EmbeddedCDemoTemplate");
    assert!(Template::parse_with(&body, ParseOptions::STRICT).is_ok());
    let out = eval(&body, &[("SerialNumber", "ABC123")]).unwrap();
    assert_eq!(out.thing_name(), Some("fp_demo_ABC123"));
    let thing = out.thing.unwrap();
    assert_eq!(thing.thing_type.as_deref(), Some("fp_demo_things"));
    assert!(thing.attributes.is_empty() && thing.thing_groups.is_empty());
    assert_eq!(thing.overrides.attribute_payload, Some(Override::Merge));
    assert_eq!(
        out.policies,
        vec![PolicySpec {
            logical_id: "policy".into(),
            name: "demo_thing_policy".into(),
            document: None,
        }]
    );
    assert_eq!(out.device_configuration, params(&[("Foo", "Bar")]));
}
