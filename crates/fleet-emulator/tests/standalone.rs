//! The `fleet-emulator` binary on its own: it starts from a station.toml's `[emulator]`
//! section, accepts an MQTT CONNECT over mutual TLS with the claim identity it prints, stops on
//! SIGTERM with its registry saved, and refuses a bad configuration with a code and a fix.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-emulator");

fn templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/templates")
}

/// A station.toml whose other sections the emulator ignores.
fn station_toml(dir: &Path, emulator_extra: &str) -> PathBuf {
    let path = dir.join("station.toml");
    let text = format!(
        "[endpoint]\nhost = \"embedded\"\n\n[jigs]\ncount = 2\n\n\
         [emulator]\nlisten = \"127.0.0.1:0\"\nstate_dir = {state:?}\ntemplates = {templates:?}\n\
         {emulator_extra}",
        state = dir.join("emu"),
        templates = templates(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn pem_der(path: &Path) -> Vec<u8> {
    pem::parse(std::fs::read(path).unwrap())
        .unwrap()
        .into_contents()
}

/// An MQTT 3.1.1 CONNECT with a clean session and client id `id`.
fn connect_packet(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

#[test]
fn serves_the_claim_identity_it_prints_and_stops_on_sigterm_with_its_registry_saved() {
    let dir = tempfile::tempdir().unwrap();
    let config = station_toml(dir.path(), "");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut field = |prefix: &str| -> String {
        let line = lines.next().expect("a line").unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"))
            .to_string()
    };
    let addr = field("listening on ");
    let ca = PathBuf::from(field("ca: "));
    let claim_cert = PathBuf::from(field("claim certificate: "));
    let claim_key = PathBuf::from(field("claim key: "));
    assert!(ca.starts_with(dir.path().join("emu")), "{ca:?}");

    // Mutual TLS with the printed claim identity, then an MQTT CONNECT: CONNACK accepted.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_der(&ca).into()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::try_from(pem_der(&claim_key)).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(vec![pem_der(&claim_cert).into()], key)
    .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(tls), name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, TcpStream::connect(&addr).unwrap());
    stream
        .write_all(&connect_packet("standalone-test"))
        .unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).unwrap();
    assert_eq!(
        connack,
        [0x20, 0x02, 0x00, 0x00],
        "CONNACK, session absent, accepted"
    );
    drop(stream);

    // SIGTERM: a clean stop, the registry on disk.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("registry saved"), "{stderr}");
    assert!(dir.path().join("emu/registry.db").is_file());
}

/// Runs the binary with `args`; its exit code and stderr.
fn refused(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_configuration_is_refused_with_the_key_a_code_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let flag = std::ffi::OsStr::new("--config");

    // A value serde accepts but the emulator does not.
    let config = station_toml(dir.path(), "[emulator.faults]\nerror_500_fraction = 2.0\n");
    let (code, stderr) = refused(&[flag, config.as_os_str()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("station::emulator::config"), "{stderr}");
    assert!(
        stderr.contains("emulator.faults.error_500_fraction"),
        "{stderr}"
    );
    assert!(stderr.contains("docs/emulator.md"), "{stderr}");

    // An unknown key is named.
    let config = station_toml(dir.path(), "no_such_key = 1\n");
    let (code, stderr) = refused(&[flag, config.as_os_str()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("station::emulator::config_file"),
        "{stderr}"
    );
    assert!(stderr.contains("no_such_key"), "{stderr}");

    // A file that is not there.
    let missing = dir.path().join("missing.toml");
    let (code, stderr) = refused(&[flag, missing.as_os_str()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("station::emulator::config_file"),
        "{stderr}"
    );
    assert!(stderr.contains("missing.toml"), "{stderr}");
    // Nothing was started or written.
    assert!(!dir.path().join("emu").exists());
}
