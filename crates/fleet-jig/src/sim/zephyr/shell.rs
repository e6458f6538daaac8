//! The emulated Zephyr board behind its UART shell, as a state machine without I/O: bytes in,
//! bytes out. It behaves as a Zephyr image with `CONFIG_SHELL`, `CONFIG_HWINFO_SHELL`,
//! `CONFIG_KERNEL_SHELL` and `CONFIG_TLS_CREDENTIALS_SHELL` does: the `uart:~$ ` prompt in
//! colour, echo of every byte it takes, CR, LF or CR LF ending a line, a command line of at
//! most `CONFIG_SHELL_CMD_BUFF_SIZE` − 1 characters (further characters are dropped
//! unechoed, and the command runs truncated), and the `cred` commands with their exact
//! messages (`Stored <n> bytes.`, `Added TLS credential of type …`, the refusals), the
//! credential buffer limit (`CONFIG_TLS_CREDENTIALS_SHELL_CRED_BUF_SIZE`: at most size − 1
//! characters), the volatile backend's heap-copy warning, and the `cred list` digest.
//! `cred buf load` is there on boards built after Zephyr PR #90358 ([`ZephyrSpec::buf_load`]);
//! on older ones `load` is taken as base64 data, as the old shell does.
//!
//! Not emulated: `cred get`, `cred expiry`, tab completion, history and line editing
//! beyond backspace, `help`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::driver::zephyr::shell_text::{CredType, decode, digest_of_stored};

/// The shell's prompt (`CONFIG_SHELL_PROMPT_UART`).
pub(crate) const PROMPT: &str = "uart:~$ ";

const GREEN: &str = "\x1b[1;32m";
const RED: &str = "\x1b[1;31m";
const YELLOW: &str = "\x1b[1;33m";
const RESET: &str = "\x1b[0m";

/// A virtual Zephyr board: what its firmware was built with and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZephyrSpec {
    /// What `hwinfo devid` reports (8 bytes on most SoCs).
    pub devid: Vec<u8>,
    /// What `kernel version` reports.
    pub kernel_version: String,
    /// `CONFIG_TLS_CREDENTIALS_SHELL_CRED_BUF_SIZE` (Zephyr's default 1024).
    pub cred_buf_size: usize,
    /// `CONFIG_SHELL_CMD_BUFF_SIZE` (default 256).
    pub cmd_buff_size: usize,
    /// `CONFIG_SHELL_BACKEND_SERIAL_RX_RING_BUFFER_SIZE` (default 64).
    pub rx_ring: usize,
    /// `CONFIG_TLS_MAX_CREDENTIALS_NUMBER` (default 4).
    pub max_credentials: usize,
    /// `CONFIG_TLS_CREDENTIALS_BACKEND_VOLATILE` (Zephyr's default): credentials live in RAM
    /// and are gone after a reboot. `false`: protected storage, kept across reboots.
    pub volatile: bool,
    /// The shell has `cred buf load` (Zephyr PR #90358).
    pub buf_load: bool,
    /// How long storing one credential takes (a PSA protected-storage write to flash).
    pub store_time: Duration,
    /// Credentials the firmware registers at boot (a root CA compiled in): (sectag, type,
    /// bytes as stored, NUL included). See [`ZephyrSpec::with_root_ca`].
    pub(crate) firmware_creds: Vec<(u32, CredType, Vec<u8>)>,
}

impl ZephyrSpec {
    /// A board with device id `devid` and Zephyr's defaults, except a persistent backend
    /// and a 2048-byte credential buffer (the default 1024 cannot take Amazon Root CA 1 in
    /// base64).
    pub fn new(devid: &[u8]) -> ZephyrSpec {
        ZephyrSpec {
            devid: devid.to_vec(),
            kernel_version: "4.1.0".into(),
            cred_buf_size: 2048,
            cmd_buff_size: 256,
            rx_ring: 64,
            max_credentials: 4,
            volatile: false,
            buf_load: true,
            store_time: Duration::from_millis(4),
            firmware_creds: Vec::new(),
        }
    }

    /// A board whose firmware registers `pem` (NUL-terminated, as mbedTLS needs a PEM) as
    /// the CA certificate of `sectag` at every boot: a root CA compiled in.
    pub fn with_root_ca(mut self, sectag: u32, pem: &[u8]) -> ZephyrSpec {
        let mut stored = pem.to_vec();
        stored.push(0);
        self.firmware_creds
            .retain(|(t, ty, _)| (*t, *ty) != (sectag, CredType::Ca));
        self.firmware_creds.push((sectag, CredType::Ca, stored));
        self
    }

    /// The device id as the station records it: `hwinfo devid`'s hex digits.
    pub fn serial(&self) -> String {
        hex::encode(&self.devid)
    }
}

/// Faults of the board itself (those of the line are the host's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ShellFaults {
    /// `cred add` of this type stores the data with one bit flipped (a weak cell).
    pub(crate) flip_bit_in: Option<CredType>,
    /// `cred add` fails in the backend (`Failed to add TLS credential … Error: -5`).
    pub(crate) refuse_add: bool,
}

/// What a byte made the board do beyond printing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing: ready for the next byte.
    Ready,
    /// The command runs this long (a flash write) before the shell reads again.
    Busy(Duration),
    /// The board reboots (`kernel reboot`).
    Reboot,
}

/// The stored credentials, by (sectag, type).
pub(crate) type Store = BTreeMap<(u32, CredType), Vec<u8>>;

/// A Zephyr board's shell and credential store.
#[derive(Debug)]
pub(crate) struct Shell {
    spec: ZephyrSpec,
    store: Store,
    line: Vec<u8>,
    /// The line ending that ended the previous line (a CR LF pair is one enter).
    last_nl: Option<u8>,
    cred_buf: Vec<u8>,
    /// `cred buf load` is taking raw bytes until Ctrl-C.
    bypass: bool,
    pub(crate) faults: ShellFaults,
}

impl Shell {
    /// The board as placed: what it stored before (persistent backend), or nothing.
    pub(crate) fn new(spec: ZephyrSpec, kept: Option<Store>) -> Shell {
        let mut shell = Shell {
            store: kept.unwrap_or_default(),
            spec,
            line: Vec::new(),
            last_nl: None,
            cred_buf: Vec::new(),
            bypass: false,
            faults: ShellFaults::default(),
        };
        shell.power_on();
        shell
    }

    pub(crate) fn spec(&self) -> &ZephyrSpec {
        &self.spec
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// RAM is gone: the shell's buffers, and with the volatile backend every credential;
    /// the firmware registers its own again.
    fn power_on(&mut self) {
        self.line.clear();
        self.last_nl = None;
        self.cred_buf.clear();
        self.bypass = false;
        if self.spec.volatile {
            self.store.clear();
        }
        for (tag, ty, data) in &self.spec.firmware_creds {
            self.store.insert((*tag, *ty), data.clone());
        }
    }

    /// Reboots: RAM lost, the boot banner and a fresh prompt printed.
    pub(crate) fn reboot(&mut self, out: &mut Vec<u8>) {
        self.power_on();
        self.boot_banner(out);
    }

    /// What the board prints as it comes up.
    pub(crate) fn boot_banner(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            format!(
                "*** Booting Zephyr OS build v{} ***\r\n\r\n",
                self.spec.kernel_version
            )
            .as_bytes(),
        );
        prompt(out);
    }

    /// Whether the next byte starts a new command line (faults are decided per line).
    pub(crate) fn at_line_start(&self) -> bool {
        self.line.is_empty() && !self.bypass
    }

    /// The serial backend's RX ring overflowed: Zephyr logs it through the shell.
    pub(crate) fn log_rx_overrun(&self, uptime: Duration, out: &mut Vec<u8>) {
        let (s, us) = (uptime.as_secs(), uptime.subsec_micros());
        let text = format!(
            "[{:02}:{:02}:{:02}.{:03},{:03}] <wrn> shell_uart: RX ring buffer full.",
            s / 3600,
            s / 60 % 60,
            s % 60,
            us / 1000,
            us % 1000
        );
        colored(out, YELLOW, &text);
    }

    /// The board takes one byte off its UART.
    pub(crate) fn feed(&mut self, byte: u8, out: &mut Vec<u8>) -> Effect {
        if self.bypass {
            return self.feed_bypass(byte, out);
        }
        match byte {
            b'\r' | b'\n' => {
                if self.line.is_empty() && self.last_nl.is_some_and(|l| l != byte) {
                    // The LF of a CR LF (or the CR of LF CR): one enter.
                    self.last_nl = None;
                    return Effect::Ready;
                }
                self.last_nl = Some(byte);
                out.extend_from_slice(b"\r\n");
                let line = std::mem::take(&mut self.line);
                let text = String::from_utf8_lossy(&line).into_owned();
                let effect = self.execute(&text, out);
                // The prompt follows every command, `cred buf load` included (its raw input
                // comes after it).
                if effect != Effect::Reboot {
                    prompt(out);
                }
                effect
            }
            0x03 => {
                // Ctrl-C: the line is abandoned (a new line only if it held anything), and
                // a fresh prompt printed.
                if !self.line.is_empty() {
                    out.extend_from_slice(b"\r\n");
                }
                self.line.clear();
                self.last_nl = None;
                prompt(out);
                Effect::Ready
            }
            0x08 | 0x7f => {
                self.last_nl = None;
                if self.line.pop().is_some() {
                    out.extend_from_slice(b"\x08 \x08");
                }
                Effect::Ready
            }
            0x20..=0x7e => {
                self.last_nl = None;
                // The command buffer keeps room for its terminator; a full one drops the
                // character without echo.
                if self.line.len() + 1 < self.spec.cmd_buff_size {
                    self.line.push(byte);
                    out.push(byte);
                }
                Effect::Ready
            }
            _ => Effect::Ready,
        }
    }

    /// `cred buf load` mode: raw bytes into the credential buffer, no echo, until Ctrl-C.
    fn feed_bypass(&mut self, byte: u8, out: &mut Vec<u8>) -> Effect {
        if byte == 0x03 {
            self.bypass = false;
            println_to(out, &format!("Stored {} bytes.", self.cred_buf.len()));
            prompt(out);
            return Effect::Ready;
        }
        if self.cred_buf.len() + 1 >= self.spec.cred_buf_size {
            self.bypass = false;
            self.buffer_full(out);
            prompt(out);
            return Effect::Ready;
        }
        self.cred_buf.push(byte);
        Effect::Ready
    }

    fn buffer_full(&mut self, out: &mut Vec<u8>) {
        error(
            out,
            "Not enough room in credential buffer for provided data. Increase CONFIG_TLS_CREDENTIALS_SHELL_CRED_BUF_SIZE.",
        );
        self.clear_buf(out);
    }

    /// Clears the credential buffer; says so only if it held anything (as the shell's
    /// internal clear does).
    fn clear_buf(&mut self, out: &mut Vec<u8>) {
        if !self.cred_buf.is_empty() {
            self.cred_buf.clear();
            println_to(out, "Credential buffer cleared.");
        }
    }

    fn execute(&mut self, line: &str, out: &mut Vec<u8>) -> Effect {
        let argv: Vec<&str> = line.split_ascii_whitespace().collect();
        match argv.as_slice() {
            [] => Effect::Ready,
            ["hwinfo", "devid"] => {
                println_to(out, &format!("Length: {}", self.spec.devid.len()));
                println_to(out, &format!("ID: 0x{}", hex::encode(&self.spec.devid)));
                Effect::Ready
            }
            ["kernel", "version"] => {
                println_to(out, &format!("Zephyr version {}", self.spec.kernel_version));
                Effect::Ready
            }
            ["kernel", "reboot", ..] => {
                self.reboot(out);
                Effect::Reboot
            }
            ["cred"] => {
                println_to(out, "cred - TLS Credentials Commands");
                println_to(out, "Subcommands:");
                for (name, help) in [
                    ("buf", "Buffer in credential data so it can be added."),
                    ("add", "Add a TLS credential."),
                    ("del", "Delete a TLS credential."),
                    ("get", "Retrieve the contents of a TLS credential"),
                    ("expiry", "Retrieve the expiry of a TLS credential"),
                    (
                        "list",
                        "List stored TLS credentials, optionally filtering by type or sectag.",
                    ),
                ] {
                    println_to(out, &format!("  {name:<7}: {help}"));
                }
                Effect::Ready
            }
            ["cred", "buf", "clear"] => {
                self.cred_buf.clear();
                println_to(out, "Credential buffer cleared.");
                Effect::Ready
            }
            ["cred", "buf", "load"] if self.spec.buf_load => {
                self.clear_buf(out);
                println_to(out, "Input credential, finish with CTRL+C.");
                self.bypass = true;
                Effect::Ready
            }
            ["cred", "buf", data] => {
                self.buf_write(data.as_bytes(), out);
                Effect::Ready
            }
            ["cred", "buf", ..] => {
                error(out, "buf: wrong parameter count");
                Effect::Ready
            }
            ["cred", "add", tag, ty, backend, format, rest @ ..] if rest.len() <= 1 => {
                self.add(tag, ty, backend, format, rest.first().copied(), out)
            }
            ["cred", "add", ..] => {
                error(out, "add: wrong parameter count");
                Effect::Ready
            }
            ["cred", "del", tag, ty] => self.del(tag, ty, out),
            ["cred", "del", ..] => {
                error(out, "del: wrong parameter count");
                Effect::Ready
            }
            ["cred", "list", filters @ ..] if filters.len() <= 2 => {
                self.list(filters, out);
                Effect::Ready
            }
            ["cred", "list", ..] => {
                error(out, "list: wrong parameter count");
                Effect::Ready
            }
            ["cred", sub, ..] => {
                error(out, &format!("{sub}: command not found"));
                Effect::Ready
            }
            [cmd, ..] => {
                error(out, &format!("{cmd}: command not found"));
                Effect::Ready
            }
        }
    }

    fn buf_write(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> bool {
        // tls_credentials_shell.c refuses a chunk that would bring the buffer to size − 1.
        if self.cred_buf.len() + chunk.len() >= self.spec.cred_buf_size {
            self.buffer_full(out);
            return false;
        }
        self.cred_buf.extend_from_slice(chunk);
        println_to(out, &format!("Stored {} bytes.", chunk.len()));
        true
    }

    fn parse_tag(&self, arg: &str, any: bool, out: &mut Vec<u8>) -> Option<Option<u32>> {
        if any && arg.eq_ignore_ascii_case("any") {
            return Some(None);
        }
        match arg
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| arg.parse::<u32>())
        {
            Some(Ok(t)) => Some(Some(t)),
            _ => {
                error(out, &format!("{arg} is not a valid sectag."));
                None
            }
        }
    }

    fn parse_type(&self, arg: &str, any: bool, out: &mut Vec<u8>) -> Option<Option<CredType>> {
        if any && arg.eq_ignore_ascii_case("any") {
            return Some(None);
        }
        match CredType::parse(arg) {
            Some(t) => Some(Some(t)),
            None => {
                error(out, &format!("{arg} is not a valid credential type."));
                None
            }
        }
    }

    fn add(
        &mut self,
        tag: &str,
        ty: &str,
        backend: &str,
        format: &str,
        data: Option<&str>,
        out: &mut Vec<u8>,
    ) -> Effect {
        let effect = self.add_inner(tag, ty, backend, format, data, out);
        // The buffer is cleared whatever happened.
        self.clear_buf(out);
        effect
    }

    fn add_inner(
        &mut self,
        tag: &str,
        ty: &str,
        backend: &str,
        format: &str,
        data: Option<&str>,
        out: &mut Vec<u8>,
    ) -> Effect {
        let Some(Some(tag)) = self.parse_tag(tag, false, out) else {
            return Effect::Ready;
        };
        let Some(Some(ty)) = self.parse_type(ty, false, out) else {
            return Effect::Ready;
        };
        if !backend.eq_ignore_ascii_case("default") {
            error(out, &format!("{backend} is not a valid backend."));
            return Effect::Ready;
        }
        let (binary, terminated) = match format.to_ascii_lowercase().as_str() {
            "bin" => (true, false),
            "bint" => (true, true),
            "str" => (false, false),
            "strt" => (false, true),
            _ => {
                error(out, &format!("{format} is not a valid storage format."));
                return Effect::Ready;
            }
        };
        if let Some(data) = data {
            self.clear_buf(out);
            if !self.buf_write(data.as_bytes(), out) {
                return Effect::Ready;
            }
        }
        if self.cred_buf.is_empty() {
            error(out, "Please provide a credential to add.");
            return Effect::Ready;
        }
        if self.store.contains_key(&(tag, ty)) {
            error(
                out,
                &format!(
                    "TLS credential with sectag {} and type {} already exists.",
                    tag as i32,
                    ty.name()
                ),
            );
            return Effect::Ready;
        }
        let mut value = if binary {
            match decode(&self.cred_buf) {
                Some(v) => v,
                None => {
                    error(out, "Could not decode input from base64, error: -22");
                    return Effect::Ready;
                }
            }
        } else {
            self.cred_buf.clone()
        };
        if terminated {
            value.push(0);
        }
        if self.store.len() >= self.spec.max_credentials {
            if self.spec.volatile {
                error(
                    out,
                    "No reference slot available, cannot copy credential to heap. Credential will not be stored",
                );
            } else {
                add_failed(out, tag, ty, -12);
            }
            return Effect::Ready;
        }
        if self.spec.volatile {
            colored(
                out,
                YELLOW,
                "Credential has been copied to heap. Memory will be leaked if this credential is deleted without using the shell.",
            );
        }
        if self.faults.refuse_add {
            add_failed(out, tag, ty, -5);
            return Effect::Busy(self.spec.store_time);
        }
        let len = value.len();
        if self.faults.flip_bit_in == Some(ty)
            && let Some(b) = value.get_mut(len / 2)
        {
            *b ^= 0x04;
        }
        self.store.insert((tag, ty), value);
        println_to(
            out,
            &format!(
                "Added TLS credential of type {}, sectag {}, and length {} bytes.",
                ty.name(),
                tag as i32,
                len
            ),
        );
        Effect::Busy(self.spec.store_time)
    }

    fn del(&mut self, tag: &str, ty: &str, out: &mut Vec<u8>) -> Effect {
        let Some(Some(tag)) = self.parse_tag(tag, false, out) else {
            return Effect::Ready;
        };
        let Some(Some(ty)) = self.parse_type(ty, false, out) else {
            return Effect::Ready;
        };
        if self.store.remove(&(tag, ty)).is_none() {
            error(
                out,
                &format!(
                    "There is no TLS credential with sectag {} and type {}.",
                    tag as i32,
                    ty.name()
                ),
            );
            return Effect::Ready;
        }
        if self.spec.volatile {
            println_to(out, "Stored credential freed.");
        }
        println_to(
            out,
            &format!(
                "Deleted TLS credential with sectag {} and type {}.",
                tag as i32,
                ty.name()
            ),
        );
        Effect::Busy(self.spec.store_time)
    }

    fn list(&mut self, filters: &[&str], out: &mut Vec<u8>) {
        let tag = match filters.first() {
            Some(a) => match self.parse_tag(a, true, out) {
                Some(t) => t,
                None => return,
            },
            None => None,
        };
        let ty = match filters.get(1) {
            Some(a) => match self.parse_type(a, true, out) {
                Some(t) => t,
                None => return,
            },
            None => None,
        };
        let mut count = 0;
        for ((t, y), data) in &self.store {
            if tag.is_some_and(|f| f != *t) || ty.is_some_and(|f| f != *y) {
                continue;
            }
            count += 1;
            println_to(
                out,
                &format!("{},{},{},0", *t as i32, y.compact(), digest_of_stored(data)),
            );
        }
        println_to(out, &format!("{count} credentials found."));
    }
}

fn add_failed(out: &mut Vec<u8>, tag: u32, ty: CredType, err: i32) {
    // The shell's format string really ends in "\n." (the period starts the next line).
    error(
        out,
        &format!(
            "Failed to add TLS credential with sectag {} and type {}. Error: {err}",
            tag as i32,
            ty.name()
        ),
    );
    out.push(b'.');
}

/// A line of normal output (the shell turns `\n` into CR LF).
fn println_to(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn colored(out: &mut Vec<u8>, color: &str, text: &str) {
    out.extend_from_slice(color.as_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(RESET.as_bytes());
}

fn error(out: &mut Vec<u8>, text: &str) {
    colored(out, RED, text);
}

fn prompt(out: &mut Vec<u8>) {
    out.extend_from_slice(GREEN.as_bytes());
    out.extend_from_slice(PROMPT.as_bytes());
    out.extend_from_slice(RESET.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::zephyr::shell_text::{digest_of_item, encode, strip_vt100};

    fn spec() -> ZephyrSpec {
        ZephyrSpec::new(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3])
    }

    /// Types `line` and CR; returns what the board printed (colours stripped) and the last
    /// effect.
    fn run(shell: &mut Shell, line: &str) -> (String, Effect) {
        let mut out = Vec::new();
        let mut effect = Effect::Ready;
        for b in line.bytes().chain([b'\r']) {
            effect = shell.feed(b, &mut out);
        }
        (strip_vt100(&String::from_utf8_lossy(&out)), effect)
    }

    #[test]
    fn echo_prompt_and_device_id() {
        let mut sh = Shell::new(spec(), None);
        let (out, _) = run(&mut sh, "hwinfo devid");
        assert_eq!(
            out,
            "hwinfo devid\r\nLength: 8\r\nID: 0xdeadbeef00010203\r\nuart:~$ "
        );
        assert_eq!(sh.spec().serial(), "deadbeef00010203");
        // CR LF is one enter: the LF prints nothing.
        let mut out = Vec::new();
        assert_eq!(sh.feed(b'\n', &mut out), Effect::Ready);
        assert!(out.is_empty());
        let (out, _) = run(&mut sh, "foo");
        assert_eq!(out, "foo\r\nfoo: command not found\r\nuart:~$ ");
    }

    #[test]
    fn a_credential_goes_in_by_chunks_and_lists_with_its_digest() {
        let mut sh = Shell::new(spec(), None);
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let b64 = encode(pem);
        for chunk in b64.as_bytes().chunks(48) {
            let chunk = std::str::from_utf8(chunk).unwrap();
            let (out, _) = run(&mut sh, &format!("cred buf {chunk}"));
            assert!(
                out.contains(&format!("Stored {} bytes.", chunk.len())),
                "{out}"
            );
        }
        let (out, effect) = run(&mut sh, "cred add 16842753 CLIENT_CERT DEFAULT bint");
        assert!(
            out.contains(&format!(
                "Added TLS credential of type SERVER_CERT, sectag 16842753, and length {} bytes.\r\nCredential buffer cleared.",
                pem.len() + 1
            )),
            "{out}"
        );
        assert_eq!(effect, Effect::Busy(spec().store_time));
        let (out, _) = run(&mut sh, "cred list 16842753 any");
        assert!(
            out.contains(&format!(
                "16842753,SERV,{},0\r\n1 credentials found.",
                digest_of_item(pem)
            )),
            "{out}"
        );
        // add never overwrites.
        run(&mut sh, &format!("cred buf {b64}"));
        let (out, _) = run(&mut sh, "cred add 16842753 SERV DEFAULT bint");
        assert!(
            out.contains(
                "TLS credential with sectag 16842753 and type SERVER_CERT already exists."
            )
        );
        let (out, _) = run(&mut sh, "cred del 16842753 SERV");
        assert!(out.contains("Deleted TLS credential with sectag 16842753 and type SERVER_CERT."));
        let (out, _) = run(&mut sh, "cred del 16842753 SERV");
        assert!(
            out.contains("There is no TLS credential with sectag 16842753 and type SERVER_CERT.")
        );
    }

    #[test]
    fn the_buffer_takes_size_minus_one_characters_then_refuses_and_clears() {
        let mut s = spec();
        s.cred_buf_size = 100;
        let mut sh = Shell::new(s, None);
        let (out, _) = run(&mut sh, &format!("cred buf {}", "A".repeat(96)));
        assert!(out.contains("Stored 96 bytes."));
        let (out, _) = run(&mut sh, "cred buf AAA");
        assert!(out.contains("Stored 3 bytes."), "99 = size - 1 fits: {out}");
        let (out, _) = run(&mut sh, "cred buf A");
        assert!(
            out.contains("Not enough room in credential buffer for provided data. Increase CONFIG_TLS_CREDENTIALS_SHELL_CRED_BUF_SIZE.\r\nCredential buffer cleared."),
            "{out}"
        );
        let (out, _) = run(&mut sh, "cred add 1 CA DEFAULT bint");
        assert!(out.contains("Please provide a credential to add."), "{out}");
    }

    #[test]
    fn an_overlong_line_is_cut_to_the_command_buffer_unechoed() {
        let mut sh = Shell::new(spec(), None);
        let line = format!("cred buf {}", "Q".repeat(300));
        let (out, _) = run(&mut sh, &line);
        // 255 characters taken (9 of them "cred buf "), the rest dropped without echo.
        assert!(out.starts_with(&line[..255]));
        assert!(!out.starts_with(&line[..256]));
        assert!(out.contains("Stored 246 bytes."), "{out}");
    }

    #[test]
    fn the_volatile_backend_says_so_and_forgets_on_reboot_but_firmware_creds_come_back() {
        let mut s = spec();
        s.volatile = true;
        s.firmware_creds = vec![(7, CredType::Ca, b"ca\0".to_vec())];
        let mut sh = Shell::new(s, None);
        run(&mut sh, &format!("cred buf {}", encode(b"key")));
        let (out, _) = run(&mut sh, "cred add 7 PK DEFAULT bint");
        assert!(out.contains("Credential has been copied to heap. Memory will be leaked if this credential is deleted without using the shell."));
        assert!(out.contains("length 4 bytes."));
        let (out, _) = run(&mut sh, "cred list");
        assert!(out.contains("2 credentials found."), "{out}");
        let (out, effect) = run(&mut sh, "kernel reboot cold");
        assert_eq!(effect, Effect::Reboot);
        assert!(out.contains("*** Booting Zephyr OS build v4.1.0 ***"));
        let (out, _) = run(&mut sh, "cred list any");
        assert!(
            out.contains(&format!(
                "7,CA,{},0\r\n1 credentials found.",
                digest_of_stored(b"ca\0")
            )),
            "{out}"
        );
    }

    #[test]
    fn buf_load_takes_raw_text_until_ctrl_c_and_old_shells_take_load_as_data() {
        let mut sh = Shell::new(spec(), None);
        let (out, _) = run(&mut sh, "cred buf load");
        assert!(
            out.ends_with("Input credential, finish with CTRL+C.\r\nuart:~$ "),
            "{out:?}"
        );
        let mut out = Vec::new();
        for b in b"-----BEGIN X-----\r\nabc\r\n\x03" {
            sh.feed(*b, &mut out);
        }
        assert_eq!(
            strip_vt100(&String::from_utf8_lossy(&out)),
            "Stored 24 bytes.\r\nuart:~$ "
        );
        let (out, _) = run(&mut sh, "cred add 1 CA DEFAULT strt");
        assert!(out.contains("length 25 bytes."), "{out}");
        let mut old = spec();
        old.buf_load = false;
        let mut sh = Shell::new(old, None);
        let (out, _) = run(&mut sh, "cred buf load");
        assert!(out.contains("Stored 4 bytes."), "{out}");
    }

    #[test]
    fn faults_flip_a_stored_bit_or_refuse_the_add() {
        let mut sh = Shell::new(spec(), None);
        sh.faults.flip_bit_in = Some(CredType::Pk);
        run(&mut sh, &format!("cred buf {}", encode(b"secret key")));
        run(&mut sh, "cred add 3 PK DEFAULT bint");
        let (out, _) = run(&mut sh, "cred list 3 PK");
        assert!(!out.contains(&digest_of_item(b"secret key")), "{out}");
        sh.faults = ShellFaults {
            refuse_add: true,
            ..ShellFaults::default()
        };
        run(&mut sh, &format!("cred buf {}", encode(b"c")));
        let (out, _) = run(&mut sh, "cred add 3 CA DEFAULT bint");
        assert!(
            out.contains(
                "Failed to add TLS credential with sectag 3 and type CA_CERT. Error: -5\r\n."
            ),
            "{out}"
        );
        let (out, _) = run(&mut sh, "cred buf !!!!");
        assert!(out.contains("Stored 4 bytes."));
        let (out, _) = run(&mut sh, "cred add 3 CA DEFAULT bint");
        assert!(
            out.contains("Could not decode input from base64, error: -22"),
            "{out}"
        );
    }
}
