//! Behaviour tests of the template engine: every intrinsic function (happy paths and each
//! error), parameters and defaults, mappings, pseudo-parameters, resources, OverrideSettings,
//! the size limit, the fixture templates, and randomised inputs that must never panic.

use std::collections::BTreeMap;

use super::*;

const CERT_ID: &str = "770c2b3b0a8f1d0e5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a1217d0";

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn eval_subject(
    body: &str,
    p: &[(&str, &str)],
    subject: &SubjectFields,
) -> Result<Provisioned, EvalError> {
    let template = Template::parse(body).unwrap_or_else(|e| panic!("parse: {e}\n{body}"));
    let parameters = params(p);
    template.evaluate(&EvalContext {
        parameters: &parameters,
        certificate_id: CERT_ID,
        certificate_subject: subject,
    })
}

fn eval(body: &str, p: &[(&str, &str)]) -> Result<Provisioned, EvalError> {
    eval_subject(body, p, &SubjectFields::default())
}

fn parse_err(body: &str) -> TemplateError {
    match Template::parse(body) {
        Ok(_) => panic!("expected a parse error for {body}"),
        Err(e) => e,
    }
}

fn strict_err(body: &str) -> TemplateError {
    match Template::parse_with(body, ParseOptions::STRICT) {
        Ok(_) => panic!("expected a strict parse error for {body}"),
        Err(e) => e,
    }
}

const POLICY_ONLY: &str = r#"{"p":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"P"}}}"#;

/// A template whose only output is `DeviceConfiguration.V = expr`.
fn dc_body(parameters: &str, mappings: &str, expr: &str) -> String {
    format!(
        r#"{{"Parameters":{parameters},"Mappings":{mappings},"Resources":{POLICY_ONLY},
            "DeviceConfiguration":{{"V":{expr}}}}}"#
    )
}

fn value_of(expr: &str, p: &[(&str, &str)]) -> Result<String, EvalError> {
    value_with("{}", "{}", expr, p)
}

fn value_with(
    parameters: &str,
    mappings: &str,
    expr: &str,
    p: &[(&str, &str)],
) -> Result<String, EvalError> {
    let out = eval(&dc_body(parameters, mappings, expr), p)?;
    Ok(out.device_configuration["V"].clone())
}

fn dc_parse_err(expr: &str) -> TemplateError {
    parse_err(&dc_body("{}", "{}", expr))
}

fn message(r: Result<String, EvalError>) -> String {
    match r {
        Ok(v) => panic!("expected an evaluation error, got {v:?}"),
        Err(e) => {
            assert_eq!(e.status_code(), 400);
            assert_eq!(e.error_code(), "InvalidParameters");
            e.error_message()
        }
    }
}

fn invalid_message(e: &TemplateError) -> (&str, &str) {
    match e {
        TemplateError::Invalid { path, message } => (path, message),
        other => panic!("expected TemplateError::Invalid, got {other:?}"),
    }
}

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

fn thing_body(props: &str, overrides: Option<&str>) -> String {
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

fn policy_body(props: &str) -> String {
    format!(r#"{{"Resources":{{"policy":{{"Type":"AWS::IoT::Policy","Properties":{props}}}}}}}"#)
}

fn sha256_hex(text: &str) -> String {
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
fn several_policies_come_in_logical_id_order() {
    let body = r#"{"Resources":{
        "zeta":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"Z"}},
        "alpha":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"A"}}}}"#;
    let out = eval(body, &[]).unwrap();
    let names: Vec<_> = out.policies.iter().map(|p| p.logical_id.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);
}

// ---------------------------------------------------------------- fixtures

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/fixtures/templates/{name}.json",
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

// ---------------------------------------------------------------- robustness

#[test]
fn templates_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Template>();
    assert_send_sync::<TemplateStore>();
    assert_send_sync::<EvalError>();
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    assert!(matches!(parse_err(&deep), TemplateError::Json { .. }));
    let deep = format!(
        r#"{{"Resources":{POLICY_ONLY},"DeviceConfiguration":{{"V":{}"x"{}}}}}"#,
        r#"{"Fn::Join":["",["#.repeat(200),
        "]]}".repeat(200)
    );
    assert!(deep.len() < MAX_BODY_CHARS);
    assert!(matches!(parse_err(&deep), TemplateError::Json { .. }));
    let deep = format!(
        r#"{{"Resources":{POLICY_ONLY},"DeviceConfiguration":{{"V":{}"x"{}}}}}"#,
        r#"{"Fn::Join":["",["#.repeat(40),
        "]]}".repeat(40)
    );
    assert_eq!(eval(&deep, &[]).unwrap().device_configuration["V"], "x");
}

/// Every prefix of a fixture, and thousands of random byte edits of it, parse to a result
/// (never a panic); whatever parses also evaluates to a result against random parameters.
#[test]
fn mutated_templates_never_panic() {
    let base = fixture("FleetTemplate");
    for cut in (0..base.len()).filter(|i| base.is_char_boundary(*i)) {
        let _ = Template::parse(&base[..cut]);
    }
    let alphabet: Vec<u8> =
        br#"{}[]",:0123456789 -_$!.RefFn::JoinSelectSplitFindInMapSub"#.to_vec();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let subject = SubjectFields::default();
    let mut parsed = 0;
    for _ in 0..4000 {
        let mut bytes = base.clone().into_bytes();
        for _ in 0..rng.usize(1..6) {
            let i = rng.usize(..bytes.len());
            match rng.u8(..3) {
                0 => bytes[i] = alphabet[rng.usize(..alphabet.len())],
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, alphabet[rng.usize(..alphabet.len())]),
            }
        }
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        if let Ok(t) = Template::parse(&text) {
            parsed += 1;
            let mut p = BTreeMap::new();
            for name in ["ThingName", "SerialNumber", "DeviceLocation"] {
                if rng.bool() {
                    let v: String = (0..rng.usize(0..12))
                        .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
                        .collect();
                    p.insert(name.to_string(), v);
                }
            }
            let _ = t.evaluate(&EvalContext {
                parameters: &p,
                certificate_id: CERT_ID,
                certificate_subject: &subject,
            });
        }
    }
    assert!(parsed > 0, "some mutations should still parse");
}

/// Random expression trees built from the intrinsic vocabulary, well-formed or not.
#[test]
fn random_expressions_never_panic() {
    fn random_expr(rng: &mut fastrand::Rng, depth: u32) -> String {
        let leaf = |rng: &mut fastrand::Rng| match rng.u8(..6) {
            0 => r#""a,b""#.to_string(),
            1 => rng.i32(-2..4).to_string(),
            2 => "null".to_string(),
            3 => r#""${P}-${!x}""#.to_string(),
            4 => r#"{"Ref":"P"}"#.to_string(),
            _ => r#"{"Ref":"AWS::IoT::Certificate::Id"}"#.to_string(),
        };
        if depth == 0 {
            return leaf(rng);
        }
        let args = |n: usize, rng: &mut fastrand::Rng| {
            (0..n)
                .map(|_| random_expr(rng, depth - 1))
                .collect::<Vec<_>>()
                .join(",")
        };
        match rng.u8(..9) {
            0 => format!(r#"{{"Fn::Join":[{}]}}"#, args(rng.usize(0..3), rng)),
            1 => format!(r#"{{"Fn::Select":[{}]}}"#, args(rng.usize(0..3), rng)),
            2 => format!(r#"{{"Fn::Split":[{}]}}"#, args(rng.usize(0..3), rng)),
            3 => format!(r#"{{"Fn::FindInMap":[{}]}}"#, args(rng.usize(2..4), rng)),
            4 => format!(r#"{{"Fn::Sub":[{}]}}"#, args(rng.usize(1..3), rng)),
            5 => format!("[{}]", args(rng.usize(0..4), rng)),
            6 => format!(r#"{{"k":{}}}"#, random_expr(rng, depth - 1)),
            7 => format!(
                r#"{{"Fn::Sub":["${{V}}",{{"V":{}}}]}}"#,
                random_expr(rng, depth - 1)
            ),
            _ => leaf(rng),
        }
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let subject = SubjectFields::default();
    let p = params(&[("P", "1"), ("Q", "x,y")]);
    let maps = r#"{"M":{"a,b":{"a,b":"hit"}}}"#;
    let mut ok = 0;
    for _ in 0..3000 {
        let expr = random_expr(&mut rng, 4);
        let doc = format!(r#"{{"Statement":[{expr}]}}"#);
        for body in [
            dc_body("{}", maps, &expr),
            thing_body(
                &format!(r#"{{"ThingName":{expr},"ThingGroups":{expr}}}"#),
                None,
            ),
            policy_body(&format!(r#"{{"PolicyDocument":{doc}}}"#)),
        ] {
            for options in [ParseOptions::LENIENT, ParseOptions::STRICT] {
                if let Ok(t) = Template::parse_with(&body, options) {
                    let r = t.evaluate(&EvalContext {
                        parameters: &p,
                        certificate_id: CERT_ID,
                        certificate_subject: &subject,
                    });
                    if let Err(e) = r {
                        assert_eq!(e.to_error_response().status_code, 400);
                    } else {
                        ok += 1;
                    }
                }
            }
        }
    }
    assert!(ok > 0);
}
