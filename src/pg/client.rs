//! Regular (non-replication) SQL connections through tokio-postgres.
//!
//! Every session is tagged with a role-specific `application_name`
//! (`walshift:setup`, `walshift:tail`, ...) so a DBA can find it in
//! `pg_stat_activity`, and gets a `statement_timeout` and `lock_timeout`
//! suited to its role so it can never queue behind (or in front of) the
//! application's locks indefinitely.

use std::time::Duration;

use tokio_postgres::Client;

use crate::pg::conninfo::ConnInfo;
use crate::pg::watchdog::ReplyWatchdog;
use crate::replication::wire::{self, DEFAULT_CONNECT_TIMEOUT, WireError};

/// Without `receive_timeout_ms`: how long a connection may owe a reply.
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors opening a regular SQL connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket or TLS could not be set up.
    #[error(transparent)]
    Socket(#[from] WireError),
    /// Connecting, authenticating or the session set-up failed.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The redacted connection string.
        endpoint: String,
        /// The cause.
        source: tokio_postgres::Error,
    },
}

/// Limits applied to a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// `statement_timeout`.
    pub statement_timeout: Duration,
    /// `lock_timeout`.
    pub lock_timeout: Duration,
}

impl SessionLimits {
    /// For catalog checks and DDL of walshift's own objects: short waits.
    pub const ADMIN: SessionLimits = SessionLimits {
        statement_timeout: Duration::from_secs(60),
        lock_timeout: Duration::from_secs(5),
    };
}

/// Opens a connection for `role` (appended to `walshift:` in
/// `application_name`) and applies `limits`.
///
/// walshift opens the socket and negotiates TLS itself (the code the
/// replication connection uses) and hands tokio-postgres the decrypted
/// stream behind a [`ReplyWatchdog`], so a server that stops answering
/// without closing the socket (a half-open TCP connection) fails the session
/// after `receive_timeout` instead of hanging it forever.
pub async fn connect(
    info: &ConnInfo,
    role: &str,
    limits: SessionLimits,
) -> Result<Client, ConnectError> {
    let info = info.with_application_name(&format!("walshift:{role}"));
    let endpoint = wire::endpoint(&info);
    let timeout = info.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let receive_timeout = info.receive_timeout.unwrap_or(DEFAULT_RECEIVE_TIMEOUT);
    let connecting = async {
        let stream = wire::open_stream(&info, &endpoint).await?;
        let mut config = info.to_tokio_postgres();
        // TLS is already negotiated on `stream`.
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        config
            .connect_raw(ReplyWatchdog::new(stream, receive_timeout), tokio_postgres::NoTls)
            .await
            .map_err(|source| ConnectError::Connect { endpoint: info.redacted(), source })
    };
    let (client, connection) = match tokio::time::timeout(timeout, connecting).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(WireError::ConnectTimeout { endpoint: info.redacted(), timeout }.into());
        }
    };
    crate::runtime::tasks::spawn_named("pg-connection", async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %error, "sql connection ended");
        }
    });
    // A session of ours that the network cut off (see ReplyWatchdog) may
    // sit in an open transaction on the server, holding locks the next
    // session needs, until TCP gives up (hours): the server ends it after
    // twice the receive timeout instead. walshift never leaves a
    // transaction idle that long on purpose (the fence sets its own limit).
    let set = format!(
        "set statement_timeout = {}; set lock_timeout = {}; \
         set idle_in_transaction_session_timeout = {}",
        limits.statement_timeout.as_millis(),
        limits.lock_timeout.as_millis(),
        (receive_timeout * 2).as_millis()
    );
    client
        .batch_execute(&set)
        .await
        .map_err(|source| ConnectError::Connect { endpoint: info.redacted(), source })?;
    Ok(client)
}

impl SessionLimits {
    /// For the applier: statements write at most one batch, and a lock held
    /// on a shadow table by someone else is waited out, then retried.
    pub const APPLY: SessionLimits = SessionLimits {
        statement_timeout: Duration::from_secs(600),
        lock_timeout: Duration::from_secs(30),
    };
}

/// How a failed SQL statement should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlErrorKind {
    /// Retrying later can succeed: the connection broke, the server is
    /// shutting down or starting, a serialization failure or deadlock, a
    /// lock or statement timeout.
    Transient,
    /// The data violates a constraint (class 23, or `21000` when one
    /// statement would touch a row twice).
    Constraint,
    /// Anything else: a bad mapping, a missing object, a permission.
    Permanent,
}

/// Classifies a tokio-postgres error by SQLSTATE (never by message text).
pub fn classify(err: &tokio_postgres::Error) -> SqlErrorKind {
    let Some(db) = err.as_db_error() else {
        // No server error: I/O, a closed connection, a protocol problem.
        return SqlErrorKind::Transient;
    };
    let code = db.code().code();
    match code {
        "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "53300" | "53400" => {
            SqlErrorKind::Transient
        }
        "21000" => SqlErrorKind::Constraint,
        _ if code.starts_with("08") => SqlErrorKind::Transient,
        _ if code.starts_with("23") => SqlErrorKind::Constraint,
        _ => SqlErrorKind::Permanent,
    }
}

/// The server's message (with detail) when there is one, else the error's
/// own text: for messages that name the operation themselves.
pub fn server_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        None => crate::error::display_chain(err),
    }
}
