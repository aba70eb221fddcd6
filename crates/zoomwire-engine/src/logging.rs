//! Process-wide logging through `tracing`: human-readable lines by default,
//! one JSON object per line with `ZOOMWIRE_LOG_FORMAT=json` (for log
//! shippers), filtered by `RUST_LOG` (default `info,zoomwire=info`).
//!
//! Logs go to standard error so that commands can keep standard output for
//! their results. No code puts a secret in a log field (types holding secrets
//! print `[redacted]`), and the writer scrubs every line by value through
//! [`Secrets::global`] besides, which also catches what libraries log. The
//! WebSocket libraries log each frame and the upgrade request (with its
//! `access_token`) at trace level: `tungstenite` and `tokio_tungstenite` are
//! capped at debug whatever `RUST_LOG` says.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::secrets::Secrets;

/// The filter used when `RUST_LOG` is unset or empty.
pub const DEFAULT_FILTER: &str = "info,zoomwire=info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "unknown log format `{text}`, expected `text` or `json`"
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid RUST_LOG filter: {0}")]
    Filter(String),
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

/// Installs the global subscriber. Call once, early in `main`; a second call
/// fails with [`LoggingError::AlreadyInstalled`] and changes nothing.
pub fn init_logging(format: LogFormat) -> Result<(), LoggingError> {
    init_node_logging(format, None)
}

/// [`init_logging`] for one node of several: every line names `node`
/// (a `node` field in JSON, a `node=` prefix in text).
pub fn init_node_logging(format: LogFormat, node: Option<&str>) -> Result<(), LoggingError> {
    let filter = filter_from(std::env::var("RUST_LOG").ok().as_deref())?;
    let caps = library_caps_within(filter.max_level_hint().unwrap_or(LevelFilter::TRACE));
    let lines = tracing_subscriber::fmt::layer().with_writer(ScrubbedStderr);
    let node = node.map(str::to_string);
    let lines = match format {
        LogFormat::Text => lines
            .event_format(WithNode {
                inner: tracing_subscriber::fmt::format(),
                node,
            })
            .boxed(),
        LogFormat::Json => lines
            .json()
            .event_format(WithNode {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
                node,
            })
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(caps)
        .with(lines)
        .try_init()
        .map_err(|_| LoggingError::AlreadyInstalled)
}

/// Libraries that log secrets or event content below debug, capped at debug.
pub fn library_caps() -> Targets {
    library_caps_within(LevelFilter::TRACE)
}

/// [`library_caps`] under a filter that lets nothing finer than `most`
/// through: the caps let no more through either, so that the two together
/// do not raise the level at which the `log` crate's records reach the
/// subscriber. Layered filters report the finer of their levels, and the
/// `log` bridge lets records through up to it: with the caps at trace,
/// every frame's trace records from `tungstenite` were built and handed
/// over only to be dropped.
fn library_caps_within(most: LevelFilter) -> Targets {
    let libraries = LevelFilter::DEBUG.min(most);
    Targets::new()
        .with_default(most)
        .with_target("tungstenite", libraries)
        .with_target("tokio_tungstenite", libraries)
}

/// Standard error, each line scrubbed of every registered secret.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScrubbedStderr;

impl<'a> MakeWriter<'a> for ScrubbedStderr {
    type Writer = Scrubbed<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Scrubbed(io::stderr())
    }
}

/// A writer that scrubs what passes through it. The log formatter writes
/// each line in one call, so a secret is never split between two writes.
pub struct Scrubbed<W>(pub W);

impl<W: Write> Write for Scrubbed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(&Secrets::global().scrub_bytes(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// An event format that adds the node's id to another's lines.
struct WithNode<F> {
    inner: F,
    node: Option<String>,
}

impl<S, N, F> FormatEvent<S, N> for WithNode<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let Some(node) = &self.node else {
            return self.inner.format_event(ctx, writer, event);
        };
        if writer.has_ansi_escapes() {
            write!(writer, "node={node} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            // JSON: the node is the first field.
            Some(rest) => {
                let name = serde_json::to_string(node).map_err(|_| fmt::Error)?;
                write!(writer, "{{\"node\":{name},{rest}")
            }
            None => write!(writer, "node={node} {line}"),
        }
    }
}

/// The filter for a `RUST_LOG` value, [`DEFAULT_FILTER`] when unset or blank.
pub fn filter_from(rust_log: Option<&str>) -> Result<EnvFilter, LoggingError> {
    let directives = match rust_log.map(str::trim) {
        Some(text) if !text.is_empty() => text,
        _ => DEFAULT_FILTER,
    };
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| LoggingError::Filter(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_formats() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(" Text ".parse::<LogFormat>(), Ok(LogFormat::Text));
        let error = "yaml".parse::<LogFormat>().unwrap_err();
        assert_eq!(
            error,
            "unknown log format `yaml`, expected `text` or `json`"
        );
        assert_eq!(LogFormat::default(), LogFormat::Text);
        assert_eq!(LogFormat::Json.to_string(), "json");
    }

    #[test]
    fn filter_defaults_when_rust_log_is_unset_or_blank() {
        assert_eq!(filter_from(None).unwrap().to_string(), "zoomwire=info,info");
        assert_eq!(
            filter_from(Some("  ")).unwrap().to_string(),
            "zoomwire=info,info"
        );
        assert_eq!(filter_from(Some("debug")).unwrap().to_string(), "debug");
    }

    #[test]
    fn caps_the_websocket_libraries_at_debug() {
        use tracing::Level;
        let caps = library_caps();
        assert!(!caps.would_enable("tungstenite::handshake::client", &Level::TRACE));
        assert!(caps.would_enable("tungstenite::handshake::client", &Level::DEBUG));
        assert!(!caps.would_enable("tokio_tungstenite", &Level::TRACE));
        assert!(caps.would_enable("zoomwire::zoom", &Level::TRACE));
    }

    #[test]
    fn the_caps_do_not_raise_the_level_records_are_let_through_at() {
        use tracing_subscriber::Registry;
        let level = |rust_log: Option<&str>| {
            let filter = filter_from(rust_log).unwrap();
            let caps = library_caps_within(filter.max_level_hint().unwrap_or(LevelFilter::TRACE));
            let subscriber = Registry::default().with(filter).with(caps);
            tracing::Subscriber::max_level_hint(&subscriber)
        };
        assert_eq!(level(None), Some(LevelFilter::INFO));
        assert_eq!(level(Some("warn")), Some(LevelFilter::WARN));
        assert_eq!(level(Some("trace")), Some(LevelFilter::TRACE));
        let caps = library_caps_within(LevelFilter::TRACE);
        assert!(!caps.would_enable("tungstenite", &tracing::Level::TRACE));
        let caps = library_caps_within(LevelFilter::INFO);
        assert!(!caps.would_enable("tungstenite", &tracing::Level::DEBUG));
        assert!(caps.would_enable("tungstenite", &tracing::Level::INFO));
    }

    #[test]
    fn the_writer_scrubs_registered_secrets() {
        Secrets::global().add("log-writer-test-secret").unwrap();
        let mut out = Scrubbed(Vec::new());
        let line = b"token=log-writer-test-secret ok\n";
        assert_eq!(out.write(line).unwrap(), line.len());
        assert_eq!(out.0, b"token=[redacted] ok\n");
    }

    #[test]
    fn rejects_an_invalid_filter() {
        assert!(matches!(
            filter_from(Some("zoomwire=loud")),
            Err(LoggingError::Filter(_))
        ));
    }
}
