//! Checks that the worked examples in `docs/jig-protocol.md` are the bytes this code
//! produces, so the firmware team's spec cannot drift from the implementation.
//!
//! Each example in the doc is a fenced block after `<!-- example: NAME -->` with a `body:`
//! line (frame body before COBS, CRC included) and a `wire:` line (bytes on the line).
//! Hex may wrap onto following lines.

use super::codec;
use super::protocol::{
    Capabilities, CommitEntry, CommitSource, CsrFormat, ErrorCode, KEY_TYPE_P256, Slot, SlotHash,
    SubjectAttrs, attr, cmd, commit_digest, sha256,
};
use super::{Command, HelloAck, Message, Response};

const DOC: &str = include_str!("../../../../docs/jig-protocol.md");

struct Example {
    name: &'static str,
    wire: Vec<u8>,
}

fn command(name: &'static str, seq: u16, c: Command<'_>) -> Example {
    let (mut head, mut wire) = (Vec::new(), Vec::new());
    c.encode(seq, &mut head, &mut wire).unwrap();
    Example { name, wire }
}

fn response(name: &'static str, seq: u16, r: Response<'_>) -> Example {
    let (mut head, mut wire) = (Vec::new(), Vec::new());
    r.encode(seq, &mut head, &mut wire).unwrap();
    Example { name, wire }
}

fn examples() -> Vec<Example> {
    let thing = b"thing-01";
    vec![
        command("hello", 0x0001, Command::Hello { version: 1 }),
        response(
            "hello-ack",
            0x0001,
            Response::HelloAck(HelloAck {
                version: 1,
                capabilities: Capabilities(Capabilities::GEN_CSR),
                max_chunk: 1024,
                rx_buffer: 4096,
                mac: [0x02, 0x46, 0x00, 0x00, 0x00, 0x01],
                serial: "VB-000001".into(),
                hw_rev: "A".into(),
                fw_version: "1.0.0".into(),
                thing_name: "".into(),
            }),
        ),
        command(
            "gen-csr",
            0x0002,
            Command::GenCsr {
                key_type: KEY_TYPE_P256,
                format: CsrFormat::Pem,
                subject: SubjectAttrs {
                    attrs: vec![(attr::COMMON_NAME, "thing-01")],
                },
            },
        ),
        command(
            "put",
            0x0003,
            Command::Put {
                offset: 0,
                data: thing,
            },
        ),
        response("put-ack", 0x0003, Response::PutAck { offset: 0, len: 8 }),
        command(
            "put-zeros",
            0x0004,
            Command::Put {
                offset: 0x100,
                data: &[0x00, 0x01, 0x00],
            },
        ),
        command(
            "commit",
            0x0005,
            Command::Commit {
                entries: vec![CommitEntry {
                    slot: Slot::ThingName,
                    source: CommitSource::Staged,
                    len: 8,
                }],
                digest: commit_digest([(Slot::ThingName, &thing[..])]),
            },
        ),
        response(
            "commit-ack",
            0x0005,
            Response::CommitAck {
                count: 1,
                generation: 1,
                digest: commit_digest([(Slot::ThingName, &thing[..])]),
            },
        ),
        command(
            "hash",
            0x0006,
            Command::Hash {
                slots: vec![Slot::ThingName],
            },
        ),
        response(
            "hash-ack",
            0x0006,
            Response::HashAck {
                entries: vec![SlotHash {
                    slot: Slot::ThingName,
                    len: 8,
                    sha256: sha256(thing),
                }],
            },
        ),
        command(
            "hash-two",
            0x0007,
            Command::Hash {
                slots: vec![Slot::Certificate, Slot::ThingName],
            },
        ),
        response(
            "nak-incomplete",
            0x0005,
            Response::Nak {
                code: ErrorCode::Incomplete,
                detail: Slot::ThingName as u8,
                command: cmd::COMMIT,
                text: "staged data incomplete".into(),
            },
        ),
        response(
            "nak-crc",
            0x0007,
            Response::Nak {
                code: ErrorCode::BadCrc,
                detail: 0,
                command: cmd::PUT,
                text: "bad CRC".into(),
            },
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `body:` and `wire:` bytes of example `name` in the doc.
fn doc_example(name: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let marker = format!("<!-- example: {name} -->");
    let start = DOC.find(&marker)? + marker.len();
    let rest = &DOC[start..];
    let open = rest.find("```")?;
    let after_open = &rest[open + 3..];
    let block = &after_open[after_open.find('\n')? + 1..];
    let block = &block[..block.find("```")?];
    let (mut body, mut wire) = (Vec::new(), Vec::new());
    let mut target: Option<&mut Vec<u8>> = None;
    for line in block.lines() {
        let line = line.trim();
        let tokens = if let Some(t) = line.strip_prefix("body:") {
            target = Some(&mut body);
            t
        } else if let Some(t) = line.strip_prefix("wire:") {
            target = Some(&mut wire);
            t
        } else if line.chars().all(|c| c.is_ascii_hexdigit() || c == ' ') && !line.is_empty() {
            line
        } else {
            target = None;
            continue;
        };
        if let Some(t) = target.as_deref_mut() {
            for tok in tokens.split_whitespace() {
                t.push(u8::from_str_radix(tok, 16).ok()?);
            }
        }
    }
    Some((body, wire))
}

#[test]
fn doc_examples_match_the_code() {
    let mut report = String::new();
    for ex in examples() {
        let mut raw = ex.wire[..ex.wire.len() - 1].to_vec();
        let n = cobs::decode_in_place(&mut raw).unwrap();
        let body = &raw[..n];
        assert!(codec::decode_frame(&mut ex.wire[..ex.wire.len() - 1].to_vec()).is_ok());
        let want = (body.to_vec(), ex.wire.clone());
        if doc_example(ex.name).as_ref() != Some(&want) {
            report.push_str(&format!(
                "<!-- example: {} -->\nbody: {}\nwire: {}\n\n",
                ex.name,
                hex(body),
                hex(&ex.wire)
            ));
        }
    }
    assert!(
        report.is_empty(),
        "docs/jig-protocol.md examples differ from the code; expected:\n\n{report}"
    );
}

#[test]
fn doc_names_the_crc_variant_and_its_check_value() {
    assert!(DOC.contains("CRC-32/ISO-HDLC"));
    assert!(DOC.contains(&format!("{:08x}", codec::CRC32.checksum(b"123456789"))));
}

#[test]
fn doc_tables_match_the_code() {
    use super::protocol::ErrorCode;
    for v in 1..=0x0Fu8 {
        let e = ErrorCode::from_u8(v);
        let row = format!("| 0x{v:02X} | {}", e.name());
        assert!(DOC.contains(&row), "error code row {row:?} missing");
    }
    for s in Slot::ALL {
        let row = format!(
            "| {}    | {:<13} | {:<8} |",
            s as u8,
            s.name(),
            s.capacity()
        );
        assert!(DOC.contains(&row), "slot row {row:?} missing");
    }
    for limit in [codec::MAX_PAYLOAD, codec::MAX_BODY, codec::MAX_WIRE - 1] {
        assert!(
            DOC.contains(&limit.to_string()),
            "limit {limit} not in the doc"
        );
    }
}
