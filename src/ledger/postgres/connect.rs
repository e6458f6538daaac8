//! Connecting to a PostgreSQL ledger: the URL as libpq reads it (`postgres://user:pw@host:port/db?sslmode=…`,
//! or `?host=/socket/dir` for a Unix socket), TLS through the rustls already in the tree (ring
//! provider), and the password kept out of every message ([`redact`]).
//!
//! TLS follows the URL's `sslmode`: `disable` (none), `prefer` (the default: TLS when the
//! server offers it) or `require`. Whenever TLS is used the server's certificate is verified
//! against the system's roots, or against the PEM file named by `sslrootcert=` (which this
//! module takes out of the URL, as the client library does not read it): rustls always
//! verifies, so `require` here is what libpq calls `verify-full`. A Unix socket never uses TLS.

use std::sync::Arc;
use std::time::Duration;

use postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::ledger::LedgerError;

/// How long connecting may take before the station gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `url` without its password (`postgres://user:***@host/db`), for messages and reports.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = tail
        .split_once('?')
        .map(|(path, query)| {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some(("password", _)) => "password=***".to_string(),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        })
        .unwrap_or_else(|| tail.to_string());
    format!("{scheme}://{authority}{tail}")
}

/// `e` with the causes the client library keeps behind its one-line kind ("db error").
pub(super) fn describe(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A [`LedgerError::Postgres`] for the ledger at `url`.
pub(super) fn pg_error(url: &str) -> impl Fn(postgres::Error) -> LedgerError + '_ {
    move |e| LedgerError::Postgres {
        ledger: redact(url),
        reason: describe(&e),
    }
}

/// The URL without `sslrootcert=…`, and that file if it was given.
fn split_rootcert(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut rootcert = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("sslrootcert=") {
            Some(file) => {
                rootcert = Some(file.to_string());
                false
            }
            None => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, rootcert)
}

/// The TLS client: ring, TLS 1.2 and 1.3, the server verified against `rootcert` or the
/// system's roots.
fn tls(url: &str, rootcert: Option<&str>) -> Result<MakeRustlsConnect, LedgerError> {
    let refused = |reason: String| LedgerError::Postgres {
        ledger: redact(url),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    match rootcert {
        Some(file) => {
            let pem =
                std::fs::read(file).map_err(|e| refused(format!("sslrootcert {file}: {e}")))?;
            for block in pem::parse_many(&pem)
                .map_err(|e| refused(format!("sslrootcert {file}: {e}")))?
                .into_iter()
                .filter(|b| b.tag() == "CERTIFICATE")
            {
                roots
                    .add(block.into_contents().into())
                    .map_err(|e| refused(format!("sslrootcert {file}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(refused(format!("sslrootcert {file} holds no certificate")));
            }
        }
        None => {
            // Roots that do not parse are skipped, as every rustls client does.
            let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| refused(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Whether `url` parses as the client reads it (nothing is connected).
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let (plain, _) = split_rootcert(url);
    plain
        .parse::<postgres::Config>()
        .map(drop)
        .map_err(|e| describe(&e))
}

/// Connects to the ledger database at `url`; a `read_only` session refuses every write.
pub(super) fn connect(url: &str, read_only: bool) -> Result<Client, LedgerError> {
    let (plain, rootcert) = split_rootcert(url);
    let mut config: postgres::Config = plain.parse().map_err(pg_error(url))?;
    if config.get_application_name().is_none() {
        config.application_name("fleet-station");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let mut client = config
        .connect(tls(url, rootcert.as_deref())?)
        .map_err(pg_error(url))?;
    if read_only {
        client
            .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            .map_err(pg_error(url))?;
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_password_never_shows() {
        assert_eq!(
            redact("postgres://station:s3cret@db.factory:5432/ledger?sslmode=require"),
            "postgres://station:***@db.factory:5432/ledger?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://station@db/ledger?password=s3cret&sslmode=disable"),
            "postgresql://station@db/ledger?password=***&sslmode=disable"
        );
        assert_eq!(
            redact("postgres:///ledger?host=/tmp/pg"),
            "postgres:///ledger?host=/tmp/pg"
        );
    }

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        assert_eq!(
            split_rootcert("postgres://h/db?sslmode=require&sslrootcert=/etc/ca.pem"),
            (
                "postgres://h/db?sslmode=require".to_string(),
                Some("/etc/ca.pem".into())
            )
        );
        assert_eq!(
            split_rootcert("postgres://h/db?sslrootcert=/ca.pem"),
            ("postgres://h/db".to_string(), Some("/ca.pem".into()))
        );
        assert_eq!(
            split_rootcert("postgres://h/db"),
            ("postgres://h/db".to_string(), None)
        );
    }

    #[test]
    fn a_bad_url_or_root_file_is_a_clear_error() {
        let err = connect("postgres://h/db?sslmode=verify-everything", false)
            .err()
            .expect("refused");
        assert!(
            matches!(&err, LedgerError::Postgres { reason, .. } if reason.contains("sslmode")),
            "{err:?}"
        );
        let missing = "/nonexistent/ca.pem";
        assert!(!Path::new(missing).exists());
        let err = connect(
            &format!("postgres://h/db?sslmode=require&sslrootcert={missing}"),
            false,
        )
        .err()
        .expect("refused");
        assert!(
            matches!(&err, LedgerError::Postgres { reason, .. } if reason.contains(missing)),
            "{err:?}"
        );
    }
}
