//! No input makes the engine panic: mutated bodies, random expressions, deep nesting.

use super::*;

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
