//! Redis: the published decision (`<prefix>traffic`, a key and a channel of
//! the same name) and the controller's lease (`<prefix>lease`).
//!
//! Every write is one Lua script, so it is atomic on the server:
//!
//! * **publish** checks that the caller still holds the lease (its exact
//!   value, which carries the fencing token) and that the new version is
//!   greater than the stored one, then `SET`s the key and `PUBLISH`es the
//!   same JSON. A deposed or stale writer is refused; a reader sees the old
//!   value or the new one, never a mix.
//! * **acquire** takes the lease if it is free (`SET NX PX`), with a
//!   fencing token from `INCR <prefix>lease:token`.
//! * **renew** extends the lease if the caller holds it, and re-takes it if
//!   the key vanished (a Redis restart without persistence); it never takes
//!   a lease somebody else holds.
//! * **release** deletes the lease only if the caller holds it.
//!
//! The connection is a `redis` connection manager: it reconnects in the
//! background after an error; callers retry on their own schedule.
//!
//! # TLS and credentials
//!
//! `rediss://` connects with rustls (ring), verifying the server's
//! certificate against `[redis] tls_ca_file` (or the system's trust store
//! without it) and the URL's host name; `#insecure` is refused by the
//! config. A client certificate (`tls_cert_file`, `tls_key_file`) is sent
//! when configured. The ACL user and password come from the URL
//! (`rediss://user:password@host:port/db`) and never reach a message: errors
//! are described from their kind (TLS verification, authentication, ACL)
//! plus the server's own text, which names no credential.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, ClientTlsConfig, Script, TlsCertificates};

use crate::config::RedisSettings;

/// Per-command timeout: a Redis that does not answer counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connection timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const PUBLISH: &str = r"
local lease = redis.call('GET', KEYS[2])
if lease ~= ARGV[1] then
  return {-1, lease or ''}
end
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' and tonumber(doc['version']) ~= nil
     and tonumber(doc['version']) >= tonumber(ARGV[2]) then
    return {-2, tostring(doc['version'])}
  end
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('PUBLISH', KEYS[1], ARGV[3])
return {1, ''}
";

const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder then
  return {0, holder}
end
local token = redis.call('INCR', KEYS[2])
local value = token .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, value}
";

const RENEW: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, ''}
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, ''}
end
return {0, holder}
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {1, ''}
end
return {0, ''}
";

/// Errors talking to Redis (the text never includes the URL's password).
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL did not parse.
    #[error("redis.url: {0}")]
    Url(String),
    /// A `[redis] tls_*` file could not be read or parsed.
    #[error("{key}: cannot use {}: {detail}", path.display())]
    TlsFile {
        /// The config key (`redis.tls_ca_file`, ...).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Unreachable, timed out, refused the TLS handshake or the
    /// credentials, or an error reply.
    #[error("redis: {0}")]
    Command(String),
}

impl RedisError {
    fn command(e: &redis::RedisError) -> RedisError {
        RedisError::Command(describe(e))
    }
}

/// A Redis error as an operator reads it: what failed and what to check.
/// Built from the error's kind, code and the server's text (which never
/// echoes a password), not from the URL.
pub fn describe(e: &redis::RedisError) -> String {
    if let Some(tls) = rustls_error(e) {
        return format!(
            "TLS handshake failed: {tls} (the server's certificate must chain to \
             redis.tls_ca_file, or to the system's trust store without it, and name the host \
             of redis.url)"
        );
    }
    if e.kind() == redis::ErrorKind::AuthenticationFailed || e.code() == Some("WRONGPASS") {
        let detail = e.detail().unwrap_or("the server refused the credentials");
        return format!(
            "authentication failed: {detail} (check the user and password in redis.url)"
        );
    }
    if e.code() == Some("NOPERM") {
        return format!(
            "{e} (the ACL user of redis.url lacks a command, key or channel walshift needs: \
             see docs/security.md)"
        );
    }
    if e.code() == Some("NOAUTH") {
        return format!("{e} (the server needs a user and password in redis.url)");
    }
    e.to_string()
}

/// The rustls error behind `e`, if the TLS handshake failed. The redis
/// crate keeps the cause as an `Arc<dyn Error>` around the `io::Error` that
/// tokio-rustls wraps the rustls error in (and `io::Error::source` skips
/// it), so each layer is unwrapped by type.
fn rustls_error(e: &redis::RedisError) -> Option<&rustls::Error> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    fn unwrap<'a>(cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.get_ref().and_then(|inner| unwrap(inner));
        }
        if let Some(shared) = cause.downcast_ref::<Shared>() {
            return unwrap(shared.as_ref());
        }
        None
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(tls) = unwrap(cause) {
            return Some(tls);
        }
        source = cause.source();
    }
    None
}

/// The result of taking the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This instance holds it; the value (`<token>:<holder>`) fences its
    /// writes.
    Held(String),
    /// Another instance holds it (its value).
    Taken(String),
}

/// The result of renewing the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    /// Still held.
    Held,
    /// The key had vanished (Redis restarted empty) and was taken again.
    Retaken,
    /// Somebody else holds it now (its value).
    Lost(String),
}

/// The result of publishing a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Stored and published.
    Done,
    /// The caller does not hold the lease (the holder's value, if any).
    NotLeader(String),
    /// Redis holds this version or a newer one.
    Stale(i64),
}

/// Redis access for one migration.
#[derive(Clone)]
pub struct TrafficRedis {
    conn: ConnectionManager,
    traffic_key: String,
    lease_key: String,
    token_key: String,
}

impl std::fmt::Debug for TrafficRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficRedis").field("traffic_key", &self.traffic_key).finish()
    }
}

/// Opens a client for `[redis]` (no connection yet): the URL, and for
/// `rediss://` the CA and client certificate files (read now, so a missing
/// file is reported before anything connects).
pub fn client(settings: &RedisSettings) -> Result<redis::Client, RedisError> {
    let Some(url) = &settings.url else {
        return Err(RedisError::Url("not set".into()));
    };
    let url = url.expose().trim();
    // The redis crate's parse errors do not echo the URL.
    let invalid = |e: redis::RedisError| {
        RedisError::Url(format!("invalid Redis URL ({:?}: {})", e.kind(), describe(&e)))
    };
    if !url.starts_with("rediss://") {
        return redis::Client::open(url).map_err(invalid);
    }
    let root_cert = match &settings.tls_ca_file {
        Some(path) => Some(read_pem("redis.tls_ca_file", path, Pem::Certificates)?),
        None => None,
    };
    let client_tls = match &settings.tls_client {
        Some((cert, key)) => Some(ClientTlsConfig {
            client_cert: read_pem("redis.tls_cert_file", cert, Pem::Certificates)?,
            client_key: read_pem("redis.tls_key_file", key, Pem::PrivateKey)?,
        }),
        None => None,
    };
    redis::Client::build_with_tls(url, TlsCertificates { client_tls, root_cert }).map_err(invalid)
}

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    /// One or more certificates.
    Certificates,
    /// A private key.
    PrivateKey,
}

/// Reads a PEM file and checks that it holds what `want` says, so a bad
/// file is reported with its key before anything connects.
fn read_pem(key: &'static str, path: &Path, want: Pem) -> Result<Vec<u8>, RedisError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |detail: String| RedisError::TlsFile { key, path: path.to_owned(), detail };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    match want {
        Pem::Certificates => {
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("not a PEM certificate file ({e})")))?;
            if certs.is_empty() {
                return Err(bad("no certificate in it (expected PEM)".into()));
            }
        }
        Pem::PrivateKey => {
            PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| bad(format!("not a PEM private key ({e})")))?;
        }
    }
    Ok(bytes)
}

impl TrafficRedis {
    /// Connects lazily (the first command connects; an unreachable Redis is
    /// an error of that command, not of this call).
    pub fn new(settings: &RedisSettings) -> Result<TrafficRedis, RedisError> {
        let key_prefix = settings.key_prefix.as_str();
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = client(settings)?
            .get_connection_manager_lazy(config)
            .map_err(|e| RedisError::command(&e))?;
        Ok(TrafficRedis {
            conn,
            traffic_key: format!("{key_prefix}traffic"),
            lease_key: format!("{key_prefix}lease"),
            token_key: format!("{key_prefix}lease:token"),
        })
    }

    /// The key (and channel) of the decision.
    pub fn traffic_key(&self) -> &str {
        &self.traffic_key
    }

    /// Takes the lease for `holder` if it is free.
    pub async fn acquire(&self, holder: &str, ttl: Duration) -> Result<Acquired, RedisError> {
        let mut conn = self.conn.clone();
        let (code, value): (i64, String) = Script::new(ACQUIRE)
            .key(&self.lease_key)
            .key(&self.token_key)
            .arg(holder)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RedisError::command(&e))?;
        Ok(if code == 1 { Acquired::Held(value) } else { Acquired::Taken(value) })
    }

    /// Renews the lease held as `value`.
    pub async fn renew(&self, value: &str, ttl: Duration) -> Result<Renewed, RedisError> {
        let mut conn = self.conn.clone();
        let (code, holder): (i64, String) = Script::new(RENEW)
            .key(&self.lease_key)
            .arg(value)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RedisError::command(&e))?;
        Ok(match code {
            1 => Renewed::Held,
            2 => Renewed::Retaken,
            _ => Renewed::Lost(holder),
        })
    }

    /// Gives the lease up (if still held as `value`).
    pub async fn release(&self, value: &str) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let _: (i64, String) = Script::new(RELEASE)
            .key(&self.lease_key)
            .arg(value)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RedisError::command(&e))?;
        Ok(())
    }

    /// The lease's current value, if any.
    pub async fn lease_holder(&self) -> Result<Option<String>, RedisError> {
        let mut conn = self.conn.clone();
        conn.get(&self.lease_key).await.map_err(|e| RedisError::command(&e))
    }

    /// Stores and publishes `json` as `version`, fenced by the lease `value`.
    pub async fn publish(
        &self,
        lease: &str,
        version: i64,
        json: &str,
    ) -> Result<Published, RedisError> {
        let mut conn = self.conn.clone();
        let (code, detail): (i64, String) = Script::new(PUBLISH)
            .key(&self.traffic_key)
            .key(&self.lease_key)
            .arg(lease)
            .arg(version)
            .arg(json)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RedisError::command(&e))?;
        Ok(match code {
            1 => Published::Done,
            -2 => Published::Stale(detail.parse().unwrap_or(i64::MAX)),
            _ => Published::NotLeader(detail),
        })
    }

    /// The published decision's text, if the key exists.
    pub async fn current(&self) -> Result<Option<String>, RedisError> {
        let mut conn = self.conn.clone();
        conn.get(&self.traffic_key).await.map_err(|e| RedisError::command(&e))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::secret::Secret;

    fn settings(url: &str, ca: Option<&Path>) -> RedisSettings {
        RedisSettings {
            url: Some(Secret::new(url)),
            key_prefix: "p:".into(),
            tls_ca_file: ca.map(Path::to_path_buf),
            tls_client: None,
        }
    }

    #[test]
    fn tls_files_are_checked_before_connecting_and_errors_hide_the_password() {
        let url = "rediss://walshift:hunter2@localhost:6380/0";
        // The system's trust store when no CA is given: no connection yet.
        assert!(client(&settings(url, None)).is_ok());
        let missing = client(&settings(url, Some(Path::new("/nonexistent/ca.pem")))).unwrap_err();
        let text = missing.to_string();
        assert!(text.starts_with("redis.tls_ca_file: cannot use /nonexistent/ca.pem: "), "{text}");
        let dir = std::env::temp_dir().join(format!("walshift-redis-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "hunter2 is not a certificate").unwrap();
        let text = client(&settings(url, Some(&not_pem))).unwrap_err().to_string();
        assert!(text.contains("no certificate in it (expected PEM)"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        std::fs::remove_dir_all(&dir).ok();
        let text = client(&settings("redis://:hunter2@/x", None)).unwrap_err().to_string();
        assert!(text.starts_with("redis.url: invalid Redis URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
