//! Logging set-up. Logs go to stderr, so stdout stays clean for command
//! output (`tail` prints JSON lines there). `[log] format = "json"` gives one
//! JSON object per line for log shippers.

pub mod http;
pub mod metrics;
pub mod recent;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Default log filter when neither `--log-level`, `WALSHIFT_LOG` nor `[log] level` is set.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Installs the global subscriber; `filter` is an `EnvFilter` directive.
/// An invalid directive falls back to the default and says so.
pub fn init(filter: Option<&str>, format: LogFormat) {
    let directive = filter.unwrap_or(DEFAULT_LOG_FILTER);
    let (env_filter, bad) = match EnvFilter::try_new(directive) {
        Ok(f) => (f, false),
        Err(_) => (EnvFilter::new(DEFAULT_LOG_FILTER), true),
    };
    let builder =
        tracing_subscriber::fmt().with_env_filter(env_filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => {
            builder.with_ansi(std::io::stderr().is_terminal()).with_target(false).try_init()
        }
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    if bad {
        tracing::warn!(filter = directive, "invalid log filter, using {DEFAULT_LOG_FILTER}");
    }
}
