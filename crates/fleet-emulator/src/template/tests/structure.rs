//! Tests of template structure: sections, size, the thing, certificate and policy resources.

use super::*;

// ---------------------------------------------------------------- sections and size

#[test]
fn sections_are_checked() {
    for (body, path, needle) in [
        (
            format!(r#"{{"Resources":{POLICY_ONLY},"Conditions":{{}}}}"#),
            "Conditions",
            "not part of the provisioning template language",
        ),
        (
            format!(r#"{{"Resources":{POLICY_ONLY},"Resource":{{}}}}"#),
            "Resource",
            "unknown section",
        ),
        (
            format!(r#"{{"Resources":{POLICY_ONLY},"OverrideSettings":{{}}}}"#),
            "OverrideSettings",
            "inside the resource",
        ),
        ("[]".to_string(), "", "must be a JSON object"),
        ("{}".to_string(), "Resources", "required"),
        (
            r#"{"Resources":{}}"#.to_string(),
            "Resources",
            "no resources",
        ),
        (
            r#"{"Resources":[]}"#.to_string(),
            "Resources",
            "JSON object",
        ),
    ] {
        let e = parse_err(&body);
        let (p, m) = invalid_message(&e);
        assert_eq!(p, path, "{body}");
        assert!(m.contains(needle), "{body}: {m}");
    }
}

#[test]
fn json_syntax_errors_give_line_and_column() {
    match parse_err("{\n  \"Resources\": {,\n}") {
        TemplateError::Json { line, column, .. } => assert_eq!((line, column), (2, 17)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(parse_err(""), TemplateError::Json { .. }));
}

#[test]
fn body_limit_is_10240_characters() {
    let base = format!(r#"{{"Resources":{POLICY_ONLY}}}"#);
    let at_limit = format!("{base}{}", " ".repeat(MAX_BODY_CHARS - base.len()));
    assert_eq!(at_limit.chars().count(), 10_240);
    assert!(Template::parse(&at_limit).is_ok());
    let over = format!("{at_limit} ");
    assert_eq!(parse_err(&over), TemplateError::TooLarge { chars: 10_241 });
    assert_eq!(
        parse_err(&over).to_string(),
        "template body is 10241 characters long; AWS allows at most 10240"
    );
    // Characters, not bytes: 9000 two-byte characters fit.
    let wide = dc_body("{}", "{}", &format!("\"{}\"", "é".repeat(9000)));
    assert!(wide.len() > MAX_BODY_CHARS && wide.chars().count() <= MAX_BODY_CHARS);
    assert!(Template::parse(&wide).is_ok());
}

// ---------------------------------------------------------------- resources

pub(super) fn thing_body(props: &str, overrides: Option<&str>) -> String {
    let overrides = overrides
        .map(|o| format!(r#","OverrideSettings":{o}"#))
        .unwrap_or_default();
    format!(
        r#"{{"Resources":{{"thing":{{"Type":"AWS::IoT::Thing","Properties":{props}{overrides}}}}}}}"#
    )
}

fn cert_body(props: &str, overrides: Option<&str>) -> String {
    let overrides = overrides
        .map(|o| format!(r#","OverrideSettings":{o}"#))
        .unwrap_or_default();
    format!(
        r#"{{"Resources":{{"cert":{{"Type":"AWS::IoT::Certificate","Properties":{props}{overrides}}}}}}}"#
    )
}

#[test]
fn resources_are_checked() {
    for (resources, path, needle) in [
        (
            r#"{"x":{"Type":"AWS::IoT::Widget","Properties":{}}}"#,
            "Resources.x.Type",
            "unknown resource Type",
        ),
        (r#"{"x":{"Properties":{}}}"#, "Resources.x", "needs a Type"),
        (
            r#"{"x":{"Type":"AWS::IoT::Policy"}}"#,
            "Resources.x",
            "needs Properties",
        ),
        (
            r#"{"x":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"P"},"DependsOn":"y"}}"#,
            "Resources.x.DependsOn",
            "unsupported resource attribute",
        ),
        (
            r#"{"a":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":"a"}},
                "b":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":"b"}}}"#,
            "Resources.b",
            "at most one AWS::IoT::Thing",
        ),
        (
            r#"{"a":{"Type":"AWS::IoT::Certificate","Properties":{"CertificateId":"x"}},
                "b":{"Type":"AWS::IoT::Certificate","Properties":{"CertificateId":"y"}}}"#,
            "Resources.b",
            "at most one AWS::IoT::Certificate",
        ),
    ] {
        let e = parse_err(&format!(r#"{{"Resources":{resources}}}"#));
        let (p, m) = invalid_message(&e);
        assert_eq!(p, path, "{resources}");
        assert!(m.contains(needle), "{resources}: {m}");
    }
}

#[test]
fn thing_properties_are_evaluated_and_checked() {
    let body = thing_body(
        r#"{"ThingName":{"Fn::Sub":"dev-${S}"},"AttributePayload":{"serial":{"Ref":"S"},"v":1},
            "ThingTypeName":"lamp","ThingGroups":{"Fn::Split":[",",{"Ref":"G"}]},
            "BillingGroup":"bg"}"#,
        None,
    );
    let out = eval(&body, &[("S", "42"), ("G", "a,b")]).unwrap();
    let thing = out.thing.as_ref().unwrap();
    assert_eq!(out.thing_name(), Some("dev-42"));
    assert_eq!(thing.logical_id, "thing");
    assert_eq!(thing.attributes, params(&[("serial", "42"), ("v", "1")]));
    assert_eq!(thing.thing_type.as_deref(), Some("lamp"));
    assert_eq!(thing.thing_groups, vec!["a", "b"]);
    assert_eq!(thing.billing_group.as_deref(), Some("bg"));
    assert_eq!(thing.overrides, ThingOverrides::default());

    // AWS naming rules, at evaluation.
    let e = eval(&body, &[("S", "4 2"), ("G", "a")]).unwrap_err();
    assert_eq!(e.path, "Resources.thing.Properties.ThingName");
    assert_eq!(
        e.error_message(),
        "Invalid thing name 'dev-4 2': 1-128 characters from a-z A-Z 0-9 : _ -"
    );
    let e = eval(&body, &[("S", "42"), ("G", "a,b c")]).unwrap_err();
    assert_eq!(e.path, "Resources.thing.Properties.ThingGroups");
    assert!(
        e.error_message()
            .starts_with("Invalid thing group name 'b c'")
    );
    let long = "x".repeat(130);
    let e = eval(&body, &[("S", &long), ("G", "a")]).unwrap_err();
    assert!(e.error_message().starts_with("Invalid thing name"));
}

#[test]
fn attribute_names_and_values_follow_aws_rules() {
    let body = thing_body(
        r#"{"ThingName":"t","AttributePayload":{"location":{"Ref":"L"}}}"#,
        None,
    );
    let e = eval(&body, &[("L", "Seattle WA")]).unwrap_err();
    assert_eq!(
        e.path,
        "Resources.thing.Properties.AttributePayload.location"
    );
    assert!(
        e.error_message()
            .starts_with("Invalid attribute value 'Seattle WA'")
    );
    let bad_key = thing_body(r#"{"ThingName":"t","AttributePayload":{"a b":"v"}}"#, None);
    let e = eval(&bad_key, &[]).unwrap_err();
    assert!(
        e.error_message()
            .starts_with("Invalid attribute name 'a b'")
    );
    assert!(
        invalid_message(&strict_err(&bad_key))
            .1
            .contains("attribute name")
    );
    // Strict mode checks literal names when loading.
    let e = strict_err(&thing_body(r#"{"ThingName":"bad name"}"#, None));
    assert_eq!(
        invalid_message(&e).0,
        "Resources.thing.Properties.ThingName"
    );
    let e = strict_err(&thing_body(
        r#"{"ThingName":"t","ThingGroups":["ok","not ok"]}"#,
        None,
    ));
    assert_eq!(
        invalid_message(&e).0,
        "Resources.thing.Properties.ThingGroups[1]"
    );
}

#[test]
fn thing_shape_errors() {
    for (props, needle) in [
        (r#"{"AttributePayload":{}}"#, "needs a ThingName"),
        (
            r#"{"ThingName":"t","Name":"x"}"#,
            "unknown AWS::IoT::Thing property",
        ),
        (
            r#"{"ThingName":"t","PackageVersions":{"p":"1"}}"#,
            "PackageVersions is not supported",
        ),
        (
            r#"{"ThingName":"t","AttributePayload":["a"]}"#,
            "AttributePayload must be an object",
        ),
        (
            r#"{"ThingName":"t","AttributePayload":{"Ref":"A"}}"#,
            "AttributePayload must be an object",
        ),
        (
            r#"{"ThingName":"t","AttributePayload":{"a":{"b":"c"}}}"#,
            "found an object",
        ),
        (r#"{"ThingName":"t","ThingGroups":"g"}"#, "expected a list"),
        (
            r#"{"ThingName":"t","ThingGroups":["g",null]}"#,
            "found null",
        ),
        (r#"{"ThingName":["t"]}"#, "found a list"),
    ] {
        let e = parse_err(&thing_body(props, None));
        assert!(invalid_message(&e).1.contains(needle), "{props}: {e}");
    }
}

#[test]
fn thing_override_settings_are_parsed_and_merge_is_restricted() {
    let out = eval(
        &thing_body(
            r#"{"ThingName":"t"}"#,
            Some(r#"{"AttributePayload":"MERGE","ThingTypeName":"FAIL","ThingGroups":"MERGE"}"#),
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        out.thing.unwrap().overrides,
        ThingOverrides {
            attribute_payload: Some(Override::Merge),
            thing_type_name: Some(Override::Fail),
            thing_groups: Some(Override::Merge),
        }
    );
    // The upper-case key spelling of the docs' prose.
    let out = eval(
        &thing_body(
            r#"{"ThingName":"t"}"#,
            Some(r#"{"ATTRIBUTE_PAYLOAD":"REPLACE","THING_TYPE_NAME":"DO_NOTHING","THING_GROUPS":"FAIL"}"#),
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        out.thing.unwrap().overrides,
        ThingOverrides {
            attribute_payload: Some(Override::Replace),
            thing_type_name: Some(Override::DoNothing),
            thing_groups: Some(Override::Fail),
        }
    );
    for (overrides, path, needle) in [
        (
            r#"{"ThingTypeName":"MERGE"}"#,
            "Resources.thing.OverrideSettings.ThingTypeName",
            "MERGE is valid only for a thing's AttributePayload and ThingGroups",
        ),
        (
            r#"{"BillingGroup":"REPLACE"}"#,
            "Resources.thing.OverrideSettings.BillingGroup",
            "cover AttributePayload, ThingTypeName and ThingGroups",
        ),
        (
            r#"{"AttributePayload":"merge"}"#,
            "Resources.thing.OverrideSettings.AttributePayload",
            "one of DO_NOTHING, REPLACE, FAIL, MERGE",
        ),
        (
            r#"{"AttributePayload":"MERGE","ATTRIBUTE_PAYLOAD":"REPLACE"}"#,
            "Resources.thing.OverrideSettings.AttributePayload",
            "given twice",
        ),
        (
            r#"["MERGE"]"#,
            "Resources.thing.OverrideSettings",
            "JSON object",
        ),
    ] {
        let e = parse_err(&thing_body(r#"{"ThingName":"t"}"#, Some(overrides)));
        let (p, m) = invalid_message(&e);
        assert_eq!(p, path, "{overrides}");
        assert!(m.contains(needle), "{overrides}: {m}");
    }
}

#[test]
fn certificate_status_is_case_insensitive_and_defaults_to_active() {
    let id = r#""CertificateId":{"Ref":"AWS::IoT::Certificate::Id"}"#;
    for (status, want) in [
        (r#","Status":"Active""#, CertificateStatus::Active),
        (r#","Status":"ACTIVE""#, CertificateStatus::Active),
        (r#","Status":"inactive""#, CertificateStatus::Inactive),
        (r#","Status":"INACTIVE""#, CertificateStatus::Inactive),
        ("", CertificateStatus::Active),
    ] {
        let out = eval(&cert_body(&format!("{{{id}{status}}}"), None), &[]).unwrap();
        let cert = out.certificate.unwrap();
        assert_eq!(cert.status, want, "{status}");
        assert_eq!(cert.certificate_id, CERT_ID);
        assert_eq!(cert.logical_id, "cert");
        assert_eq!(cert.status_override, None);
    }
    let dynamic = cert_body(&format!(r#"{{{id},"Status":{{"Ref":"S"}}}}"#), None);
    assert_eq!(
        eval(&dynamic, &[("S", "Inactive")])
            .unwrap()
            .certificate
            .unwrap()
            .status,
        CertificateStatus::Inactive
    );
    let e = eval(&dynamic, &[("S", "REVOKED")]).unwrap_err();
    assert_eq!(
        e.error_message(),
        "Certificate status 'REVOKED' is invalid; expected ACTIVE or INACTIVE"
    );
    let e = parse_err(&cert_body(&format!(r#"{{{id},"Status":"Enabled"}}"#), None));
    assert!(invalid_message(&e).1.contains("ACTIVE or INACTIVE"));
}

#[test]
fn certificate_takes_only_a_certificate_id() {
    let e = parse_err(&cert_body(
        r#"{"CertificateSigningRequest":{"Ref":"CSR"},"Status":"ACTIVE"}"#,
        None,
    ));
    let (p, m) = invalid_message(&e);
    assert_eq!(p, "Resources.cert.Properties.CertificateSigningRequest");
    assert!(m.contains("only by CertificateId"), "{m}");
    for bad in [r#"{"CertificatePem":"x"}"#, r#"{"CACertificatePem":"x"}"#] {
        assert!(
            invalid_message(&parse_err(&cert_body(bad, None)))
                .1
                .contains("only by")
        );
    }
    assert!(
        invalid_message(&parse_err(&cert_body(r#"{"Status":"ACTIVE"}"#, None)))
            .1
            .contains("needs CertificateId")
    );
    // The property list's CertificateID spelling is accepted too.
    let out = eval(
        &cert_body(
            r#"{"CertificateID":{"Ref":"AWS::IoT::Certificate::Id"}}"#,
            None,
        ),
        &[],
    )
    .unwrap();
    assert_eq!(out.certificate.unwrap().certificate_id, CERT_ID);
    // An id that is not a certificate id fails the request.
    let e = eval(
        &cert_body(r#"{"CertificateId":{"Ref":"C"}}"#, None),
        &[("C", "abc")],
    )
    .unwrap_err();
    assert!(
        e.error_message()
            .starts_with("Invalid certificate id 'abc'")
    );
}

#[test]
fn certificate_override_settings() {
    let props = r#"{"CertificateId":{"Ref":"AWS::IoT::Certificate::Id"}}"#;
    let out = eval(&cert_body(props, Some(r#"{"Status":"REPLACE"}"#)), &[]).unwrap();
    assert_eq!(
        out.certificate.unwrap().status_override,
        Some(Override::Replace)
    );
    let e = parse_err(&cert_body(props, Some(r#"{"Status":"MERGE"}"#)));
    assert!(invalid_message(&e).1.contains("MERGE is valid only"));
    let e = parse_err(&cert_body(props, Some(r#"{"CertificateId":"REPLACE"}"#)));
    assert!(invalid_message(&e).1.contains("only Status"));
}

pub(super) fn policy_body(props: &str) -> String {
    format!(r#"{{"Resources":{{"policy":{{"Type":"AWS::IoT::Policy","Properties":{props}}}}}}}"#)
}

pub(super) fn sha256_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

#[test]
fn policy_by_name() {
    let out = eval(
        &policy_body(r#"{"PolicyName":{"Ref":"P"}}"#),
        &[("P", "MyPolicy")],
    )
    .unwrap();
    assert_eq!(
        out.policies,
        vec![PolicySpec {
            logical_id: "policy".into(),
            name: "MyPolicy".into(),
            document: None,
        }]
    );
    let e = eval(
        &policy_body(r#"{"PolicyName":{"Ref":"P"}}"#),
        &[("P", "<bad>")],
    )
    .unwrap_err();
    assert!(e.error_message().starts_with("Invalid policy name '<bad>'"));
}

#[test]
fn policy_by_document_object_or_escaped_string_gets_a_hash_name() {
    let canonical = r#"{"Statement":[{"Action":["iot:Publish"],"Effect":"Allow","Resource":["*"]}],"Version":"2012-10-17"}"#;
    let object = policy_body(
        r#"{"PolicyDocument":{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
            "Action":["iot:Publish"],"Resource":["*"]}]}}"#,
    );
    let escaped = policy_body(
        r#"{"PolicyDocument":"{ \"Version\": \"2012-10-17\", \"Statement\": [{ \"Effect\": \"Allow\", \"Action\":[\"iot:Publish\"], \"Resource\": [\"*\"] }] }"}"#,
    );
    for body in [object, escaped] {
        let out = eval(&body, &[]).unwrap();
        assert_eq!(
            out.policies,
            vec![PolicySpec {
                logical_id: "policy".into(),
                name: sha256_hex(canonical),
                document: Some(canonical.into()),
            }]
        );
        assert_eq!(out.policies[0].name.len(), 64);
    }
}

#[test]
fn policy_documents_over_2048_characters_without_white_space_are_refused() {
    // AWS IoT Core quotas: a policy document is at most 2048 characters, white space not
    // counted. The canonical document is `{"Resource":"<r>"}`: 15 characters around `<r>`.
    let doc = |resource_len: usize| {
        format!(
            r#"{{"PolicyDocument":{{"Resource":"{}"}}}}"#,
            "r".repeat(resource_len)
        )
    };
    assert!(Template::parse(&policy_body(&doc(2048 - 15))).is_ok());
    // A literal document over the limit cannot be loaded, as an object or as a string.
    let e = Template::parse(&policy_body(&doc(2048 - 14))).unwrap_err();
    assert_eq!(e.path(), Some("Resources.policy.Properties.PolicyDocument"));
    assert!(e.to_string().contains("2049 characters"), "{e}");
    let escaped = policy_body(&format!(
        r#"{{"PolicyDocument":"{{ \"Resource\" : \"{}\" }}"}}"#,
        "r".repeat(2048 - 14)
    ));
    assert!(Template::parse(&escaped).is_err());
    // White space in the escaped text does not count.
    let spaced = policy_body(&format!(
        r#"{{"PolicyDocument":"{{   \"Resource\"   :   \"{}\"   }}"}}"#,
        "r".repeat(2048 - 15)
    ));
    assert!(Template::parse(&spaced).is_ok());
    // A document computed per request fails that request (400 InvalidParameters).
    let computed = policy_body(r#"{"PolicyDocument":{"Resource":{"Ref":"Resource"}}}"#);
    let fits = "r".repeat(2048 - 15);
    assert!(eval(&computed, &[("Resource", &fits)]).is_ok());
    let long = "r".repeat(2048 - 14);
    let e = eval(&computed, &[("Resource", &long)]).unwrap_err();
    assert!(
        matches!(e.kind, EvalErrorKind::InvalidPolicyDocument { .. }),
        "{e:?}"
    );
    assert_eq!(e.to_error_response().error_code, "InvalidParameters");
    assert!(e.error_message().contains("at most 2048"), "{e}");
}

#[test]
fn policy_documents_may_hold_intrinsics() {
    let body = policy_body(
        r#"{"PolicyDocument":{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
            "Action":{"Fn::Split":[",",{"Ref":"Actions"}]},
            "Resource":{"Fn::Sub":"arn:aws:iot:us-east-1:123456789012:topic/${Thing}/*"}}]}}"#,
    );
    let out = eval(
        &body,
        &[("Actions", "iot:Publish,iot:Receive"), ("Thing", "t1")],
    )
    .unwrap();
    let doc = out.policies[0].document.clone().unwrap();
    assert_eq!(
        doc,
        r#"{"Statement":[{"Action":["iot:Publish","iot:Receive"],"Effect":"Allow","Resource":"arn:aws:iot:us-east-1:123456789012:topic/t1/*"}],"Version":"2012-10-17"}"#
    );
    assert_eq!(out.policies[0].name, sha256_hex(&doc));
    let e = eval(&body, &[("Actions", "iot:Publish")]).unwrap_err();
    assert_eq!(e.error_message(), "Cannot resolve reference value: Thing");
    assert_eq!(e.path, "Resources.policy.Properties.PolicyDocument");

    // A document computed as a string is parsed per request.
    let text = policy_body(r#"{"PolicyDocument":{"Ref":"Doc"}}"#);
    let out = eval(
        &text,
        &[("Doc", r#"{"Version":"2012-10-17","Statement":[]}"#)],
    )
    .unwrap();
    assert_eq!(
        out.policies[0].document.as_deref(),
        Some(r#"{"Statement":[],"Version":"2012-10-17"}"#)
    );
    let e = eval(&text, &[("Doc", "not json")]).unwrap_err();
    assert!(e.error_message().starts_with("Policy document is invalid"));
    let e = eval(&text, &[("Doc", "[1]")]).unwrap_err();
    assert!(e.error_message().contains("JSON object"));
}

#[test]
fn policy_shape_errors() {
    for (props, needle) in [
        (
            r#"{"PolicyName":"a","PolicyDocument":{"Version":"2012-10-17"}}"#,
            "not both",
        ),
        ("{}", "exactly one of PolicyName"),
        (
            r#"{"PolicyName":"a","Extra":1}"#,
            "unknown AWS::IoT::Policy property",
        ),
        (r#"{"PolicyDocument":"{not json"}"#, "not valid JSON"),
        (r#"{"PolicyDocument":"[1,2]"}"#, "must hold a JSON object"),
        (
            r#"{"PolicyDocument":5}"#,
            "JSON object or a JSON-escaped string",
        ),
        (
            r#"{"PolicyDocument":{"Fn::Split":[",","a"]}}"#,
            "not a list",
        ),
        (
            r#"{"PolicyDocument":{"Statement":[{"Resource":{"Fn::If":[]}}]}}"#,
            "Fn::If is not an intrinsic function",
        ),
    ] {
        let e = parse_err(&policy_body(props));
        assert!(invalid_message(&e).1.contains(needle), "{props}: {e}");
    }
    let e = parse_err(
        r#"{"Resources":{"p":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"a"},
            "OverrideSettings":{"PolicyName":"REPLACE"}}}}"#,
    );
    assert_eq!(
        invalid_message(&e),
        (
            "Resources.p.OverrideSettings",
            "OverrideSettings are not available for policy resources"
        )
    );
}

#[test]
fn strict_mode_refuses_a_static_policy_the_emulator_cannot_evaluate() {
    let bad = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect",
        "Resource":"*","Condition":{"StringLikeIgnoreCase":{"iot:ClientId":"a*"}}}]}"#;
    let escaped = serde_json::to_string(&bad.replace('\n', " ")).unwrap();
    for doc in [bad.to_string(), escaped] {
        let body = policy_body(&format!(r#"{{"PolicyDocument":{doc}}}"#));
        // Lenient (the default): loads, and RegisterThing refuses it (tests/suite).
        assert!(Template::parse(&body).is_ok());
        let e = strict_err(&body);
        let (path, message) = invalid_message(&e);
        assert_eq!(path, "Resources.policy.Properties.PolicyDocument");
        assert!(
            message.starts_with("MalformedPolicyException: policy document: Statement[0]")
                && message.contains("StringLikeIgnoreCase"),
            "{message}"
        );
    }
    // A good document passes strict mode.
    let good = policy_body(
        r#"{"PolicyDocument":{"Statement":[{"Effect":"Allow","Action":"iot:Connect",
            "Resource":"*","Condition":{"Bool":{"iot:Connection.Thing.IsAttached":"true"}}}]}}"#,
    );
    assert!(Template::parse_with(&good, ParseOptions::STRICT).is_ok());
}

#[test]
fn several_policies_come_in_logical_id_order() {
    let body = r#"{"Resources":{
        "zeta":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"Z"}},
        "alpha":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"A"}}}}"#;
    let out = eval(body, &[]).unwrap();
    let names: Vec<_> = out.policies.iter().map(|p| p.logical_id.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);
}
