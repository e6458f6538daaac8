//! Tests of evaluation: Ref and parameters, the intrinsic functions, DeviceConfiguration.

use super::*;

// ---------------------------------------------------------------- Ref and parameters

#[test]
fn ref_resolves_declared_parameters_and_applies_defaults() {
    let decl = r#"{"A":{"Type":"String"},"B":{"Type":"String","Default":"dflt"}}"#;
    let expr = r#"{"Fn::Join":["/",[{"Ref":"A"},{"Ref":"B"}]]}"#;
    assert_eq!(
        value_with(decl, "{}", expr, &[("A", "a")]).unwrap(),
        "a/dflt"
    );
    assert_eq!(
        value_with(decl, "{}", expr, &[("A", "a"), ("B", "given")]).unwrap(),
        "a/given"
    );
    assert_eq!(
        message(value_with(decl, "{}", expr, &[("B", "b")])),
        "Cannot resolve reference value: A"
    );
}

#[test]
fn unused_parameters_need_no_value() {
    let decl = r#"{"Unused":{"Type":"String"}}"#;
    assert_eq!(value_with(decl, "{}", r#""x""#, &[]).unwrap(), "x");
}

#[test]
fn undeclared_refs_resolve_from_the_request_by_default() {
    assert_eq!(
        value_of(r#"{"Ref":"SerialNumber"}"#, &[("SerialNumber", "42")]).unwrap(),
        "42"
    );
    assert_eq!(
        message(value_of(r#"{"Ref":"SerialNumber"}"#, &[])),
        "Cannot resolve reference value: SerialNumber"
    );
}

#[test]
fn strict_mode_rejects_undeclared_refs_at_parse_time() {
    let e = strict_err(&dc_body("{}", "{}", r#"{"Ref":"SerialNumber"}"#));
    let (path, msg) = invalid_message(&e);
    assert_eq!(path, "DeviceConfiguration.V");
    assert!(msg.contains("undeclared parameter SerialNumber"), "{msg}");
    // Declared names and pseudo-parameters are fine in strict mode.
    let body = dc_body(
        r#"{"SerialNumber":{"Type":"String"}}"#,
        "{}",
        r#"{"Fn::Sub":"${SerialNumber}-${AWS::IoT::Certificate::Id}"}"#,
    );
    assert!(Template::parse_with(&body, ParseOptions::STRICT).is_ok());
    // The same check reaches names inside Fn::Sub.
    let e = strict_err(&dc_body("{}", "{}", r#"{"Fn::Sub":"x-${Missing}"}"#));
    assert!(invalid_message(&e).1.contains("Missing"));
}

#[test]
fn ref_shape_errors() {
    for bad in [r#"{"Ref":1}"#, r#"{"Ref":""}"#, r#"{"Ref":["A"]}"#] {
        let e = dc_parse_err(bad);
        let (path, msg) = invalid_message(&e);
        assert_eq!(path, "DeviceConfiguration.V");
        assert!(msg.starts_with("Ref expects"), "{msg}");
    }
}

#[test]
fn aws_region_is_not_resolvable_and_gives_the_observed_message() {
    let r = value_of(r#"{"Ref":"AWS::Region"}"#, &[]);
    assert_eq!(message(r), "Cannot resolve reference value: AWS::Region");
    // Neither a request parameter nor a declaration makes it resolvable.
    let r = value_with(
        r#"{"AWS::Region":{"Type":"String","Default":"us-east-1"}}"#,
        "{}",
        r#"{"Ref":"AWS::Region"}"#,
        &[("AWS::Region", "eu-west-1")],
    );
    assert_eq!(message(r), "Cannot resolve reference value: AWS::Region");
    let r = value_of(r#"{"Fn::Sub":"arn:${AWS::Partition}:iot"}"#, &[]);
    assert_eq!(message(r), "Cannot resolve reference value: AWS::Partition");
    // The wire form.
    let e = eval(&dc_body("{}", "{}", r#"{"Ref":"AWS::Region"}"#), &[]).unwrap_err();
    let wire = e.to_error_response();
    assert_eq!(
        (wire.status_code, wire.error_code.as_str()),
        (400, "InvalidParameters")
    );
    assert_eq!(e.path, "DeviceConfiguration.V");
    // Strict mode says so when the template is loaded.
    let e = strict_err(&dc_body("{}", "{}", r#"{"Ref":"AWS::Region"}"#));
    assert!(invalid_message(&e).1.contains("AWS::Region"));
}

#[test]
fn certificate_id_pseudo_parameter_cannot_be_overridden_by_the_request() {
    let expr = r#"{"Ref":"AWS::IoT::Certificate::Id"}"#;
    assert_eq!(value_of(expr, &[]).unwrap(), CERT_ID);
    assert_eq!(
        value_of(expr, &[("AWS::IoT::Certificate::Id", "forged")]).unwrap(),
        CERT_ID
    );
}

#[test]
fn subject_pseudo_parameters_read_the_certificate_subject() {
    let subject = SubjectFields {
        common_name: Some("cn".into()),
        organization: Some("o".into()),
        organizational_unit: Some("ou".into()),
        country: Some("US".into()),
        state_name: Some("WA".into()),
        serial_number: Some("sn".into()),
        dn_qualifier: Some("dnq".into()),
    };
    for (field, want) in [
        ("CommonName", "cn"),
        ("Organization", "o"),
        ("OrganizationalUnit", "ou"),
        ("Country", "US"),
        ("StateName", "WA"),
        ("SerialNumber", "sn"),
        ("DistinguishedNameQualifier", "dnq"),
    ] {
        let body = dc_body(
            "{}",
            "{}",
            &format!(r#"{{"Ref":"AWS::IoT::Certificate::{field}"}}"#),
        );
        let out = eval_subject(&body, &[], &subject).unwrap();
        assert_eq!(out.device_configuration["V"], want, "{field}");
        // An absent subject field fails the request, naming the pseudo-parameter.
        let e = eval(&body, &[]).unwrap_err();
        assert_eq!(
            e.error_message(),
            format!("Cannot resolve reference value: AWS::IoT::Certificate::{field}")
        );
    }
}

#[test]
fn pseudo_parameters_cannot_have_defaults() {
    let e = parse_err(&dc_body(
        r#"{"AWS::IoT::Certificate::Country":{"Type":"String","Default":"US"}}"#,
        "{}",
        r#""x""#,
    ));
    let (path, msg) = invalid_message(&e);
    assert_eq!(path, "Parameters.AWS::IoT::Certificate::Country.Default");
    assert!(msg.contains("pseudo-parameter"), "{msg}");
}

#[test]
fn parameter_declarations_are_validated_and_listed() {
    for (decl, needle) in [
        (r#"{"A":{"Type":"Number"}}"#, "Type must be \"String\""),
        (r#"{"A":{}}"#, "needs a Type"),
        (
            r#"{"A":{"Type":"String","AllowedValues":["x"]}}"#,
            "AllowedValues",
        ),
        (
            r#"{"A":{"Type":"String","Default":{"Ref":"B"}}}"#,
            "Default must be a literal string",
        ),
        (r#"{"A":"String"}"#, "must be a JSON object"),
        (r#"["A"]"#, "Parameters must be a JSON object"),
        (r#"{"":{"Type":"String"}}"#, "parameter name is empty"),
    ] {
        let e = parse_err(&dc_body(decl, "{}", r#""x""#));
        assert!(invalid_message(&e).1.contains(needle), "{decl}: {e}");
    }
    let t = Template::parse(&dc_body(
        r#"{"Z":{"Type":"String","Description":"last"},"A":{"Type":"String","Default":7}}"#,
        "{}",
        r#""x""#,
    ))
    .unwrap();
    assert_eq!(
        t.declared_parameters(),
        &[
            ParameterDecl {
                name: "A".into(),
                param_type: ParameterType::String,
                default: Some("7".into())
            },
            ParameterDecl {
                name: "Z".into(),
                param_type: ParameterType::String,
                default: None
            },
        ]
    );
}

// ---------------------------------------------------------------- Fn::Join

#[test]
fn join_concatenates_with_the_delimiter() {
    assert_eq!(
        value_of(r#"{"Fn::Join":["-",["a",{"Ref":"X"},"c"]]}"#, &[("X", "x")]).unwrap(),
        "a-x-c"
    );
    assert_eq!(
        value_of(r#"{"Fn::Join":["",["ThingPrefix_","1"]]}"#, &[]).unwrap(),
        "ThingPrefix_1"
    );
    assert_eq!(value_of(r#"{"Fn::Join":[",",[]]}"#, &[]).unwrap(), "");
    assert_eq!(
        value_of(
            r#"{"Fn::Join":["+",{"Fn::Split":[",",{"Ref":"L"}]}]}"#,
            &[("L", "a,b,c")]
        )
        .unwrap(),
        "a+b+c"
    );
    assert_eq!(
        value_of(r#"{"Fn::Join":[{"Ref":"D"},["a","b"]]}"#, &[("D", "::")]).unwrap(),
        "a::b"
    );
}

#[test]
fn join_shape_errors_name_the_path() {
    let body = r#"{"Resources":{"thing":{"Type":"AWS::IoT::Thing",
        "Properties":{"ThingName":{"Fn::Join":["x"]}}}}}"#;
    assert_eq!(
        parse_err(body).to_string(),
        "Resources.thing.Properties.ThingName: Fn::Join expects [delimiter, [values]]"
    );
    for bad in [
        r#"{"Fn::Join":"ab"}"#,
        r#"{"Fn::Join":["",["a"],"extra"]}"#,
        r#"{"Fn::Join":{}}"#,
    ] {
        assert_eq!(
            invalid_message(&dc_parse_err(bad)).1,
            "Fn::Join expects [delimiter, [values]]"
        );
    }
    let e = dc_parse_err(r#"{"Fn::Join":["","abc"]}"#);
    assert_eq!(
        invalid_message(&e),
        (
            "DeviceConfiguration.V.Fn::Join[1]",
            "expected a list or Fn::Split, found a string"
        )
    );
    let e = dc_parse_err(r#"{"Fn::Join":["",["a",["nested"]]]}"#);
    assert_eq!(
        invalid_message(&e).0,
        "DeviceConfiguration.V.Fn::Join[1][1]"
    );
    let e = dc_parse_err(r#"{"Fn::Join":["",{"Ref":"L"}]}"#);
    assert!(invalid_message(&e).1.contains("Ref returns a string"));
    let e = dc_parse_err(r#"{"Fn::Join":["",["a",null]]}"#);
    assert!(invalid_message(&e).1.contains("found null"));
}

// ---------------------------------------------------------------- Fn::Select

#[test]
fn select_picks_by_index() {
    assert_eq!(
        value_of(r#"{"Fn::Select":[1,["a","b","c"]]}"#, &[]).unwrap(),
        "b"
    );
    assert_eq!(
        value_of(r#"{"Fn::Select":["2",["a","b","c"]]}"#, &[]).unwrap(),
        "c"
    );
    assert_eq!(
        value_of(r#"{"Fn::Select":[{"Ref":"I"},["a","b"]]}"#, &[("I", "0")]).unwrap(),
        "a"
    );
    assert_eq!(
        value_of(
            r#"{"Fn::Select":[2,{"Fn::Split":["-",{"Ref":"S"}]}]}"#,
            &[("S", "x-y-z")]
        )
        .unwrap(),
        "z"
    );
    // A null elsewhere in the list is not a problem.
    assert_eq!(
        value_of(r#"{"Fn::Select":[0,["a",null]]}"#, &[]).unwrap(),
        "a"
    );
}

#[test]
fn select_out_of_range_fails_the_request() {
    assert_eq!(
        message(value_of(r#"{"Fn::Select":[5,["a","b"]]}"#, &[])),
        "Fn::Select index 5 is out of bounds for a list of 2 values"
    );
    assert_eq!(
        message(value_of(
            r#"{"Fn::Select":[3,{"Fn::Split":[",",{"Ref":"S"}]}]}"#,
            &[("S", "a,b")]
        )),
        "Fn::Select index 3 is out of bounds for a list of 2 values"
    );
    assert_eq!(
        message(value_of(r#"{"Fn::Select":[1,["a",null]]}"#, &[])),
        "Fn::Select index 1 selects a null value"
    );
    assert_eq!(
        message(value_of(
            r#"{"Fn::Select":[{"Ref":"I"},["a"]]}"#,
            &[("I", "first")]
        )),
        "Fn::Select index 'first' is not a non-negative integer"
    );
    assert_eq!(
        message(value_of(
            r#"{"Fn::Select":[{"Ref":"I"},["a"]]}"#,
            &[("I", "-1")]
        )),
        "Fn::Select index '-1' is not a non-negative integer"
    );
    // Strict mode catches a literal index past a literal list when loading.
    let e = strict_err(&dc_body("{}", "{}", r#"{"Fn::Select":[5,["a","b"]]}"#));
    assert!(invalid_message(&e).1.contains("out of bounds"));
    let e = strict_err(&dc_body("{}", "{}", r#"{"Fn::Select":[1,["a",null]]}"#));
    assert!(invalid_message(&e).1.contains("null"));
}

#[test]
fn select_shape_errors() {
    for bad in [
        r#"{"Fn::Select":[0]}"#,
        r#"{"Fn::Select":"0"}"#,
        r#"{"Fn::Select":[0,["a"],1]}"#,
    ] {
        assert_eq!(
            invalid_message(&dc_parse_err(bad)).1,
            "Fn::Select expects [index, [values]]"
        );
    }
    for bad in [
        r#"{"Fn::Select":[-1,["a"]]}"#,
        r#"{"Fn::Select":[1.5,["a"]]}"#,
        r#"{"Fn::Select":["one",["a"]]}"#,
        r#"{"Fn::Select":[true,["a"]]}"#,
        r#"{"Fn::Select":[null,["a"]]}"#,
    ] {
        let e = dc_parse_err(bad);
        let (path, msg) = invalid_message(&e);
        assert_eq!(path, "DeviceConfiguration.V.Fn::Select[0]", "{bad}");
        assert!(msg.contains("non-negative integer"), "{bad}: {msg}");
    }
    let e = dc_parse_err(r#"{"Fn::Select":[0,"abc"]}"#);
    assert!(invalid_message(&e).1.contains("expected a list"));
}

// ---------------------------------------------------------------- Fn::Split

#[test]
fn split_yields_a_list() {
    assert_eq!(
        value_of(
            r#"{"Fn::Select":[0,{"Fn::Split":["|",{"Ref":"S"}]}]}"#,
            &[("S", "no-delimiter")]
        )
        .unwrap(),
        "no-delimiter"
    );
    assert_eq!(
        value_of(
            r#"{"Fn::Select":[1,{"Fn::Split":[",",{"Fn::Join":["",["a",",","b"]]}]}]}"#,
            &[]
        )
        .unwrap(),
        "b"
    );
    assert_eq!(
        value_of(r#"{"Fn::Select":[2,{"Fn::Split":[",","a,,c"]}]}"#, &[]).unwrap(),
        "c"
    );
}

#[test]
fn split_errors() {
    let e = dc_parse_err(r#"{"Fn::Split":[",","a,b"]}"#);
    assert!(
        invalid_message(&e)
            .1
            .starts_with("Fn::Split returns a list, but a string is needed here")
    );
    let e = dc_parse_err(r#"{"Fn::Select":[0,{"Fn::Split":["","ab"]}]}"#);
    assert_eq!(
        invalid_message(&e),
        (
            "DeviceConfiguration.V.Fn::Select[1].Fn::Split[0]",
            "Fn::Split delimiter is empty"
        )
    );
    assert_eq!(
        message(value_of(
            r#"{"Fn::Select":[0,{"Fn::Split":[{"Ref":"D"},"ab"]}]}"#,
            &[("D", "")]
        )),
        "Fn::Split delimiter is empty"
    );
    for bad in [
        r#"{"Fn::Select":[0,{"Fn::Split":[","]}]}"#,
        r#"{"Fn::Select":[0,{"Fn::Split":","}]}"#,
    ] {
        assert_eq!(
            invalid_message(&dc_parse_err(bad)).1,
            "Fn::Split expects [delimiter, string]"
        );
    }
}

// ---------------------------------------------------------------- Fn::FindInMap and Mappings

const MAPS: &str =
    r#"{"LocationTable":{"Seattle":{"LocationUrl":"https://example.aws","Port":8883}}}"#;

#[test]
fn find_in_map_reads_two_levels() {
    let expr = r#"{"Fn::FindInMap":["LocationTable",{"Ref":"L"},"LocationUrl"]}"#;
    assert_eq!(
        value_with("{}", MAPS, expr, &[("L", "Seattle")]).unwrap(),
        "https://example.aws"
    );
    let expr = r#"{"Fn::FindInMap":["LocationTable","Seattle","Port"]}"#;
    assert_eq!(value_with("{}", MAPS, expr, &[]).unwrap(), "8883");
}

#[test]
fn find_in_map_misses_fail_the_request() {
    let r = value_with(
        "{}",
        MAPS,
        r#"{"Fn::FindInMap":["LocationTable",{"Ref":"L"},"LocationUrl"]}"#,
        &[("L", "Portland")],
    );
    assert_eq!(
        message(r),
        "Fn::FindInMap cannot find key 'Portland' in mapping 'LocationTable'"
    );
    let r = value_with(
        "{}",
        MAPS,
        r#"{"Fn::FindInMap":["LocationTable","Seattle",{"Ref":"K"}]}"#,
        &[("K", "Nope")],
    );
    assert_eq!(
        message(r),
        "Fn::FindInMap cannot find key 'Nope' under 'Seattle' in mapping 'LocationTable'"
    );
    let r = value_with(
        "{}",
        MAPS,
        r#"{"Fn::FindInMap":[{"Ref":"M"},"Seattle","Port"]}"#,
        &[("M", "Other")],
    );
    assert_eq!(message(r), "Fn::FindInMap cannot find mapping 'Other'");
    // Literal misses load in the default mode (AWS would accept the template) but not in strict.
    let lit = dc_body(
        "{}",
        MAPS,
        r#"{"Fn::FindInMap":["LocationTable","Paris","Port"]}"#,
    );
    assert!(Template::parse(&lit).is_ok());
    assert!(invalid_message(&strict_err(&lit)).1.contains("\"Paris\""));
    let lit = dc_body(
        r#"{"A":{"Type":"String"}}"#,
        MAPS,
        r#"{"Fn::FindInMap":["Nope",{"Ref":"A"},"B"]}"#,
    );
    assert!(invalid_message(&strict_err(&lit)).1.contains("\"Nope\""));
    let lit = dc_body(
        "{}",
        MAPS,
        r#"{"Fn::FindInMap":["LocationTable","Seattle","X"]}"#,
    );
    assert!(invalid_message(&strict_err(&lit)).1.contains("\"X\""));
}

#[test]
fn find_in_map_shape_errors() {
    for bad in [
        r#"{"Fn::FindInMap":["LocationTable","Seattle"]}"#,
        r#"{"Fn::FindInMap":"LocationTable"}"#,
    ] {
        assert_eq!(
            invalid_message(&parse_err(&dc_body("{}", MAPS, bad))).1,
            "Fn::FindInMap expects [MapName, TopLevelKey, SecondLevelKey]"
        );
    }
}

#[test]
fn mappings_allow_no_intrinsics_and_only_strings() {
    for (maps, needle) in [
        (
            r#"{"T":{"k":{"v":{"Ref":"A"}}}}"#,
            "intrinsic functions, parameters and pseudo-parameters are not allowed",
        ),
        (
            r#"{"T":{"k":{"v":{"Fn::Join":["",["a"]]}}}}"#,
            "not allowed in Mappings",
        ),
        (r#"{"T":{"k":{"v":["a"]}}}"#, "literal string"),
        (r#"{"T":{"k":{"v":{"deeper":"x"}}}}"#, "literal string"),
        (r#"{"T":{"k":"flat"}}"#, "two levels"),
        (r#"{"T":"flat"}"#, "must be a JSON object"),
    ] {
        let e = parse_err(&dc_body("{}", maps, r#""x""#));
        assert!(invalid_message(&e).1.contains(needle), "{maps}: {e}");
    }
    let e = parse_err(&dc_body("{}", r#"{"T":{"k":{"v":{"Ref":"A"}}}}"#, r#""x""#));
    assert_eq!(invalid_message(&e).0, "Mappings.T.k.v");
}

// ---------------------------------------------------------------- Fn::Sub

#[test]
fn sub_substitutes_parameters_pseudo_parameters_and_variables() {
    assert_eq!(
        value_of(
            r#"{"Fn::Sub":"${Prefix}-${AWS::IoT::Certificate::Id}"}"#,
            &[("Prefix", "dev")]
        )
        .unwrap(),
        format!("dev-{CERT_ID}")
    );
    assert_eq!(
        value_of(
            r#"{"Fn::Sub":["${A}/${B}/${C}",{"A":"lit","B":{"Ref":"P"}}]}"#,
            &[("P", "p"), ("C", "c")]
        )
        .unwrap(),
        "lit/p/c"
    );
    // A variable wins over a parameter of the same name.
    assert_eq!(
        value_of(r#"{"Fn::Sub":["${P}",{"P":"var"}]}"#, &[("P", "param")]).unwrap(),
        "var"
    );
    assert_eq!(
        value_of(r#"{"Fn::Sub":"no variables"}"#, &[]).unwrap(),
        "no variables"
    );
    assert_eq!(value_of(r#"{"Fn::Sub":""}"#, &[]).unwrap(), "");
    assert_eq!(
        value_of(r#"{"Fn::Sub":"$5 {x} $ {y} ${X}${X}"}"#, &[("X", "!")]).unwrap(),
        "$5 {x} $ {y} !!"
    );
}

#[test]
fn sub_escape_keeps_a_literal_dollar_brace() {
    assert_eq!(
        value_of(r#"{"Fn::Sub":"${!Literal}"}"#, &[]).unwrap(),
        "${Literal}"
    );
    assert_eq!(
        value_of(
            r#"{"Fn::Sub":"topic/${!iot:Connection.Thing.ThingName}/${T}"}"#,
            &[("T", "t")]
        )
        .unwrap(),
        "topic/${iot:Connection.Thing.ThingName}/t"
    );
}

#[test]
fn sub_errors() {
    assert_eq!(
        message(value_of(r#"{"Fn::Sub":"a-${Missing}"}"#, &[])),
        "Cannot resolve reference value: Missing"
    );
    for (bad, needle) in [
        (r#"{"Fn::Sub":"abc ${open"}"#, "is not closed"),
        (r#"{"Fn::Sub":"${}"}"#, "empty variable name"),
        (r#"{"Fn::Sub":"${thing.Arn}"}"#, "Fn::GetAtt"),
        (
            r#"{"Fn::Sub":5}"#,
            "Fn::Sub expects a string or [string, {variables}]",
        ),
        (r#"{"Fn::Sub":["${A}"]}"#, "Fn::Sub expects"),
        (r#"{"Fn::Sub":["${A}",["A"]]}"#, "Fn::Sub expects"),
        (r#"{"Fn::Sub":[{"Ref":"T"},{}]}"#, "Fn::Sub expects"),
        (r#"{"Fn::Sub":["${A}",{"A":["x"]}]}"#, "found a list"),
    ] {
        let e = dc_parse_err(bad);
        assert!(invalid_message(&e).1.contains(needle), "{bad}: {e}");
    }
    let e = dc_parse_err(r#"{"Fn::Sub":["${A}",{"A":["x"]}]}"#);
    assert_eq!(invalid_message(&e).0, "DeviceConfiguration.V.Fn::Sub[1].A");
    let e = dc_parse_err(r#"{"Fn::Sub":"é ${open"}"#);
    assert!(invalid_message(&e).1.contains("at character 2"), "{e}");
}

#[test]
fn unsupported_intrinsics_are_rejected_with_the_supported_list() {
    for name in [
        "Fn::If",
        "Fn::GetAtt",
        "Fn::Base64",
        "Fn::Equals",
        "Fn::ImportValue",
    ] {
        let e = dc_parse_err(&format!(r#"{{"{name}":["a","b"]}}"#));
        let msg = invalid_message(&e).1;
        assert!(msg.starts_with(name), "{msg}");
        assert!(msg.contains("Ref, Fn::Join, Fn::Select, Fn::Split, Fn::FindInMap, Fn::Sub"));
    }
}

// ---------------------------------------------------------------- DeviceConfiguration

#[test]
fn device_configuration_is_a_flat_string_map() {
    let body = format!(
        r#"{{"Resources":{POLICY_ONLY},"DeviceConfiguration":{{"Port":8883,"Tls":true,
            "Url":"https://x","Id":{{"Ref":"AWS::IoT::Certificate::Id"}}}}}}"#
    );
    let out = eval(&body, &[]).unwrap();
    assert_eq!(
        out.device_configuration,
        params(&[
            ("Port", "8883"),
            ("Tls", "true"),
            ("Url", "https://x"),
            ("Id", CERT_ID)
        ])
    );
    let out = eval(&format!(r#"{{"Resources":{POLICY_ONLY}}}"#), &[]).unwrap();
    assert!(out.device_configuration.is_empty());
    assert_eq!(out.thing_name(), None);
}

#[test]
fn nested_objects_in_device_configuration_are_rejected() {
    let e = dc_parse_err(r#"{"Nested":{"Deeper":"x"}}"#);
    assert_eq!(
        invalid_message(&e),
        (
            "DeviceConfiguration.V",
            "nested objects are not supported in DeviceConfiguration; the device receives a \
             flat map of strings"
        )
    );
    let e = dc_parse_err(r#"["a","b"]"#);
    assert!(invalid_message(&e).1.starts_with("lists are not supported"));
    let e = dc_parse_err("null");
    assert!(invalid_message(&e).1.contains("found null"));
    let body = format!(r#"{{"Resources":{POLICY_ONLY},"DeviceConfiguration":["a"]}}"#);
    assert_eq!(invalid_message(&parse_err(&body)).0, "DeviceConfiguration");
}
