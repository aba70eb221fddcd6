//! Installing the global logger: JSON format builds, and a second install
//! is refused without panicking. In its own test binary because the logger
//! is process-wide.

use zoomwire_engine::logging::{LogFormat, LoggingError, init_logging};

#[test]
fn installs_once_and_refuses_a_second_logger() {
    init_logging(LogFormat::Json).expect("the first install succeeds");
    tracing::info!(check = "json", "logger installed");
    assert!(matches!(
        init_logging(LogFormat::Text),
        Err(LoggingError::AlreadyInstalled)
    ));
}
