//! Tests of the station configuration: parsing, defaults, validation with the key and the fix.

use std::time::Duration;

use super::*;
use crate::jig::{DataBits, FlowControl, NRF91_DEFAULT_SEC_TAG, Parity, StopBits};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("station.toml"))
}

#[test]
fn the_checked_in_station_toml_is_valid() {
    let c = Config::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("station.toml")
            .as_path(),
    )
    .unwrap();
    assert!(c.endpoint.is_embedded());
    assert_eq!(c.provision.template_name, "FleetTemplate");
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.provision.sessions, 16);
    assert!(c.jigs.is_virtual());
}

#[test]
fn unknown_key_is_named_with_its_place() {
    let err = parse("[provision]\nsesions = 4\n").unwrap_err();
    let ConfigError::Syntax(e) = &err else {
        panic!("{err:?}")
    };
    let SyntaxError {
        message,
        span,
        help,
        ..
    } = e.as_ref();
    assert!(message.contains("sesions"), "{message}");
    assert!(
        message.contains("sessions"),
        "lists the accepted keys: {message}"
    );
    assert!(span.is_some());
    assert!(help.contains("rename"));
}

#[test]
fn wrong_type_is_named() {
    let err = parse("[provision]\nsessions = \"many\"\n").unwrap_err();
    assert!(
        matches!(&err, ConfigError::Syntax(e)
            if e.message.contains("`provision.sessions`") && e.message.contains("expected usize")),
        "{err:?}"
    );
}

#[test]
fn semantic_errors_name_the_key_and_the_fix() {
    let cases = [
        ("[provision]\nsessions = 0\n", "provision.sessions"),
        (
            "[provision]\ntemplate_name = \"bad name\"\n",
            "provision.template_name",
        ),
        (
            "[parameters]\nThingName = \"{serail}\"\n",
            "parameters.ThingName",
        ),
        (
            "[endpoint]\nendpoint = \"abc-ats.iot.eu-west-1.amazonaws.com\"\n",
            "endpoint.claim_cert",
        ),
        ("[jigs]\nmode = \"serial\"\n", "jigs.ports"),
        (
            "[jigs]\nmode = \"serial\"\n[[jigs.ports]]\nname = \"a\"\npath = \"/dev/ttyUSB0\"\nstop_bits = 3\n",
            "jigs.ports[0].stop_bits",
        ),
        (
            "[jigs]\nmode = \"serial\"\nboards_hold_root_ca = true\n[[jigs.ports]]\nname = \"a\"\npath = \"x\"\n",
            "jigs.boards_hold_root_ca",
        ),
        (
            "[jigs]\nmode = \"serial\"\n[[jigs.ports]]\nname = \"a\"\npath = \"x\"\n[[jigs.ports]]\nname = \"a\"\npath = \"y\"\n",
            "jigs.ports[1].name",
        ),
        ("[keys]\nworkers = 0\n", "keys.workers"),
        ("[endpoint]\nendpoint = \"\"\n", "endpoint.endpoint"),
        (
            "[endpoint]\nendpoint = \"mqtts://abc-ats.iot.eu-west-1.amazonaws.com\"\n",
            "endpoint.endpoint",
        ),
        (
            "[endpoint]\nendpoint = \"abc-ats.iot.eu-west-1.amazonaws.com:8883\"\n",
            "endpoint.endpoint",
        ),
        ("[endpoint]\nendpoint = \"abc ats\"\n", "endpoint.endpoint"),
        ("[endpoint]\nport = 0\n", "endpoint.port"),
    ];
    for (text, key) in cases {
        match parse(text) {
            Err(ConfigError::Invalid { key: k, help, .. }) => {
                assert_eq!(k, key, "{text}");
                assert!(!help.is_empty());
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn enum_values_are_checked_where_they_are_read_and_name_the_choices() {
    for (text, key, choices) in [
        (
            "[jigs]\nmode = \"usb\"\n",
            "jigs.mode",
            "`virtual` or `serial`",
        ),
        (
            "[provision]\nformat = \"xml\"\n",
            "provision.format",
            "`json` or `cbor`",
        ),
        ("[provision]\nmqtt_version = 4\n", "", ""),
        (
            "[provision]\nmqtt_version = 6\n",
            "provision.mqtt_version",
            "3 (MQTT 3.1.1) or 5",
        ),
        (
            "[keys]\nsource = \"hsm\"\n",
            "keys.source",
            "`pool`, `device`",
        ),
    ] {
        match parse(text) {
            // Protocol level 4 is MQTT 3.1.1.
            Ok(c) if key.is_empty() => assert_eq!(c.provision.mqtt_version, MqttVersion::V311),
            Err(ConfigError::Syntax(e)) => {
                assert!(e.message.contains(key), "{text}: {}", e.message);
                assert!(e.message.contains(choices), "{text}: {}", e.message);
                assert!(e.span.is_some(), "the place in the file is marked");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn command_line_overrides_apply_and_are_validated() {
    let o = Overrides {
        endpoint: Some("abc-ats.iot.eu-west-1.amazonaws.com".into()),
        claim_cert: Some("c.pem".into()),
        claim_key: Some("k.pem".into()),
        root_ca: Some("ca.pem".into()),
        template_name: Some("Other".into()),
        template_parameters: Some(r#"{"DeviceLocation":"Berlin","Extra":"{mac}"}"#.into()),
        ..Overrides::default()
    };
    let c = parse("[parameters]\nDeviceLocation = \"Seattle\"\n")
        .unwrap()
        .with_overrides(&o, Path::new("station.toml"))
        .unwrap();
    assert_eq!(c.provision.template_name, "Other");
    assert_eq!(c.parameters["DeviceLocation"], "Berlin");
    assert_eq!(c.parameters["Extra"], "{mac}");
    assert!(!c.endpoint.is_embedded());

    let bad = |o: Overrides| {
        parse("")
            .unwrap()
            .with_overrides(&o, Path::new("station.toml"))
            .unwrap_err()
    };
    let e = bad(Overrides {
        template_parameters: Some("[1]".into()),
        ..Overrides::default()
    });
    assert!(matches!(e, ConfigError::Invalid { ref key, .. } if key == "--template-parameters"));
    // A real endpoint without the claim files is refused as in the file.
    let e = bad(Overrides {
        endpoint: Some("abc-ats.iot.eu-west-1.amazonaws.com".into()),
        ..Overrides::default()
    });
    assert!(matches!(e, ConfigError::Invalid { ref key, .. } if key == "endpoint.claim_cert"));
}

#[test]
fn placeholders_fill_or_name_the_missing_one() {
    let values = |n: &str| match n {
        "serial" => Some("SN-1".to_string()),
        _ => None,
    };
    assert_eq!(
        fill_placeholders("thing-{serial}", &values),
        Ok("thing-SN-1".into())
    );
    assert_eq!(fill_placeholders("literal", &values), Ok("literal".into()));
    assert_eq!(fill_placeholders("{mac}", &values), Err("mac"));
    assert_eq!(placeholders("{a}-{b}"), vec!["a", "b"]);
}

#[test]
fn a_port_is_opened_with_its_own_line_settings_over_the_jigs_defaults() {
    let cfg = parse(
        "[jigs]\nmode = \"serial\"\nbaud = 460800\ntimeout_ms = 250\n\
         [[jigs.ports]]\nname = \"a\"\npath = \"/dev/ttyUSB0\"\n\
         [[jigs.ports]]\nname = \"b\"\npath = \"/dev/ttyUSB1\"\nbaud = 115200\n\
         parity = \"even\"\nflow_control = \"hardware\"\ndata_bits = 7\nstop_bits = 2\n\
         timeout_ms = 900\n",
    )
    .unwrap();
    let a = cfg.jigs.ports[0].settings(&cfg.jigs);
    assert_eq!(
        (
            a.baud,
            a.timeout,
            a.parity,
            a.flow_control,
            a.data_bits,
            a.stop_bits
        ),
        (
            460_800,
            Duration::from_millis(250),
            Parity::None,
            FlowControl::None,
            DataBits::Eight,
            StopBits::One
        )
    );
    let b = cfg.jigs.ports[1].settings(&cfg.jigs);
    assert_eq!(
        (
            b.baud,
            b.timeout,
            b.parity,
            b.flow_control,
            b.data_bits,
            b.stop_bits
        ),
        (
            115_200,
            Duration::from_millis(900),
            Parity::Even,
            FlowControl::Hardware,
            DataBits::Seven,
            StopBits::Two
        )
    );
}

#[test]
fn metrics_addr_is_off_by_default_checked_and_overridden_by_the_flag() {
    assert_eq!(parse("").unwrap().telemetry.metrics_addr, None);
    for ok in [
        "127.0.0.1:0",
        "0.0.0.0:9100",
        "[::1]:9100",
        "localhost:9100",
    ] {
        let cfg = parse(&format!("[telemetry]\nmetrics_addr = \"{ok}\"\n")).unwrap();
        assert_eq!(cfg.telemetry.metrics_addr.as_deref(), Some(ok));
    }
    for bad in [
        "9100",
        "localhost",
        "127.0.0.1:99999",
        "http://x:1",
        "::1:9100",
        ":9100",
    ] {
        match parse(&format!("[telemetry]\nmetrics_addr = \"{bad}\"\n")) {
            Err(ConfigError::Invalid { key, help, .. }) => {
                assert_eq!(key, "telemetry.metrics_addr", "{bad}");
                assert!(help.contains("HOST:PORT"), "{help}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    // The flag wins over the file, and a bad flag is named as the flag.
    let file = parse("[telemetry]\nmetrics_addr = \"127.0.0.1:9100\"\n").unwrap();
    let flag = |a: &str| Overrides {
        metrics_addr: Some(a.into()),
        ..Overrides::default()
    };
    let cfg = file
        .clone()
        .with_overrides(&flag("127.0.0.1:0"), Path::new("s.toml"))
        .unwrap();
    assert_eq!(cfg.telemetry.metrics_addr.as_deref(), Some("127.0.0.1:0"));
    assert_eq!(cfg.telemetry.metrics_addr_key, "--metrics-addr");
    let err = file
        .with_overrides(&flag("nope"), Path::new("s.toml"))
        .unwrap_err();
    assert!(
        matches!(err, ConfigError::Invalid { ref key, .. } if key == "--metrics-addr"),
        "{err:?}"
    );
}

#[test]
fn nrf91_options_come_from_the_port_or_the_virtual_line_and_are_checked() {
    let cfg = parse(
        "[jigs]\nmode = \"serial\"\n\
         [[jigs.ports]]\nname = \"a\"\npath = \"/dev/ttyACM0\"\ndriver = \"nrf91-at\"\n\
         sec_tag = 42\nwrite_root_ca = false\n\
         [[jigs.ports]]\nname = \"b\"\npath = \"/dev/ttyACM1\"\ndriver = \"nrf91-at\"\n",
    )
    .unwrap();
    let a = cfg.jigs.ports[0].driver_options().nrf91;
    assert_eq!((a.sec_tag, a.write_root_ca), (42, false));
    let b = cfg.jigs.ports[1].driver_options().nrf91;
    assert_eq!((b.sec_tag, b.write_root_ca), (NRF91_DEFAULT_SEC_TAG, true));
    let line = parse("[jigs]\ndriver = \"nrf91-at\"\nsec_tag = 7\n").unwrap();
    assert_eq!(line.jigs.driver_options().nrf91.sec_tag, 7);

    let key_of = |text: &str| match parse(text).unwrap_err() {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        key_of(
            "[jigs]\nmode = \"serial\"\n[[jigs.ports]]\nname = \"a\"\npath = \"/dev/x\"\n\
             sec_tag = 42\n"
        ),
        "jigs.ports[0].sec_tag",
        "sec_tag on a fleet-jig port"
    );
    assert_eq!(
        key_of("[jigs]\nsec_tag = 2147483648\n"),
        "jigs.sec_tag",
        "a tag reserved for the modem"
    );
}

#[test]
fn zephyr_options_come_from_the_port_and_device_keys_are_refused_with_it() {
    let cfg = parse(
        "[jigs]\nmode = \"serial\"\n\
         [[jigs.ports]]\nname = \"a\"\npath = \"/dev/ttyACM0\"\ndriver = \"zephyr-cred\"\n\
         sec_tag = 42\nidentity_command = \"board id\"\nchunk = 64\nbuf_load = false\n\
         [[jigs.ports]]\nname = \"b\"\npath = \"/dev/ttyACM1\"\ndriver = \"zephyr-cred\"\n",
    )
    .unwrap();
    let a = cfg.jigs.ports[0].driver_options().zephyr;
    assert_eq!(
        (a.sec_tag, a.identity_command.as_str(), a.chunk, a.buf_load),
        (42, "board id", 64, false)
    );
    let b = cfg.jigs.ports[1].driver_options().zephyr;
    assert_eq!(b, crate::jig::ZephyrOptions::default());
    let line = parse("[jigs]\ndriver = \"zephyr-cred\"\nwrite_root_ca = false\n").unwrap();
    assert!(!line.jigs.driver_options().zephyr.write_root_ca);

    let invalid = |text: &str| match parse(text).unwrap_err() {
        ConfigError::Invalid { key, help, .. } => (key, help),
        other => panic!("{other:?}"),
    };
    let port = |extra: &str| {
        format!(
            "[jigs]\nmode = \"serial\"\n[[jigs.ports]]\nname = \"a\"\npath = \"/dev/x\"\n{extra}\n"
        )
    };
    assert_eq!(
        invalid(&port("chunk = 48")).0,
        "jigs.ports[0].chunk",
        "chunk on a fleet-jig port"
    );
    for bad in ["chunk = 50", "chunk = 248", "chunk = 0"] {
        assert_eq!(
            invalid(&port(&format!("driver = \"zephyr-cred\"\n{bad}"))).0,
            "jigs.ports[0].chunk",
            "{bad}"
        );
    }
    assert_eq!(
        invalid(&port("driver = \"zephyr-cred\"\nidentity_command = \" \"")).0,
        "jigs.ports[0].identity_command"
    );
    let (key, help) = invalid(&format!(
        "[keys]\nsource = \"device\"\n{}",
        port("driver = \"zephyr-cred\"")
    ));
    assert_eq!(key, "jigs.ports[0].driver");
    assert!(help.contains("keys.source = \"pool\""), "{help}");
    assert_eq!(
        invalid("[keys]\nsource = \"device\"\n[jigs]\ndriver = \"zephyr-cred\"\n").0,
        "jigs.driver"
    );
    // Board-made keys stay fine with the drivers whose boards make keys.
    parse("[keys]\nsource = \"device\"\n[jigs]\ndriver = \"nrf91-at\"\n").unwrap();
}

#[test]
fn the_ledger_is_a_file_or_a_postgres_url_with_a_key_file_per_station() {
    use crate::ledger::LedgerLocation;
    let c = parse("").unwrap();
    assert_eq!(
        c.station.ledger_location(),
        LedgerLocation::File("state/ledger.db".into())
    );
    let c = parse(
        "[station]\nid = \"line3\"\nledger = \"postgresql://station:pw@db.lan/fleet?sslmode=require\"\n",
    )
    .unwrap();
    assert_eq!(
        c.station.ledger_location(),
        LedgerLocation::Postgres {
            url: "postgresql://station:pw@db.lan/fleet?sslmode=require".into(),
            key_file: "state/ledger-line3.key".into(),
        }
    );
    assert_eq!(
        c.station.ledger_location().display(),
        "postgresql://station:***@db.lan/fleet?sslmode=require"
    );
    let c = parse(
        "[station]\nledger = \"postgres://db.lan/fleet\"\nledger_key = \"/var/lib/fleet/k\"\n",
    )
    .unwrap();
    assert!(matches!(
        c.station.ledger_location(),
        LedgerLocation::Postgres { key_file, .. } if key_file == Path::new("/var/lib/fleet/k")
    ));

    // A URL the client cannot read, and a key file for a file ledger: the key and the fix.
    let err = parse("[station]\nledger = \"postgres://u:secret@db/fleet?sslmode=sometimes\"\n")
        .unwrap_err();
    let text = format!("{err}");
    assert!(text.contains("`station.ledger`"), "{text}");
    assert!(text.contains("sslmode"), "{text}");
    assert!(
        !text.contains("secret"),
        "the password is not shown: {text}"
    );
    let err = parse("[station]\nledger_key = \"k\"\n").unwrap_err();
    let ConfigError::Invalid { key, help, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(key, "station.ledger_key");
    assert!(
        help.contains("file ledger keeps its key beside it"),
        "{help}"
    );
}

#[test]
fn a_shared_quota_needs_a_postgres_ledger_and_the_quota_of_each_api_the_line_calls() {
    let pg = "[station]\nledger = \"postgres://station@db.lan/fleet\"\n";
    let ok = parse(&format!(
        "{pg}[provision]\nshared_quota = true\nregister_thing_tps = 10\ncreate_certificate_tps = 15\n"
    ))
    .unwrap();
    assert!(ok.provision.shared_quota);
    assert!(!parse("").unwrap().provision.shared_quota, "off by default");

    // With the SQLite ledger: nowhere to share it.
    let err = parse(
        "[provision]\nshared_quota = true\nregister_thing_tps = 10\ncreate_certificate_tps = 15\n",
    )
    .unwrap_err();
    let ConfigError::Invalid {
        key, problem, help, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(key, "provision.shared_quota");
    assert!(problem.contains("station.ledger is a file"), "{problem}");
    assert!(help.contains("postgres://"), "{help}");
    let shown = format!("{:?}", miette::Report::new(err));
    assert!(shown.contains("station::config::invalid"), "{shown}");

    // Without the quota of an API the line calls (RegisterThing; the certificate API of
    // its key source).
    for (text, missing) in [
        (
            "shared_quota = true\ncreate_certificate_tps = 15\n",
            "provision.register_thing_tps",
        ),
        (
            "shared_quota = true\nregister_thing_tps = 10\n",
            "provision.create_certificate_tps",
        ),
        (
            "shared_quota = true\nregister_thing_tps = 10\ncreate_certificate_tps = 15\n[keys]\nsource = \"aws\"\n",
            "provision.create_keys_tps",
        ),
    ] {
        let err = parse(&format!("{pg}[provision]\n{text}")).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, problem, help, .. }
                if key == missing && problem.contains("shared_quota") && help.contains("requests per second")),
            "{err:?}"
        );
    }
}
