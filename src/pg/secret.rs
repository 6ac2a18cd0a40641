//! A string that must never reach a log line, an error message or a `Debug`
//! dump: passwords and connection URLs that may carry one.
//!
//! `Debug` and `Display` both print `***`; the only way to the text is the
//! explicitly named [`Secret::expose`], so a leak is visible in review. The
//! type deserializes transparently from a plain string and deliberately does
//! not implement `Serialize`, so a config dump cannot round-trip a secret by
//! accident.

use std::fmt;

use serde::Deserialize;

/// What `Debug` and `Display` print instead of the value.
pub const REDACTED: &str = "***";

/// A secret string, redacted in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret text. Call only where the value is handed to the thing
    /// that needs it (a connection, a parser), never to format a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(***)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn deserializes_transparently() {
        #[derive(Debug, Deserialize)]
        struct Holder {
            password: Secret,
        }
        let holder: Holder = serde_json::from_str(r#"{"password":"s3cr3t"}"#).unwrap();
        assert_eq!(holder.password.expose(), "s3cr3t");
        assert!(!format!("{holder:?}").contains("s3cr3t"));
    }

    #[test]
    fn conversions() {
        assert_eq!(Secret::from("a"), Secret::new("a"));
        assert_eq!(Secret::from(String::from("b")).expose(), "b");
    }
}
