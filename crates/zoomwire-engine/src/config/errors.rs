//! The errors settings report: one per missing or invalid setting (named by
//! its environment variable and its `zoomwire.yaml` key, with where the bad
//! value came from) or unreadable file, gathered so that one message lists
//! them all.

use std::fmt;

/// One missing or invalid setting, or an unreadable file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting's environment variable, when it has one.
    pub env: Option<String>,
    /// The setting's key in `zoomwire.yaml`, when it has one.
    pub yaml_key: Option<String>,
    /// Where the bad value came from (`the environment`, `.env line 3`,
    /// `zoomwire.yaml`), or for a file error the file and position.
    pub origin: Option<String>,
    pub message: String,
}

impl ConfigError {
    /// A problem with a whole file (`zoomwire.yaml:3:5`, `.env:4`).
    pub fn file(location: String, message: String) -> ConfigError {
        ConfigError {
            env: None,
            yaml_key: None,
            origin: Some(location),
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.env, &self.yaml_key) {
            (Some(env), Some(yaml)) => write!(f, "{env} / {yaml}: {}", self.message)?,
            (Some(name), None) | (None, Some(name)) => write!(f, "{name}: {}", self.message)?,
            (None, None) => {
                let location = self.origin.as_deref().unwrap_or("configuration");
                return write!(f, "{location}: {}", self.message);
            }
        }
        match &self.origin {
            Some(origin) => write!(f, " (from {origin})"),
            None => Ok(()),
        }
    }
}

/// Every problem found in one load, in the order settings are read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub(super) fn check(errors: Vec<ConfigError>) -> Result<(), ConfigErrors> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration:")?;
        for error in &self.0 {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}
