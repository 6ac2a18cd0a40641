//! Reloads the config file while `walshift run` runs: on SIGHUP, and when
//! the file changes on disk (checked every second). Only the
//! [`Reloadable`] settings take effect; a file that does not parse or
//! validate, or that changes a key fixed while running, is rejected with a
//! log line and `walshift_config_reload_rejected{key}`, and the settings in
//! force stay.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::config::{Config, ConfigError, Reloadable, fixed_keys_changed};
use crate::runtime::shutdown::Shutdown;
use crate::telemetry::metrics as m;

/// How often the file's modification time and size are checked.
const POLL: Duration = Duration::from_secs(1);

/// The outcome of the last reload, for `status`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReloadReport {
    /// Reloads that took effect.
    pub applied: u64,
    /// Reloads rejected.
    pub rejected: u64,
    /// Why the last one was rejected (cleared by the next applied one).
    pub last_error: Option<String>,
}

/// Watches `path` and sends each accepted [`Reloadable`] on `tx`.
pub struct Reloader {
    path: PathBuf,
    text: String,
    rejected_key: Option<String>,
    tx: watch::Sender<Arc<Reloadable>>,
    report: Arc<Mutex<ReloadReport>>,
}

impl Reloader {
    /// Starts from the file's text as loaded at start.
    pub fn new(
        path: PathBuf,
        text: String,
        tx: watch::Sender<Arc<Reloadable>>,
        report: Arc<Mutex<ReloadReport>>,
    ) -> Reloader {
        Reloader { path, text, rejected_key: None, tx, report }
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(hup) => Some(hup),
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP; the config is reloaded when the file changes");
                None
            }
        };
        let mut seen = file_stamp(&self.path);
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                _ = poll.tick() => false,
                () = shutdown.wait() => return,
            };
            let stamp = file_stamp(&self.path);
            if !forced && stamp == seen {
                continue;
            }
            seen = stamp;
            self.reload(forced);
        }
    }

    /// Reads the file once and applies or rejects it.
    pub fn reload(&mut self, forced: bool) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                return self
                    .reject(None, format!("cannot read config file {}: {e}", self.path.display()));
            }
        };
        if text == self.text && self.rejected_key.is_none() {
            if forced {
                metrics::counter!(m::CONFIG_RELOADS, m::LABEL_RESULT => "unchanged").increment(1);
                tracing::info!(file = %self.path.display(), "config reloaded: nothing changed");
            }
            return;
        }
        let validated = Config::from_toml_str(&text, &self.path, &|name| std::env::var(name).ok())
            .and_then(Config::validate);
        let cfg = match validated {
            Ok(cfg) => cfg,
            Err(e) => {
                let key = error_key(&e);
                return self.reject(key, crate::error::display_chain(&e));
            }
        };
        match fixed_keys_changed(&self.text, &text) {
            Ok(changed) if !changed.is_empty() => {
                let key = changed.first().cloned();
                return self.reject(
                    key,
                    format!(
                        "{} changed in {}: these cannot change while walshift run runs (only \
                         [traffic] and [cutover] are reloaded); restart walshift run to apply them",
                        changed.join(", "),
                        self.path.display()
                    ),
                );
            }
            Ok(_) => {}
            Err(e) => return self.reject(None, e),
        }
        let next = Arc::new(cfg.reloadable());
        let before = Arc::clone(&self.tx.borrow());
        self.text = text;
        if let Some(key) = self.rejected_key.take() {
            metrics::gauge!(m::CONFIG_RELOAD_REJECTED, m::LABEL_KEY => key).set(0.0);
        }
        metrics::counter!(m::CONFIG_RELOADS, m::LABEL_RESULT => "applied").increment(1);
        if let Ok(mut r) = self.report.lock() {
            r.applied += 1;
            r.last_error = None;
        }
        tracing::info!(
            file = %self.path.display(),
            read_new_percent = next.traffic.read_new_percent,
            stages = ?next.traffic.stages,
            on_violation = next.traffic.on_violation.as_str(),
            changed = *next != *before,
            "config reloaded"
        );
        self.tx.send_replace(next);
    }

    fn reject(&mut self, key: Option<String>, problem: String) {
        let key = key.unwrap_or_else(|| "file".to_owned());
        if let Some(old) = self.rejected_key.replace(key.clone()) {
            metrics::gauge!(m::CONFIG_RELOAD_REJECTED, m::LABEL_KEY => old).set(0.0);
        }
        metrics::gauge!(m::CONFIG_RELOAD_REJECTED, m::LABEL_KEY => key).set(1.0);
        metrics::counter!(m::CONFIG_RELOADS, m::LABEL_RESULT => "rejected").increment(1);
        if let Ok(mut r) = self.report.lock() {
            r.rejected += 1;
            r.last_error = Some(problem.clone());
        }
        tracing::error!(problem = %problem, "config reload rejected; the previous settings stay in force");
    }
}

/// The dotted key a config error is about, if it names one.
fn error_key(e: &ConfigError) -> Option<String> {
    match e {
        ConfigError::Parse { key, .. } => key.clone(),
        ConfigError::Interpolation { key, .. } => Some(key.clone()),
        ConfigError::Invalid { field, .. }
        | ConfigError::ConnInfo { field, .. }
        | ConfigError::TableName { field, .. } => Some(field.clone()),
        ConfigError::LogLevel { .. } => Some("log.level".into()),
        ConfigError::Read { .. } => None,
    }
}

fn file_stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
