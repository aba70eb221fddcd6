//! Process-wide logging through `tracing`: human-readable lines by default,
//! one JSON object per line with `ZOOMWIRE_LOG_FORMAT=json` (for log
//! shippers), filtered by `RUST_LOG` (default `info,zoomwire=info`).
//!
//! Logs go to standard error so that commands can keep standard output for
//! their results. Nothing here knows about secrets: the rule is that no code
//! ever puts one in a log field (types holding secrets print `[redacted]`).

use std::fmt;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let node = node.map(str::to_string);
    let installed = match format {
        LogFormat::Text => builder
            .event_format(WithNode {
                inner: tracing_subscriber::fmt::format(),
                node,
            })
            .try_init(),
        LogFormat::Json => builder
            .json()
            .event_format(WithNode {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
                node,
            })
            .try_init(),
    };
    installed.map_err(|_| LoggingError::AlreadyInstalled)
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
    fn rejects_an_invalid_filter() {
        assert!(matches!(
            filter_from(Some("zoomwire=loud")),
            Err(LoggingError::Filter(_))
        ));
    }
}
