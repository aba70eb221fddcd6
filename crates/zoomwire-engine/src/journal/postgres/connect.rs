//! Connecting to PostgreSQL: the database URL (a secret: it may hold a
//! password), TLS, and the connection pool.
//!
//! The URL is libpq's: `postgres://user:password@host:5432/database`, with
//! `sslmode` `disable`, `prefer` (the default: TLS when the server offers
//! it) or `require`. TLS always verifies the server's certificate and name,
//! against the Mozilla roots and the PEM file named by `sslrootcert` (as
//! libpq reads it), so libpq's `verify-ca` and `verify-full` mean `require`
//! here. Nothing here prints the URL: messages name the server as
//! `host:port/database`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long to wait for a connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A checked database URL, ready to connect with.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseTarget {
    config: tokio_postgres::Config,
    ca_file: Option<PathBuf>,
    shown: String,
}

impl std::fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseTarget")
            .field("server", &self.shown)
            .finish_non_exhaustive()
    }
}

impl DatabaseTarget {
    /// Parses `ZOOMWIRE_DATABASE_URL`. The error never repeats the text.
    pub fn parse(url: &SecretString) -> Result<DatabaseTarget, String> {
        let text = url.expose_secret().trim();
        let mut parsed = url::Url::parse(text).map_err(|e| {
            format!(
                "not a URL ({e}), expected one such as postgres://user:password@host:5432/zoomwire"
            )
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "URL scheme `{}` is not supported, expected `postgres` or `postgresql`",
                parsed.scheme()
            ));
        }
        let mut ca_file = None;
        let mut kept = Vec::new();
        for (name, value) in parsed.query_pairs() {
            match (name.as_ref(), value.as_ref()) {
                ("sslrootcert", path) => ca_file = Some(PathBuf::from(path)),
                // Verification is always on: verify-ca and verify-full are require.
                ("sslmode", "verify-ca" | "verify-full") => {
                    kept.push((name.to_string(), "require".to_string()))
                }
                _ => kept.push((name.to_string(), value.to_string())),
            }
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        let mut config = tokio_postgres::Config::from_str(parsed.as_str())
            .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
        if config.get_hosts().is_empty() {
            return Err("the URL names no host".into());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("zoomwire");
        let shown = describe(&config);
        Ok(DatabaseTarget {
            config,
            ca_file,
            shown,
        })
    }

    /// The server as messages name it: `host:port/database`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A pool of at most `size` connections, TLS as the URL asks.
    pub(crate) fn pool(&self, size: usize) -> Result<Pool, String> {
        let tls = tls_connector(self.ca_file.as_deref())?;
        let manager = Manager::from_config(
            self.config.clone(),
            tls,
            ManagerConfig {
                // A closed connection (a server restart) is dropped, not reused.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(
                self.config
                    .get_connect_timeout()
                    .copied()
                    .unwrap_or(CONNECT_TIMEOUT),
            ))
            .build()
            .map_err(|e| format!("cannot build the connection pool: {e}"))
    }
}

/// `host:port/database`, with no user, password or options.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{database}")
}

/// rustls on the aws-lc-rs provider (as every TLS client of zoomwire), with
/// the Mozilla roots and the extra roots of `ca_file`.
fn tls_connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
        let mut added = 0;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate = certificate
                .map_err(|e| format!("sslrootcert {} is not PEM: {e}", path.display()))?;
            roots
                .add(certificate)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "sslrootcert {} holds no certificate",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DatabaseTarget, String> {
        DatabaseTarget::parse(&SecretString::from(text))
    }

    #[test]
    fn a_url_is_shown_without_its_user_or_password() {
        let target =
            parse("postgres://zoom:hunter2@db.example.com:6543/wire?sslmode=require").unwrap();
        assert_eq!(target.shown(), "db.example.com:6543/wire");
        assert!(!format!("{target:?}").contains("hunter2"));
        assert_eq!(
            target.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn libpq_names_for_verification_and_roots_are_understood() {
        let target =
            parse("postgresql://u@h/d?sslmode=verify-full&sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!(
            target.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(target.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_them() {
        for (text, expected) in [
            ("mysql://u:secretpw@h/d", "scheme `mysql`"),
            ("host=h password=secretpw", "not a URL"),
            (
                "postgres://u:secretpw@h/d?sslmode=sometimes",
                "not a PostgreSQL URL",
            ),
            (
                "postgres://u:secretpw@h/d?nonsense=1",
                "not a PostgreSQL URL",
            ),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("secretpw"), "{error}");
        }
    }

    #[test]
    fn a_missing_root_file_is_named() {
        let error = tls_connector(Some(Path::new("/nonexistent/ca.pem")))
            .err()
            .unwrap();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}
