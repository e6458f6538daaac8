//! The pre-provisioning hook (docs/aws-fleet-provisioning.md §4): a program the emulator asks, on
//! every `RegisterThing` of a template that has a `preProvisioningHook`, whether the device may be
//! provisioned, before any resource is created.
//!
//! AWS calls a Lambda function. The emulator calls one of:
//!
//! | target | call |
//! |---|---|
//! | `command:PATH ARGS…` | runs `PATH` with the arguments (split on whitespace, no quoting), the input JSON on stdin; the output JSON is read from stdout; exit status 0 is required |
//! | `http://HOST:PORT/PATH` | POSTs the input JSON (`content-type: application/json`); a 2xx answer's body is the output JSON |
//! | a Lambda ARN | looked up in `[emulator.hooks]`, which maps it to one of the two forms above, so AWS templates are used unchanged; an unmapped ARN is a hook failure whose message says how to map it |
//!
//! Input (AWS's): `{claimCertificateId, certificateId, certificatePem, templateArn, clientId,
//! parameters}`. Output: `{allowProvisioning, parameterOverrides}`.
//!
//! Rules, AWS's where documented:
//! - Provisioning goes on only when `allowProvisioning` is `true`, or `1` (reported accepted by
//!   AWS, docs/aws-fleet-provisioning.md §4). Anything else, including a missing field, `"true"` or
//!   `0`, denies.
//! - `parameterOverrides` (optional) is a map; string values are taken as they are, number
//!   and boolean values as their JSON text (as the template engine reads literals). `null`,
//!   list or object values, or a `parameterOverrides` that is not a map, are a bad answer.
//! - Deny → 403; a failure (cannot start, non-zero exit, non-2xx HTTP status, output that is
//!   not a JSON object, more than 1 MiB of output, no answer within the deadline — AWS: 5 s,
//!   `hook_timeout_ms`) → 403, all through the error table. A command that overruns is
//!   killed with its whole process group (each hook runs in a group of its own).
//! - Nothing blocks the reactor: commands run under `tokio::process`; the HTTP client
//!   (ureq, blocking) runs on the blocking pool with its own deadline equal to the hook's.
//! - The hook's stderr is logged at debug level only; its output never reaches an error
//!   message.

use std::collections::BTreeMap;
use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::policy::{ACCOUNT, REGION};

/// AWS's deadline for a pre-provisioning hook.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most output (stdout or HTTP body) read from a hook.
pub(crate) const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// The most stderr kept from a hook command (for the debug log).
const MAX_STDERR_BYTES: usize = 4096;

/// `arn:aws:iot:REGION:ACCOUNT:provisioningtemplate/NAME`, the hook input's `templateArn`.
pub(crate) fn template_arn(template: &str) -> String {
    format!("arn:aws:iot:{REGION}:{ACCOUNT}:provisioningtemplate/{template}")
}

/// Where a hook call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookTarget {
    Command { program: String, args: Vec<String> },
    Http { url: String },
}

impl HookTarget {
    /// Parses `command:PATH ARGS…` or `http://…`.
    pub(crate) fn parse(s: &str) -> Result<HookTarget, String> {
        if let Some(rest) = s.strip_prefix("command:") {
            let mut words = rest.split_whitespace().map(str::to_string);
            let program = words
                .next()
                .ok_or_else(|| "command: names no program".to_string())?;
            return Ok(HookTarget::Command {
                program,
                args: words.collect(),
            });
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            if host.is_empty() || s.chars().any(char::is_whitespace) {
                return Err(format!("{s:?} is not an http:// URL with a host"));
            }
            return Ok(HookTarget::Http { url: s.to_string() });
        }
        if s.starts_with("https://") {
            return Err("https:// hooks are not supported; use an http:// URL".into());
        }
        Err(format!(
            "{s:?} is neither command:PATH ARGS nor an http:// URL"
        ))
    }
}

impl fmt::Display for HookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookTarget::Command { program, .. } => write!(f, "command {program}"),
            HookTarget::Http { url } => f.write_str(url),
        }
    }
}

/// A bad entry of `[emulator.hooks]`.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("[emulator.hooks] {arn:?}: {reason}")]
#[diagnostic(
    code(station::emulator::hooks),
    help(
        "map each Lambda ARN to \"command:/path/to/program ARGS\" or \"http://host:port/path\", \
         e.g. \"arn:aws:lambda:us-east-1:123456789012:function:check\" = \"command:fixtures/hooks/allow.sh\""
    )
)]
pub struct HookConfigError {
    pub arn: String,
    pub reason: String,
}

/// The hook's input, as AWS sends it to the Lambda function.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HookInput<'a> {
    pub claim_certificate_id: &'a str,
    pub certificate_id: &'a str,
    pub certificate_pem: &'a str,
    pub template_arn: String,
    pub client_id: &'a str,
    pub parameters: &'a BTreeMap<String, String>,
}

/// What the hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookOutcome {
    /// Provision, with these parameters overriding (or added to) the request's.
    Allow(BTreeMap<String, String>),
    Deny,
}

/// Why a hook gave no decision. The text goes into the 403 `errorMessage`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HookFailure {
    #[error(
        "its target {arn} is not mapped; add it to [emulator.hooks] in station.toml as \
         \"{arn}\" = \"command:/path/to/hook\" or \"http://host:port/path\""
    )]
    Unmapped { arn: String },
    #[error("its target {0:?} is not a Lambda ARN, command: or http:// target")]
    BadTarget(String),
    #[error("it did not answer within {}", show_duration(*.0))]
    Timeout(Duration),
    #[error("its command could not be started ({0})")]
    Spawn(String),
    #[error("its command exited with {0}")]
    Exit(String),
    #[error("its answer is not valid: {0}")]
    BadOutput(String),
    #[error("its HTTP endpoint {0}")]
    Http(String),
}

fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// The hook caller: the Lambda ARN table and the deadline.
pub(crate) struct Hooks {
    targets: BTreeMap<String, HookTarget>,
    timeout: Duration,
    agent: ureq::Agent,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("targets", &self.targets)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks::new(&BTreeMap::new(), DEFAULT_TIMEOUT).expect("an empty table is valid")
    }
}

impl Hooks {
    /// Checks the `[emulator.hooks]` table (Lambda ARN → target).
    pub(crate) fn new(
        table: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Hooks, HookConfigError> {
        let mut targets = BTreeMap::new();
        for (arn, target) in table {
            if !is_lambda_arn(arn) {
                return Err(HookConfigError {
                    arn: arn.clone(),
                    reason: "the key is not a Lambda function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME)".into(),
                });
            }
            let parsed = HookTarget::parse(target).map_err(|reason| HookConfigError {
                arn: arn.clone(),
                reason,
            })?;
            targets.insert(arn.clone(), parsed);
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent("fleet-station-emulator")
            .build()
            .new_agent();
        Ok(Hooks {
            targets,
            timeout,
            agent,
        })
    }

    /// Whether a template's `targetArn` can be called.
    pub(crate) fn is_mapped(&self, target_arn: &str) -> bool {
        self.resolve(target_arn).is_ok()
    }

    /// What a template's `targetArn` calls: a `command:`/`http://` target as written, or a
    /// Lambda ARN through the table.
    pub(crate) fn resolve(&self, target_arn: &str) -> Result<HookTarget, HookFailure> {
        if let Some(t) = self.targets.get(target_arn) {
            return Ok(t.clone());
        }
        if is_lambda_arn(target_arn) {
            return Err(HookFailure::Unmapped {
                arn: target_arn.to_string(),
            });
        }
        HookTarget::parse(target_arn).map_err(|_| HookFailure::BadTarget(target_arn.to_string()))
    }

    /// Calls the hook and returns its decision.
    pub(crate) async fn invoke(
        &self,
        target_arn: &str,
        input: &HookInput<'_>,
    ) -> Result<HookOutcome, HookFailure> {
        let target = self.resolve(target_arn)?;
        let body = serde_json::to_vec(input).expect("the hook input serializes");
        let output = match &target {
            HookTarget::Command { program, args } => {
                run_command(program, args, body, self.timeout).await?
            }
            HookTarget::Http { url } => {
                post(self.agent.clone(), url.clone(), body, self.timeout).await?
            }
        };
        parse_output(&output)
    }
}

/// `arn:<partition>:lambda:<region>:<account>:function:<name>[:qualifier]`, loosely.
fn is_lambda_arn(arn: &str) -> bool {
    let mut parts = arn.splitn(4, ':');
    parts.next() == Some("arn")
        && parts.next().is_some_and(|p| p.starts_with("aws"))
        && parts.next() == Some("lambda")
        && parts.next().is_some_and(|rest| !rest.is_empty())
}

/// Reads the hook's answer (docs/aws-fleet-provisioning.md §4 output).
pub(crate) fn parse_output(bytes: &[u8]) -> Result<HookOutcome, HookFailure> {
    let bad = |m: String| HookFailure::BadOutput(m);
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            bad("it is empty".into())
        } else {
            bad(format!("it is not JSON ({e})"))
        }
    })?;
    let Value::Object(map) = value else {
        return Err(bad("it is not a JSON object".into()));
    };
    let allowed = match map.get("allowProvisioning") {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_u64() == Some(1) || n.as_f64() == Some(1.0),
        _ => false,
    };
    if !allowed {
        return Ok(HookOutcome::Deny);
    }
    let overrides = match map.get("parameterOverrides") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                _ => Err(bad(format!(
                    "parameterOverrides.{k} is not a string, number or boolean"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("parameterOverrides is not a JSON object".into())),
    };
    Ok(HookOutcome::Allow(overrides))
}

async fn read_limited<R: AsyncRead + Unpin>(r: Option<R>, limit: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(r) = r {
        // A read error ends the output; a short answer is then reported as bad output.
        let _ = r.take(limit as u64 + 1).read_to_end(&mut buf).await;
    }
    buf
}

/// Runs a hook command with the input on stdin; returns its stdout.
async fn run_command(
    program: &str,
    args: &[String],
    input: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, HookFailure> {
    let deadline = Instant::now() + timeout;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so that an overrun kills whatever it started too.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| HookFailure::Spawn(format!("{program}: {e}")))?;
    let pid = child.id();
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    // Write stdin while reading stdout/stderr, so that a hook that answers before reading
    // all of its input cannot deadlock against us. A hook may ignore stdin (EPIPE is fine).
    let write = async move {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        }
    };
    let io = async {
        let ((), out, err) = tokio::join!(
            write,
            read_limited(stdout, MAX_OUTPUT_BYTES),
            read_limited(stderr, MAX_STDERR_BYTES)
        );
        (out, err)
    };
    let (out, err) = match tokio::time::timeout_at(deadline, io).await {
        Ok(v) => v,
        Err(_) => {
            kill(&mut child, pid).await;
            return Err(HookFailure::Timeout(timeout));
        }
    };
    if !err.is_empty() {
        tracing::debug!(
            hook = program,
            stderr = %String::from_utf8_lossy(&err),
            "emulator: pre-provisioning hook wrote to stderr"
        );
    }
    if out.len() > MAX_OUTPUT_BYTES {
        kill(&mut child, pid).await;
        return Err(HookFailure::BadOutput(format!(
            "it is longer than {MAX_OUTPUT_BYTES} bytes"
        )));
    }
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(HookFailure::Spawn(format!("{program}: {e}"))),
        Err(_) => {
            kill(&mut child, pid).await;
            return Err(HookFailure::Timeout(timeout));
        }
    };
    if !status.success() {
        return Err(HookFailure::Exit(describe(status)));
    }
    Ok(out)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// Kills the hook's process group, then reaps the hook.
async fn kill(child: &mut tokio::process::Child, pid: Option<u32>) {
    if let Some(pgid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0) {
        // SAFETY: kill(2) only sends a signal. The negative pid names the process group that
        // `process_group(0)` created for this child (its id is the child's pid); the child
        // is not reaped yet, so that id cannot have been reused.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// POSTs the input to an HTTP hook on the blocking pool; returns the 2xx body.
async fn post(
    agent: ureq::Agent,
    url: String,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, HookFailure> {
    let call = tokio::task::spawn_blocking(move || {
        let mut resp = agent
            .post(&url)
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| http_failure(e, timeout))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(HookFailure::Http(format!(
                "answered HTTP status {}",
                status.as_u16()
            )));
        }
        resp.body_mut()
            .with_config()
            .limit(MAX_OUTPUT_BYTES as u64)
            .read_to_vec()
            .map_err(|e| http_failure(e, timeout))
    });
    // ureq stops at the same deadline, so the blocking thread does not outlive the call.
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(HookFailure::Http(format!("call failed ({e})"))),
        Err(_) => Err(HookFailure::Timeout(timeout)),
    }
}

fn http_failure(e: ureq::Error, timeout: Duration) -> HookFailure {
    match e {
        ureq::Error::Timeout(_) => HookFailure::Timeout(timeout),
        ureq::Error::BodyExceedsLimit(_) => {
            HookFailure::BadOutput(format!("it is longer than {MAX_OUTPUT_BYTES} bytes"))
        }
        ureq::Error::Io(io) => HookFailure::Http(format!("cannot be reached ({io})")),
        other => HookFailure::Http(format!("call failed ({other})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            HookTarget::parse("command:/bin/hook  --mode  allow").unwrap(),
            HookTarget::Command {
                program: "/bin/hook".into(),
                args: vec!["--mode".into(), "allow".into()],
            }
        );
        assert_eq!(
            HookTarget::parse("http://127.0.0.1:9000/hook").unwrap(),
            HookTarget::Http {
                url: "http://127.0.0.1:9000/hook".into()
            }
        );
        for bad in [
            "command:",
            "command:   ",
            "http://",
            "http:///x",
            "https://h/x",
            "ftp://x",
            "/bin/x",
        ] {
            assert!(HookTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_maps_lambda_arns_only() {
        let arn = "arn:aws:lambda:us-east-1:123456789012:function:check";
        let table = BTreeMap::from([(arn.to_string(), "command:/bin/true".to_string())]);
        let hooks = Hooks::new(&table, DEFAULT_TIMEOUT).unwrap();
        assert!(matches!(hooks.resolve(arn), Ok(HookTarget::Command { .. })));
        let other = "arn:aws:lambda:us-east-1:123456789012:function:other";
        let e = hooks.resolve(other).unwrap_err();
        assert!(matches!(e, HookFailure::Unmapped { .. }));
        assert!(e.to_string().contains("[emulator.hooks]"), "{e}");
        assert!(e.to_string().contains(other));
        assert!(matches!(
            hooks.resolve("http://localhost:1/x"),
            Ok(HookTarget::Http { .. })
        ));
        assert!(matches!(
            hooks.resolve("arn:aws:sns:x"),
            Err(HookFailure::BadTarget(_))
        ));

        let bad_key = BTreeMap::from([("check".to_string(), "command:/bin/true".to_string())]);
        assert!(Hooks::new(&bad_key, DEFAULT_TIMEOUT).is_err());
        let bad_value = BTreeMap::from([(arn.to_string(), "/bin/true".to_string())]);
        let e = Hooks::new(&bad_value, DEFAULT_TIMEOUT).unwrap_err();
        assert!(e.to_string().contains(arn));
    }

    #[test]
    fn the_emulator_section_takes_the_hook_table() {
        let cfg: crate::EmulatorConfig = toml::from_str(
            r#"
            hook_timeout_ms = 300
            rsa_stock = 4
            rsa_workers = 2
            [hooks]
            "arn:aws:lambda:us-east-1:123456789012:function:check" = "command:fixtures/hooks/allow.sh"
            "#,
        )
        .unwrap();
        assert_eq!(
            (cfg.hook_timeout_ms, cfg.rsa_stock, cfg.rsa_workers),
            (300, 4, 2)
        );
        let hooks = Hooks::new(&cfg.hooks, Duration::from_millis(cfg.hook_timeout_ms)).unwrap();
        assert!(hooks.is_mapped("arn:aws:lambda:us-east-1:123456789012:function:check"));
        let defaults: crate::EmulatorConfig = toml::from_str("").unwrap();
        assert_eq!(defaults.hook_timeout_ms, 5000);
        assert!(defaults.hooks.is_empty());
    }

    #[test]
    fn allow_provisioning_true_or_1_allows() {
        let allow = |s: &str| parse_output(s.as_bytes());
        assert_eq!(
            allow(r#"{"allowProvisioning": true}"#),
            Ok(HookOutcome::Allow(BTreeMap::new()))
        );
        assert_eq!(
            allow(r#"{"allowProvisioning": 1, "parameterOverrides": null}"#),
            Ok(HookOutcome::Allow(BTreeMap::new()))
        );
        for deny in [
            r#"{"allowProvisioning": false}"#,
            r#"{"allowProvisioning": 0}"#,
            r#"{"allowProvisioning": 2}"#,
            r#"{"allowProvisioning": "true"}"#,
            r#"{"parameterOverrides": {"A": "1"}}"#,
            r#"{}"#,
        ] {
            assert_eq!(allow(deny), Ok(HookOutcome::Deny), "{deny}");
        }
    }

    #[test]
    fn overrides_are_strings_or_scalars() {
        let out = parse_output(
            br#"{"allowProvisioning": true, "parameterOverrides": {"A": "x", "Port": 8883, "On": true}}"#,
        )
        .unwrap();
        let HookOutcome::Allow(o) = out else {
            panic!("denied")
        };
        assert_eq!(o["A"], "x");
        assert_eq!(o["Port"], "8883");
        assert_eq!(o["On"], "true");
        for bad in [
            r#"{"allowProvisioning": true, "parameterOverrides": {"A": null}}"#,
            r#"{"allowProvisioning": true, "parameterOverrides": {"A": [1]}}"#,
            r#"{"allowProvisioning": true, "parameterOverrides": "A=1"}"#,
        ] {
            assert!(
                matches!(parse_output(bad.as_bytes()), Err(HookFailure::BadOutput(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn output_that_is_not_a_json_object_is_a_failure() {
        for bad in [
            "",
            "  \n",
            "allow",
            "[true]",
            "true",
            "{\"allowProvisioning\": tru",
        ] {
            assert!(
                matches!(parse_output(bad.as_bytes()), Err(HookFailure::BadOutput(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn input_has_the_documented_field_names() {
        let params = BTreeMap::from([("SerialNumber".to_string(), "1".to_string())]);
        let input = HookInput {
            claim_certificate_id: "claim",
            certificate_id: "cert",
            certificate_pem: "PEM",
            template_arn: template_arn("T"),
            client_id: "client",
            parameters: &params,
        };
        let v = serde_json::to_value(&input).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "claimCertificateId": "claim",
                "certificateId": "cert",
                "certificatePem": "PEM",
                "templateArn": "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/T",
                "clientId": "client",
                "parameters": {"SerialNumber": "1"}
            })
        );
    }

    #[test]
    fn timeouts_read_naturally() {
        assert_eq!(
            HookFailure::Timeout(Duration::from_secs(5)).to_string(),
            "it did not answer within 5 s"
        );
        assert_eq!(
            HookFailure::Timeout(Duration::from_millis(300)).to_string(),
            "it did not answer within 300 ms"
        );
    }

    #[tokio::test]
    async fn commands_get_stdin_and_their_exit_status_counts() {
        let hooks = Hooks::default();
        let params = BTreeMap::new();
        let input = HookInput {
            claim_certificate_id: "c",
            certificate_id: "d",
            certificate_pem: "p",
            template_arn: template_arn("T"),
            client_id: "x",
            parameters: &params,
        };
        // `sh -c` echoes an answer built from its stdin: the input reached it.
        let script = "read -r line; case \"$line\" in *claimCertificateId*) echo '{\"allowProvisioning\":true}';; *) echo no;; esac";
        let out = run_command(
            "/bin/sh",
            &["-c".into(), script.into()],
            serde_json::to_vec(&input).unwrap(),
            DEFAULT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(parse_output(&out), Ok(HookOutcome::Allow(BTreeMap::new())));
        let e = run_command(
            "/bin/sh",
            &["-c".into(), "exit 3".into()],
            vec![],
            DEFAULT_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert_eq!(e, HookFailure::Exit("status 3".into()));
        let e = run_command(
            "/bin/sh",
            &["-c".into(), "yes | head -c 2000000".into()],
            vec![],
            DEFAULT_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, HookFailure::BadOutput(m) if m.contains("longer than")),
            "{e:?}"
        );
        let e = run_command("/nonexistent/hook", &[], vec![], DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(e, HookFailure::Spawn(_)), "{e:?}");
        assert!(matches!(
            hooks
                .invoke("arn:aws:lambda:us-east-1:1:function:nope", &input)
                .await,
            Err(HookFailure::Unmapped { .. })
        ));
    }
}
