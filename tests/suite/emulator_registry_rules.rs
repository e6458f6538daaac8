//! AWS's registry constraints as RegisterThing meets them, over a real claim connection with
//! the station's test client: at most 3 attributes without a thing type (50 with one), the
//! attribute, thing-type and policy name rules, the 2048-character policy document limit, and
//! `require_thing_types_and_groups`. Each rejection is 400 `InvalidParameters`, creates nothing
//! and leaves the token usable.

use crate::api_support::*;
use crate::common::{RawClient, TestEmulator};
use fleet_station::emulator::registry::CertStatus;
use fleet_station::fleet::{ErrorResponse, Format};

/// A template whose thing is `lim_<Serial>` with `attributes` (JSON object text), an optional
/// `ThingTypeName` and `ThingGroups` from parameters, and the thing's `OverrideSettings`.
fn thing_template(attributes: &str, extra_props: &str, overrides: &str) -> String {
    format!(
        r#"{{
  "Parameters": {{ "Serial": {{ "Type": "String" }} }},
  "Resources": {{
    "thing": {{
      "Type": "AWS::IoT::Thing",
      "OverrideSettings": {{ {overrides} }},
      "Properties": {{
        "ThingName": {{ "Fn::Join": ["", ["lim_", {{ "Ref": "Serial" }}]] }},
        "AttributePayload": {attributes}
        {extra_props}
      }}
    }},
    "certificate": {{
      "Type": "AWS::IoT::Certificate",
      "Properties": {{ "CertificateId": {{ "Ref": "AWS::IoT::Certificate::Id" }}, "Status": "ACTIVE" }}
    }}
  }}
}}"#
    )
}

/// An emulator with the fixture templates plus `extra`, configured by `tweak`.
async fn emulator(
    extra: &[(&str, String)],
    tweak: impl FnOnce(&mut fleet_station::emulator::EmulatorConfig),
) -> (TestEmulator, tempfile::TempDir) {
    let templates = templates_with(extra);
    let dir = templates.path().to_path_buf();
    let emu = TestEmulator::start_with(|cfg| {
        cfg.templates = dir;
        tweak(cfg);
    })
    .await;
    (emu, templates)
}

/// A claim connection and a fresh certificate's ownership token and id.
async fn claim(emu: &TestEmulator, id: &str, templates: &[&str]) -> (RawClient, String, String) {
    let mut c = claim_client(emu, id, templates).await;
    let (_, csr) = p256_csr();
    let created = create_from_csr(&mut c, Format::Json, &csr).await.unwrap();
    let token = created.certificate_ownership_token.expose().to_string();
    (c, token, created.certificate_id)
}

/// Asserts a 400 `InvalidParameters` whose message contains `needle`.
fn assert_invalid(r: Result<impl std::fmt::Debug, ErrorResponse>, needle: &str) {
    let e = r.expect_err("RegisterThing should be rejected");
    assert_rejected(&e, 400, "InvalidParameters");
    assert!(e.error_message.contains(needle), "{e}");
}

/// The rejected request created nothing: no thing, certificate still pending, token unused.
fn assert_nothing_created(emu: &TestEmulator, thing: &str, certificate_id: &str) {
    assert!(emu.emulator.registry().thing(thing).unwrap().is_none());
    assert_eq!(
        certificate(emu, certificate_id).unwrap().status,
        CertStatus::PendingActivation
    );
    assert!(has_unused_token(emu, certificate_id));
}

#[tokio::test]
async fn a_thing_without_a_type_gets_at_most_three_attributes_and_fifty_with_one() {
    let four = r#"{ "a": "1", "b": "2", "c": "3", "d": "4" }"#;
    let fifty_one = format!(
        "{{ {} }}",
        (0..51)
            .map(|i| format!("\"a{i}\": \"v\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (emu, _t) = emulator(
        &[
            ("Four.json", thing_template(four, "", "")),
            (
                "FourTyped.json",
                thing_template(four, r#", "ThingTypeName": "Sensor""#, ""),
            ),
            (
                "FiftyOneTyped.json",
                thing_template(&fifty_one, r#", "ThingTypeName": "Sensor""#, ""),
            ),
            (
                "Three.json",
                thing_template(r#"{ "a": "1", "b": "2", "c": "3" }"#, "", ""),
            ),
            (
                "MergeOne.json",
                thing_template(r#"{ "e": "5" }"#, "", r#""AttributePayload": "MERGE""#),
            ),
        ],
        |_| {},
    )
    .await;
    let all = ["Four", "FourTyped", "FiftyOneTyped", "Three", "MergeOne"];
    let (mut c, token, id) = claim(&emu, "claim-attrs", &all).await;

    for format in FORMATS {
        assert_invalid(
            register(&mut c, "Four", format, &token, &[("Serial", "1")]).await,
            "Thing lim_1 would have 4 attributes; a thing without a thing type can have at most 3",
        );
        assert_invalid(
            register(&mut c, "FiftyOneTyped", format, &token, &[("Serial", "1")]).await,
            "a thing with a thing type can have at most 50",
        );
    }
    assert_nothing_created(&emu, "lim_1", &id);

    // With a thing type, four are fine.
    let r = register(
        &mut c,
        "FourTyped",
        Format::Json,
        &token,
        &[("Serial", "1")],
    )
    .await
    .unwrap();
    assert_eq!(r.thing_name.as_deref(), Some("lim_1"));
    assert_eq!(
        emu.emulator
            .registry()
            .thing("lim_1")
            .unwrap()
            .unwrap()
            .attributes
            .len(),
        4
    );

    // The limit applies to the thing as stored: three, then a MERGE of a fourth, is refused.
    let (mut c, token, _) = claim(&emu, "claim-merge", &all).await;
    register(&mut c, "Three", Format::Json, &token, &[("Serial", "2")])
        .await
        .unwrap();
    let (mut c, token, id) = claim(&emu, "claim-merge-2", &all).await;
    assert_invalid(
        register(&mut c, "MergeOne", Format::Json, &token, &[("Serial", "2")]).await,
        "Thing lim_2 would have 4 attributes",
    );
    let stored = emu.emulator.registry().thing("lim_2").unwrap().unwrap();
    assert_eq!(
        stored.attributes.len(),
        3,
        "the existing thing is unchanged"
    );
    assert!(!stored.principals.contains(&id));
}

#[tokio::test]
async fn attribute_thing_type_and_policy_names_follow_aws_patterns() {
    let props = r#", "ThingTypeName": { "Ref": "Type" }"#;
    let named = thing_template(r#"{ "Key": { "Ref": "Value" } }"#, props, "");
    let keyed = thing_template(r#"{ "bad key": "v" }"#, "", "");
    let policy = r#"{
  "Parameters": { "Name": { "Type": "String" } },
  "Resources": {
    "policy": { "Type": "AWS::IoT::Policy", "Properties": { "PolicyName": { "Ref": "Name" } } }
  }
}"#;
    let (emu, _t) = emulator(
        &[
            ("Named.json", named),
            ("Keyed.json", keyed),
            ("ByName.json", policy.to_string()),
        ],
        |_| {},
    )
    .await;
    let (mut c, token, id) = claim(&emu, "claim-names", &["Named", "Keyed", "ByName"]).await;
    fn params<'a>(value: &'a str, ty: &'a str) -> [(&'static str, &'a str); 3] {
        [("Serial", "n"), ("Value", value), ("Type", ty)]
    }
    let long_value = "v".repeat(801);
    for (value, ty, needle) in [
        ("two words", "Sensor", "Invalid attribute value 'two words'"),
        (long_value.as_str(), "Sensor", "Invalid attribute value"),
        ("ok", "Sensor.v2", "Invalid thing type name 'Sensor.v2'"),
    ] {
        assert_invalid(
            register(&mut c, "Named", Format::Json, &token, &params(value, ty)).await,
            needle,
        );
    }
    // An attribute name with a space is a load error in strict mode only; by default the
    // request that meets it fails.
    assert_invalid(
        register(&mut c, "Keyed", Format::Json, &token, &[("Serial", "n")]).await,
        "Invalid attribute name 'bad key'",
    );
    assert_invalid(
        register(
            &mut c,
            "ByName",
            Format::Json,
            &token,
            &[("Name", "<policy>")],
        )
        .await,
        "Invalid policy name '<policy>'",
    );
    assert_nothing_created(&emu, "lim_n", &id);
    // Values at the limits pass.
    let at_limit = "v".repeat(800);
    let r = register(
        &mut c,
        "Named",
        Format::Json,
        &token,
        &params(&at_limit, "a:b_c-d"),
    )
    .await
    .unwrap();
    assert_eq!(r.thing_name.as_deref(), Some("lim_n"));
}

#[tokio::test]
async fn a_policy_document_over_2048_characters_fails_the_registration() {
    // `{"Resource":"<r>"}` is 15 characters around the parameter.
    let template = r#"{
  "Parameters": { "Resource": { "Type": "String" } },
  "Resources": {
    "certificate": {
      "Type": "AWS::IoT::Certificate",
      "Properties": { "CertificateId": { "Ref": "AWS::IoT::Certificate::Id" }, "Status": "ACTIVE" }
    },
    "policy": {
      "Type": "AWS::IoT::Policy",
      "Properties": { "PolicyDocument": {
        "Version": "2012-10-17",
        "Statement": [{ "Effect": "Allow", "Action": "iot:Publish", "Resource": { "Ref": "Resource" } }]
      } }
    }
  }
}"#;
    let (emu, _t) = emulator(&[("BigPolicy.json", template.to_string())], |_| {}).await;
    let (mut c, token, id) = claim(&emu, "claim-policy-size", &["BigPolicy"]).await;
    // The stored document is compact JSON with sorted keys: 94 characters besides the resource.
    let over = "r".repeat(2048 - 93);
    for format in FORMATS {
        assert_invalid(
            register(
                &mut c,
                "BigPolicy",
                format,
                &token,
                &[("Resource", over.as_str())],
            )
            .await,
            "2049 characters excluding white space; AWS IoT allows at most 2048",
        );
    }
    let cert = certificate(&emu, &id).unwrap();
    assert!(cert.policies.is_empty());
    assert_eq!(cert.status, CertStatus::PendingActivation);
    let fits = "r".repeat(2048 - 94);
    register(
        &mut c,
        "BigPolicy",
        Format::Json,
        &token,
        &[("Resource", fits.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(certificate(&emu, &id).unwrap().policies.len(), 1);
}

/// A thing with a thing type, groups and a billing group, all from parameters.
fn grouped_template() -> String {
    thing_template(
        "{}",
        r#", "ThingTypeName": { "Ref": "Type" },
           "ThingGroups": [{ "Ref": "Group" }],
           "BillingGroup": { "Ref": "Billing" }"#,
        "",
    )
}

#[tokio::test]
async fn thing_types_and_groups_are_created_on_first_use_by_default() {
    let (emu, _t) = emulator(&[("Grouped.json", grouped_template())], |_| {}).await;
    let (mut c, token, _) = claim(&emu, "claim-first-use", &["Grouped"]).await;
    let params = [
        ("Serial", "g"),
        ("Type", "Any"),
        ("Group", "any"),
        ("Billing", "b"),
    ];
    register(&mut c, "Grouped", Format::Json, &token, &params)
        .await
        .unwrap();
    let thing = emu.emulator.registry().thing("lim_g").unwrap().unwrap();
    assert_eq!(thing.thing_type.as_deref(), Some("Any"));
}

#[tokio::test]
async fn require_thing_types_and_groups_refuses_names_that_do_not_exist() {
    let (emu, _t) = emulator(&[("Grouped.json", grouped_template())], |cfg| {
        cfg.require_thing_types_and_groups = true;
        cfg.thing_types = vec!["Sensor".into()];
        cfg.thing_groups = vec!["fleet".into()];
        cfg.billing_groups = vec!["lab".into()];
    })
    .await;
    let (mut c, token, id) = claim(&emu, "claim-required", &["Grouped"]).await;
    for (ty, group, billing, needle) in [
        ("Other", "fleet", "lab", "Thing type Other does not exist"),
        ("Sensor", "other", "lab", "Thing group other does not exist"),
        (
            "Sensor",
            "fleet",
            "other",
            "Billing group other does not exist",
        ),
    ] {
        let params = [
            ("Serial", "r"),
            ("Type", ty),
            ("Group", group),
            ("Billing", billing),
        ];
        for format in FORMATS {
            assert_invalid(
                register(&mut c, "Grouped", format, &token, &params).await,
                needle,
            );
        }
    }
    assert_nothing_created(&emu, "lim_r", &id);
    let params = [
        ("Serial", "r"),
        ("Type", "Sensor"),
        ("Group", "fleet"),
        ("Billing", "lab"),
    ];
    register(&mut c, "Grouped", Format::Json, &token, &params)
        .await
        .unwrap();
    let thing = emu.emulator.registry().thing("lim_r").unwrap().unwrap();
    assert_eq!(thing.groups.iter().collect::<Vec<_>>(), ["fleet"]);
}
