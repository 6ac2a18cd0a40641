//! libpq-compatible connection strings, parsed once into a [`ConnInfo`].
//!
//! Both forms libpq accepts
//! (<https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING>):
//!
//! - URLs: `postgres[ql]://[user[:password]@][host][:port][/dbname][?param=value&...]`,
//!   percent-decoded everywhere; `[::1]` for IPv6; a host that decodes to
//!   something starting with `/` (`%2Fvar%2Frun%2Fpostgresql`, or
//!   `?host=/var/run/postgresql`) is a unix-socket directory.
//! - key/value strings: `host=localhost port=5432 dbname='my db'`, with
//!   whitespace allowed around `=`, single-quoted values, and `\'` / `\\`
//!   escapes (in quoted and unquoted values alike).
//!
//! Only the keys walshift implements are accepted (see [`Key`]); any other
//! key is an error naming it, in libpq's words (`invalid connection option
//! "x"`, `invalid URI query parameter: "x"`), and a real libpq key that
//! walshift does not implement says so. One host only: `host=a,b` is
//! rejected. What is not given comes from the environment as with libpq
//! (`PGHOST`, `PGPORT`, …; empty values count as unset), then from libpq's
//! defaults.
//!
//! Differences from libpq, on purpose:
//! - the user name and password end at the *last* `@` of the authority, so an
//!   unencoded `@` or `:` in a password still parses (libpq stops at the
//!   first `@`);
//! - a query parameter's value may contain `=` (libpq wants `%3D`);
//! - the default host is `/var/run/postgresql` (Debian's socket directory)
//!   only if that directory exists, else `localhost`; the default user is
//!   `$USER` rather than the OS account name; `sslmode` defaults to
//!   `disable` for a unix-socket host (TLS is never used there);
//! - no `~/.pgpass`, no service files, no multiple hosts.
//!
//! Secrets: the password is a [`Secret`] from the moment it is parsed. No
//! error message echoes a password, a query-parameter value or a whole input
//! string; the only values echoed are those of non-secret options whose
//! position is unambiguous (`port`, `sslmode`, …). When a URL's port does not
//! parse and the URL looks like an unencoded `/`, `?` or `#` split the
//! password, the port text is not echoed either (it may be part of the
//! password).

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pg::secret::Secret;

/// Default port.
pub const DEFAULT_PORT: u16 = 5432;
/// Default host when that directory exists (Debian's unix-socket directory).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// Default host otherwise.
pub const DEFAULT_TCP_HOST: &str = "localhost";
/// Default user when neither the string, `PGUSER` nor `USER` gives one.
pub const DEFAULT_USER: &str = "postgres";
/// Postgres keeps `NAMEDATALEN - 1` bytes of `application_name`.
pub const MAX_APPLICATION_NAME_BYTES: usize = 63;
/// libpq treats a `connect_timeout` below two seconds as two seconds.
pub const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name or IP address (IPv6 without brackets).
    Tcp(String),
    /// A directory holding the server's unix socket (`.s.PGSQL.<port>`).
    Unix(PathBuf),
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first, TLS if the server insists (treated like `prefer`).
    Allow,
    /// TLS if the server offers it, plain otherwise.
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS, certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, trusted certificate whose name matches the host.
    VerifyFull,
}

impl SslMode {
    /// Every mode, in libpq's order.
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses the libpq spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == name)
    }

    /// Whether the connection must be encrypted.
    pub fn requires_tls(self) -> bool {
        matches!(self, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed, defaulted connection string. `Debug` and `Display` never show
/// the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Host name or unix-socket directory.
    pub host: Host,
    /// IP address to connect to instead of resolving `host` (which is then
    /// still used for TLS name checks).
    pub hostaddr: Option<IpAddr>,
    /// TCP port, or the unix socket's number.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, if any.
    pub password: Option<Secret>,
    /// Database name.
    pub dbname: String,
    /// TLS policy.
    pub ssl_mode: SslMode,
    /// CA certificate file (`sslrootcert`).
    pub ssl_root_cert: Option<PathBuf>,
    /// Client certificate file (`sslcert`).
    pub ssl_cert: Option<PathBuf>,
    /// Client private key file (`sslkey`).
    pub ssl_key: Option<PathBuf>,
    /// `application_name` to report to the server.
    pub application_name: Option<String>,
    /// Give up connecting after this long (`None`: wait indefinitely).
    pub connect_timeout: Option<Duration>,
    /// Treat the connection as dead when the server owes a reply and sends
    /// nothing for this long (`None`: wait indefinitely). Not a libpq key:
    /// set from walshift's config (`receive_timeout_ms`).
    pub receive_timeout: Option<Duration>,
    /// Command-line options sent to the server (`-c name=value …`), as given.
    pub options: Option<String>,
}

/// The connection options walshift implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `host`
    Host,
    /// `hostaddr`
    Hostaddr,
    /// `port`
    Port,
    /// `user`
    User,
    /// `password`
    Password,
    /// `dbname`
    Dbname,
    /// `sslmode`
    SslMode,
    /// `sslrootcert`
    SslRootCert,
    /// `sslcert`
    SslCert,
    /// `sslkey`
    SslKey,
    /// `application_name`
    ApplicationName,
    /// `connect_timeout`
    ConnectTimeout,
    /// `options`
    Options,
}

impl Key {
    const ALL: [Key; 13] = [
        Key::Host,
        Key::Hostaddr,
        Key::Port,
        Key::User,
        Key::Password,
        Key::Dbname,
        Key::SslMode,
        Key::SslRootCert,
        Key::SslCert,
        Key::SslKey,
        Key::ApplicationName,
        Key::ConnectTimeout,
        Key::Options,
    ];

    /// The libpq keyword.
    pub fn name(self) -> &'static str {
        match self {
            Key::Host => "host",
            Key::Hostaddr => "hostaddr",
            Key::Port => "port",
            Key::User => "user",
            Key::Password => "password",
            Key::Dbname => "dbname",
            Key::SslMode => "sslmode",
            Key::SslRootCert => "sslrootcert",
            Key::SslCert => "sslcert",
            Key::SslKey => "sslkey",
            Key::ApplicationName => "application_name",
            Key::ConnectTimeout => "connect_timeout",
            Key::Options => "options",
        }
    }

    /// The environment variable libpq falls back to.
    pub fn env_var(self) -> &'static str {
        match self {
            Key::Host => "PGHOST",
            Key::Hostaddr => "PGHOSTADDR",
            Key::Port => "PGPORT",
            Key::User => "PGUSER",
            Key::Password => "PGPASSWORD",
            Key::Dbname => "PGDATABASE",
            Key::SslMode => "PGSSLMODE",
            Key::SslRootCert => "PGSSLROOTCERT",
            Key::SslCert => "PGSSLCERT",
            Key::SslKey => "PGSSLKEY",
            Key::ApplicationName => "PGAPPNAME",
            Key::ConnectTimeout => "PGCONNECT_TIMEOUT",
            Key::Options => "PGOPTIONS",
        }
    }

    fn from_name(name: &str) -> Option<Key> {
        Self::ALL.into_iter().find(|key| key.name() == name)
    }
}

/// libpq keywords walshift knows but does not implement: rejected with a
/// clearer message than "invalid".
const UNSUPPORTED_LIBPQ_KEYS: &[&str] = &[
    "authtype",
    "channel_binding",
    "client_encoding",
    "fallback_application_name",
    "gssdelegation",
    "gssencmode",
    "gsslib",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "krbsrvname",
    "load_balance_hosts",
    "passfile",
    "replication",
    "require_auth",
    "requirepeer",
    "requiressl",
    "service",
    "ssl_max_protocol_version",
    "ssl_min_protocol_version",
    "sslcertmode",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslnegotiation",
    "sslpassword",
    "sslsni",
    "target_session_attrs",
    "tcp_user_timeout",
    "tty",
];

/// Where a value came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The URL form.
    Url,
    /// The key/value form.
    KeyValue,
    /// An environment variable.
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Url => f.write_str("in the URL"),
            Origin::KeyValue => f.write_str("in the connection string"),
            Origin::Env(var) => write!(f, "in environment variable {var}"),
        }
    }
}

/// A part of a URL, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlPart {
    /// Before `:` in the user info.
    User,
    /// After `:` in the user info.
    Password,
    /// Host.
    Host,
    /// Path.
    Dbname,
    /// A query parameter's name.
    ParamName,
    /// A query parameter's value.
    ParamValue,
}

impl fmt::Display for UrlPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlPart::User => "user name",
            UrlPart::Password => "password",
            UrlPart::Host => "host",
            UrlPart::Dbname => "database name",
            UrlPart::ParamName => "query parameter name",
            UrlPart::ParamValue => "query parameter value",
        })
    }
}

/// Why a connection string was rejected. Never contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// An unknown keyword in the key/value form.
    #[error("invalid connection option \"{key}\"")]
    UnknownOption {
        /// The keyword.
        key: String,
    },
    /// An unknown query parameter in the URL form.
    #[error("invalid URI query parameter: \"{key}\"")]
    UnknownQueryParameter {
        /// The parameter name.
        key: String,
    },
    /// A libpq keyword walshift does not implement.
    #[error("connection option \"{key}\" {origin} is not supported by walshift")]
    Unsupported {
        /// The keyword.
        key: String,
        /// Where it was given.
        origin: Origin,
    },
    /// `key value` without `=`.
    #[error("missing \"=\" after \"{key}\" in connection info string")]
    MissingEquals {
        /// The word that should have been followed by `=`.
        key: String,
    },
    /// `key='value` without the closing quote.
    #[error("unterminated quoted string in connection info string (value of \"{key}\")")]
    UnterminatedQuote {
        /// The keyword whose value is unterminated.
        key: String,
    },
    /// `?name` without `=value`.
    #[error("missing key/value separator \"=\" in URI query parameter: \"{key}\"")]
    QueryMissingEquals {
        /// The parameter name.
        key: String,
    },
    /// `mysql://…`.
    #[error("unsupported URL scheme \"{scheme}\"; expected postgres:// or postgresql://")]
    UnsupportedScheme {
        /// The scheme, without `://`.
        scheme: String,
    },
    /// `%zz`, `%00`, or decoded bytes that are not UTF-8.
    #[error("invalid percent-encoding in the {part} of the URL")]
    PercentEncoding {
        /// Which part.
        part: UrlPart,
    },
    /// `[::1` without `]`.
    #[error("missing \"]\" after the IPv6 address in the URL")]
    UnterminatedIpv6,
    /// `[::1]x`.
    #[error("unexpected character {ch:?} after the IPv6 address in the URL at byte {offset}")]
    AfterIpv6 {
        /// The character.
        ch: char,
        /// Its byte offset in the input.
        offset: usize,
    },
    /// `host=a,b`.
    #[error("multiple hosts {origin} are not supported; give a single host")]
    MultipleHosts {
        /// Where.
        origin: Origin,
    },
    /// Not a number in 1..=65535.
    #[error("invalid port number: \"{value}\" {origin}")]
    InvalidPort {
        /// The text given.
        value: String,
        /// Where.
        origin: Origin,
    },
    /// The URL's port did not parse and the URL looks like an unencoded
    /// character split the password, so the port text is not echoed.
    #[error(
        "invalid port number in the URL; if the password contains '/', '?', '#' or '@', percent-encode it (%2F, %3F, %23, %40)"
    )]
    InvalidUrlPortAmbiguous,
    /// Not one of the six modes.
    #[error(
        "invalid sslmode value: \"{value}\" {origin}; expected disable, allow, prefer, require, verify-ca or verify-full"
    )]
    InvalidSslMode {
        /// The text given.
        value: String,
        /// Where.
        origin: Origin,
    },
    /// Not an IP address.
    #[error("invalid hostaddr \"{value}\" {origin}; expected an IPv4 or IPv6 address")]
    InvalidHostaddr {
        /// The text given.
        value: String,
        /// Where.
        origin: Origin,
    },
    /// A NUL character, which libpq's C strings cannot carry (the URL
    /// form's `%00` is [`ConnInfoError::PercentEncoding`]).
    #[error("connection string contains a NUL character")]
    NulCharacter,
    /// Not an integer.
    #[error("invalid integer value \"{value}\" for connection option \"connect_timeout\" {origin}")]
    InvalidConnectTimeout {
        /// The text given.
        value: String,
        /// Where.
        origin: Origin,
    },
}

/// Values as given in the string, before environment and defaults. Not
/// `Debug`: it holds the password in clear.
#[derive(Default)]
struct Given {
    values: [Option<(String, Origin)>; Key::ALL.len()],
}

impl Given {
    fn set(&mut self, key: Key, value: String, origin: Origin) {
        self.values[key as usize] = Some((value, origin));
    }

    /// The value from the string, else from the environment; empty = unset.
    fn take(&mut self, key: Key, env: &dyn Fn(&str) -> Option<String>) -> Option<(String, Origin)> {
        if let Some((value, origin)) = self.values[key as usize].take() {
            if !value.is_empty() {
                return Some((value, origin));
            }
        }
        let var = key.env_var();
        env(var).filter(|value| !value.is_empty()).map(|value| (value, Origin::Env(var)))
    }
}

impl ConnInfo {
    /// Parses a URL or key/value string, falling back to the process
    /// environment and libpq's defaults.
    pub fn parse(input: &str) -> Result<ConnInfo, ConnInfoError> {
        Self::parse_with_env(input, &|var| std::env::var(var).ok())
    }

    /// [`ConnInfo::parse`] with an injected environment (for tests).
    pub fn parse_with_env(
        input: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, ConnInfoError> {
        if input.contains('\0') {
            return Err(ConnInfoError::NulCharacter);
        }
        let trimmed = input.trim();
        let given = if let Some(rest) = strip_scheme(trimmed) {
            parse_url(trimmed, rest)?
        } else if let Some(scheme) = foreign_scheme(trimmed) {
            return Err(ConnInfoError::UnsupportedScheme { scheme: scheme.to_owned() });
        } else {
            parse_key_value(trimmed)?
        };
        resolve(given, env)
    }

    /// A tokio-postgres configuration for this connection. TLS is the
    /// caller's: `verify-ca`/`verify-full` map to `Require`, and the
    /// certificate checks belong to the TLS connector.
    pub fn to_tokio_postgres(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        match &self.host {
            Host::Tcp(host) => {
                config.host(host);
            }
            #[cfg(unix)]
            Host::Unix(dir) => {
                config.host_path(dir);
            }
            #[cfg(not(unix))]
            Host::Unix(dir) => {
                config.host(dir.to_string_lossy());
            }
        }
        if let Some(addr) = self.hostaddr {
            config.hostaddr(addr);
        }
        config.port(self.port).user(&self.user).dbname(&self.dbname);
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        config.ssl_mode(match self.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        if let Some(name) = &self.application_name {
            config.application_name(name);
        }
        if let Some(timeout) = self.connect_timeout {
            config.connect_timeout(timeout);
        }
        if let Some(options) = &self.options {
            config.options(options);
        }
        config
    }

    /// A copy with `application_name` set, clamped to Postgres's 63 bytes on
    /// a character boundary.
    pub fn with_application_name(&self, name: &str) -> ConnInfo {
        ConnInfo { application_name: Some(clamp_application_name(name).to_owned()), ..self.clone() }
    }

    /// `postgres://user@host:port/dbname?sslmode=…`, without the password:
    /// safe for logs and messages.
    pub fn redacted(&self) -> String {
        self.to_string()
    }

    /// Whether `other` names the same server and database as far as the
    /// text says (host, port, dbname). Two different names for one server
    /// compare unequal; a runtime check (`system_identifier`) is the truth.
    pub fn same_database(&self, other: &ConnInfo) -> bool {
        self.host == other.host
            && self.hostaddr == other.hostaddr
            && self.port == other.port
            && self.dbname == other.dbname
    }
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("postgres://")?;
        f.write_str(&percent_encode(&self.user))?;
        f.write_str("@")?;
        match &self.host {
            // Brackets only around what can be an IPv6 address (with a zone
            // id): the parser takes a bracketed host verbatim up to the first
            // `]`, so anything else is percent-encoded to parse back.
            Host::Tcp(host)
                if host.contains(':')
                    && host.bytes().all(|b| b.is_ascii_alphanumeric() || b":.%_-".contains(&b)) =>
            {
                write!(f, "[{host}]")?;
            }
            Host::Tcp(host) => f.write_str(&percent_encode(host))?,
            Host::Unix(dir) => f.write_str(&percent_encode(&dir.to_string_lossy()))?,
        }
        write!(f, ":{}/{}?sslmode={}", self.port, percent_encode(&self.dbname), self.ssl_mode)
    }
}

/// The longest prefix of `name` that fits in [`MAX_APPLICATION_NAME_BYTES`]
/// and ends on a character boundary.
pub fn clamp_application_name(name: &str) -> &str {
    if name.len() <= MAX_APPLICATION_NAME_BYTES {
        return name;
    }
    let mut end = MAX_APPLICATION_NAME_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The default host: the socket directory if it exists, else `localhost`.
pub fn default_host() -> Host {
    if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))
    } else {
        Host::Tcp(DEFAULT_TCP_HOST.to_owned())
    }
}

fn strip_scheme(input: &str) -> Option<&str> {
    input.strip_prefix("postgresql://").or_else(|| input.strip_prefix("postgres://"))
}

/// `mysql` in `mysql://…`: a URL, but not ours.
fn foreign_scheme(input: &str) -> Option<&str> {
    let (scheme, _) = input.split_once("://")?;
    let is_scheme = !scheme.is_empty()
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    is_scheme.then_some(scheme)
}

fn set_option(
    given: &mut Given,
    name: &str,
    value: String,
    origin: Origin,
) -> Result<(), ConnInfoError> {
    if let Some(key) = Key::from_name(name) {
        given.set(key, value, origin);
        Ok(())
    } else if UNSUPPORTED_LIBPQ_KEYS.contains(&name) {
        Err(ConnInfoError::Unsupported { key: name.to_owned(), origin })
    } else if origin == Origin::Url {
        Err(ConnInfoError::UnknownQueryParameter { key: name.to_owned() })
    } else {
        Err(ConnInfoError::UnknownOption { key: name.to_owned() })
    }
}

/// `rest` is `input` after the scheme.
fn parse_url(input: &str, rest: &str) -> Result<Given, ConnInfoError> {
    let base = input.len() - rest.len();
    let mut given = Given::default();

    // Authority: up to the first '/' or '?'; user info up to its last '@'.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let (userinfo, hostport, hostport_offset) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..], base + at + 1),
        None => (None, authority, base),
    };
    // An '@' after the authority when the authority has none suggests an
    // unencoded '/', '?' or '#' cut the password short.
    let ambiguous = userinfo.is_none() && rest[authority_end..].contains('@');

    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        given.set(Key::User, percent_decode(user, UrlPart::User)?, Origin::Url);
        if let Some(password) = password {
            given.set(Key::Password, percent_decode(password, UrlPart::Password)?, Origin::Url);
        }
    }

    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let close = v6.find(']').ok_or(ConnInfoError::UnterminatedIpv6)?;
        let after = &v6[close + 1..];
        let port = match after.chars().next() {
            None => None,
            Some(':') => Some(&after[1..]),
            Some(',') => return Err(ConnInfoError::MultipleHosts { origin: Origin::Url }),
            Some(ch) => {
                return Err(ConnInfoError::AfterIpv6 { ch, offset: hostport_offset + close + 2 });
            }
        };
        (v6[..close].to_owned(), port)
    } else {
        let (host, port) = match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        };
        if host.contains(',') {
            return Err(ConnInfoError::MultipleHosts { origin: Origin::Url });
        }
        (percent_decode(host, UrlPart::Host)?, port)
    };
    given.set(Key::Host, host, Origin::Url);
    if let Some(port) = port {
        if port.contains(',') {
            return Err(ConnInfoError::MultipleHosts { origin: Origin::Url });
        }
        if ambiguous && port.parse::<u16>().is_err() {
            return Err(ConnInfoError::InvalidUrlPortAmbiguous);
        }
        given.set(Key::Port, port.to_owned(), Origin::Url);
    }

    let after_authority = &rest[authority_end..];
    let (path, query) = match after_authority.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (after_authority, None),
    };
    if let Some(dbname) = path.strip_prefix('/') {
        given.set(Key::Dbname, percent_decode(dbname, UrlPart::Dbname)?, Origin::Url);
    }
    for param in query.unwrap_or("").split('&').filter(|param| !param.is_empty()) {
        let Some((name, value)) = param.split_once('=') else {
            return Err(ConnInfoError::QueryMissingEquals {
                key: percent_decode(param, UrlPart::ParamName)?,
            });
        };
        let name = percent_decode(name, UrlPart::ParamName)?;
        let value = percent_decode(value, UrlPart::ParamValue)?;
        set_option(&mut given, &name, value, Origin::Url)?;
    }
    Ok(given)
}

fn parse_key_value(input: &str) -> Result<Given, ConnInfoError> {
    let mut given = Given::default();
    let mut chars = input.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(given);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            return Err(ConnInfoError::MissingEquals { key });
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(ConnInfoError::UnterminatedQuote { key }),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(ConnInfoError::UnterminatedQuote { key }),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        set_option(&mut given, &key, value, Origin::KeyValue)?;
    }
}

fn resolve(
    mut given: Given,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ConnInfo, ConnInfoError> {
    let hostaddr = match given.take(Key::Hostaddr, env) {
        Some((value, origin)) => Some(
            value
                .parse::<IpAddr>()
                .map_err(|_| ConnInfoError::InvalidHostaddr { value, origin })?,
        ),
        None => None,
    };
    let host = match given.take(Key::Host, env) {
        Some((value, origin)) if value.contains(',') => {
            return Err(ConnInfoError::MultipleHosts { origin });
        }
        Some((value, _)) if value.starts_with('/') => Host::Unix(PathBuf::from(value)),
        Some((value, _)) => Host::Tcp(value),
        None => match hostaddr {
            Some(addr) => Host::Tcp(addr.to_string()),
            None => default_host(),
        },
    };
    let port = match given.take(Key::Port, env) {
        Some((value, origin)) => match value.trim().parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ if value.contains(',') => return Err(ConnInfoError::MultipleHosts { origin }),
            _ => return Err(ConnInfoError::InvalidPort { value, origin }),
        },
        None => DEFAULT_PORT,
    };
    let user = match given.take(Key::User, env) {
        Some((user, _)) => user,
        None => env("USER").filter(|user| !user.is_empty()).unwrap_or_else(|| DEFAULT_USER.into()),
    };
    let password = given.take(Key::Password, env).map(|(password, _)| Secret::new(password));
    let dbname = given.take(Key::Dbname, env).map_or_else(|| user.clone(), |(dbname, _)| dbname);
    let ssl_mode = match given.take(Key::SslMode, env) {
        Some((value, origin)) => SslMode::from_name(value.trim())
            .ok_or(ConnInfoError::InvalidSslMode { value, origin })?,
        None if matches!(host, Host::Unix(_)) => SslMode::Disable,
        None => SslMode::Prefer,
    };
    let path = |key: Key, given: &mut Given| given.take(key, env).map(|(p, _)| PathBuf::from(p));
    let ssl_root_cert = path(Key::SslRootCert, &mut given);
    let ssl_cert = path(Key::SslCert, &mut given);
    let ssl_key = path(Key::SslKey, &mut given);
    let application_name = given.take(Key::ApplicationName, env).map(|(name, _)| name);
    let connect_timeout = match given.take(Key::ConnectTimeout, env) {
        Some((value, origin)) => match value.trim().parse::<i64>() {
            // libpq: zero or negative waits indefinitely; less than 2 s is 2 s.
            Ok(seconds) if seconds <= 0 => None,
            Ok(seconds) => {
                Some(Duration::from_secs(seconds.unsigned_abs()).max(MIN_CONNECT_TIMEOUT))
            }
            Err(_) => return Err(ConnInfoError::InvalidConnectTimeout { value, origin }),
        },
        None => None,
    };
    let options = given.take(Key::Options, env).map(|(options, _)| options);
    Ok(ConnInfo {
        host,
        hostaddr,
        port,
        user,
        password,
        dbname,
        ssl_mode,
        ssl_root_cert,
        ssl_cert,
        ssl_key,
        application_name,
        connect_timeout,
        receive_timeout: None,
        options,
    })
}

fn percent_decode(text: &str, part: UrlPart) -> Result<String, ConnInfoError> {
    let error = || ConnInfoError::PercentEncoding { part };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(error)?;
            let hex = std::str::from_utf8(hex).map_err(|_| error())?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| error())?;
            // libpq forbids %00: it would truncate the C string.
            if byte == 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(error());
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| error())
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const PW: &str = "S3cr3t-Pw";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(input: &str) -> ConnInfo {
        ConnInfo::parse_with_env(input, &no_env).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    fn parse_err(input: &str) -> ConnInfoError {
        match ConnInfo::parse_with_env(input, &no_env) {
            Ok(info) => panic!("{input}: expected an error, got {info:?}"),
            Err(err) => err,
        }
    }

    fn with_env(input: &str, vars: &[(&str, &str)]) -> Result<ConnInfo, ConnInfoError> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ConnInfo::parse_with_env(input, &move |name| vars.get(name).cloned())
    }

    fn tcp(host: &str) -> Host {
        Host::Tcp(host.to_owned())
    }

    #[test]
    fn empty_string_is_all_defaults() {
        for input in ["", "   ", "postgres://", "postgresql://"] {
            let info = parse(input);
            let host = default_host();
            let ssl_mode =
                if matches!(host, Host::Unix(_)) { SslMode::Disable } else { SslMode::Prefer };
            assert_eq!(
                info,
                ConnInfo {
                    host,
                    hostaddr: None,
                    port: 5432,
                    user: "postgres".into(),
                    password: None,
                    dbname: "postgres".into(),
                    ssl_mode,
                    ssl_root_cert: None,
                    ssl_cert: None,
                    ssl_key: None,
                    application_name: None,
                    connect_timeout: None,
                    receive_timeout: None,
                    options: None,
                },
                "{input:?}"
            );
        }
    }

    #[test]
    fn libpq_documentation_uri_examples() {
        let info = parse("postgresql://localhost");
        assert_eq!((info.host, info.port), (tcp("localhost"), 5432));

        let info = parse("postgresql://localhost:5433");
        assert_eq!((info.host, info.port), (tcp("localhost"), 5433));

        let info = parse("postgresql://localhost/mydb");
        assert_eq!(info.dbname, "mydb");

        let info = parse("postgresql://user@localhost");
        assert_eq!((info.user.as_str(), info.dbname.as_str()), ("user", "user"));
        assert_eq!(info.password, None);

        let info = parse("postgresql://user:secret@localhost");
        assert_eq!(info.password, Some(Secret::new("secret")));

        let info =
            parse("postgresql://other@localhost/otherdb?connect_timeout=10&application_name=myapp");
        assert_eq!(info.user, "other");
        assert_eq!(info.dbname, "otherdb");
        assert_eq!(info.connect_timeout, Some(Duration::from_secs(10)));
        assert_eq!(info.application_name.as_deref(), Some("myapp"));

        let info = parse("postgresql:///mydb?host=localhost&port=5433");
        assert_eq!((info.host, info.port, info.dbname.as_str()), (tcp("localhost"), 5433, "mydb"));

        let info = parse("postgresql://[2001:db8::1234]/database");
        assert_eq!(info.host, tcp("2001:db8::1234"));
        assert_eq!(info.dbname, "database");

        let info = parse("postgresql://[::1]:5433/db");
        assert_eq!((info.host, info.port), (tcp("::1"), 5433));

        let info = parse("postgresql:///dbname?host=/var/lib/postgresql");
        assert_eq!(info.host, Host::Unix("/var/lib/postgresql".into()));
        assert_eq!(info.ssl_mode, SslMode::Disable);

        let info = parse("postgresql://%2Fvar%2Flib%2Fpostgresql/dbname");
        assert_eq!(info.host, Host::Unix("/var/lib/postgresql".into()));
        assert_eq!(info.dbname, "dbname");

        let info =
            parse("postgresql://user@localhost:5433/mydb?options=-c%20synchronous_commit%3Doff");
        assert_eq!(info.options.as_deref(), Some("-c synchronous_commit=off"));

        assert_eq!(
            parse_err("postgresql://host1:123,host2:456/somedb"),
            ConnInfoError::MultipleHosts { origin: Origin::Url }
        );
    }

    #[test]
    fn libpq_documentation_key_value_example() {
        let info = parse("host=localhost port=5432 dbname=mydb connect_timeout=10");
        assert_eq!(info.host, tcp("localhost"));
        assert_eq!(info.port, 5432);
        assert_eq!(info.dbname, "mydb");
        assert_eq!(info.connect_timeout, Some(Duration::from_secs(10)));
    }

    #[test]
    fn url_with_everything() {
        let info = parse(
            "postgres://app%40corp:p%40ss%3Aw%2Fd@db.example.com:6543/my%20db?sslmode=verify-full\
             &sslrootcert=/etc/ca.pem&sslcert=/c.pem&sslkey=/k.pem&hostaddr=10.0.0.5\
             &application_name=walshift&options=-c%20x%3Dy",
        );
        assert_eq!(info.user, "app@corp");
        assert_eq!(info.password.as_ref().map(Secret::expose), Some("p@ss:w/d"));
        assert_eq!(info.host, tcp("db.example.com"));
        assert_eq!(info.port, 6543);
        assert_eq!(info.dbname, "my db");
        assert_eq!(info.ssl_mode, SslMode::VerifyFull);
        assert_eq!(info.ssl_root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(info.ssl_cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(info.ssl_key, Some(PathBuf::from("/k.pem")));
        assert_eq!(info.hostaddr, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(info.options.as_deref(), Some("-c x=y"));
    }

    #[test]
    fn url_password_with_unencoded_at_and_colon() {
        let info = parse("postgres://u:p@ss:w@host/db");
        assert_eq!(info.user, "u");
        assert_eq!(info.password, Some(Secret::new("p@ss:w")));
        assert_eq!(info.host, tcp("host"));
    }

    #[test]
    fn url_query_overrides_and_value_with_equals() {
        let info = parse("postgres://a@h/d?user=b&dbname=e&options=-c%20a=b");
        assert_eq!((info.user.as_str(), info.dbname.as_str()), ("b", "e"));
        assert_eq!(info.options.as_deref(), Some("-c a=b"));
    }

    #[test]
    fn key_value_quoting_and_escapes() {
        let info = parse(r"host = localhost  dbname='my db' password='it\'s' user=a\ b");
        assert_eq!(info.host, tcp("localhost"));
        assert_eq!(info.dbname, "my db");
        assert_eq!(info.password, Some(Secret::new("it's")));
        assert_eq!(info.user, "a b");

        let info = parse(r"password='back\\slash' dbname=''");
        assert_eq!(info.password, Some(Secret::new(r"back\slash")));
        // An empty value is unset: dbname defaults to the user.
        assert_eq!(info.dbname, "postgres");

        let info = parse("host=/tmp\tport=6000\n");
        assert_eq!(info.host, Host::Unix("/tmp".into()));
        assert_eq!(info.port, 6000);
        assert_eq!(info.ssl_mode, SslMode::Disable);

        let info = parse("host=/tmp sslmode=require");
        assert_eq!(info.ssl_mode, SslMode::Require);
    }

    #[test]
    fn unknown_and_unsupported_keys() {
        assert_eq!(parse_err("host=x bogus=1").to_string(), r#"invalid connection option "bogus""#);
        assert_eq!(
            parse_err("postgres://h/d?bogus=1").to_string(),
            r#"invalid URI query parameter: "bogus""#
        );
        assert_eq!(
            parse_err("host=x target_session_attrs=any").to_string(),
            r#"connection option "target_session_attrs" in the connection string is not supported by walshift"#
        );
        assert_eq!(
            parse_err("postgres://h/d?replication=database"),
            ConnInfoError::Unsupported { key: "replication".into(), origin: Origin::Url }
        );
    }

    #[test]
    fn malformed_input_errors() {
        let cases: &[(&str, &str)] = &[
            ("localhost", r#"missing "=" after "localhost" in connection info string"#),
            ("host localhost", r#"missing "=" after "host" in connection info string"#),
            (
                "dbname='abc",
                r#"unterminated quoted string in connection info string (value of "dbname")"#,
            ),
            ("port=abc", r#"invalid port number: "abc" in the connection string"#),
            ("port=0", r#"invalid port number: "0" in the connection string"#),
            ("port=70000", r#"invalid port number: "70000" in the connection string"#),
            ("postgres://h:abc/db", r#"invalid port number: "abc" in the URL"#),
            (
                "sslmode=maybe",
                "invalid sslmode value: \"maybe\" in the connection string; expected disable, \
                 allow, prefer, require, verify-ca or verify-full",
            ),
            (
                "postgres://h/d?sslmode=on",
                "invalid sslmode value: \"on\" in the URL; expected disable, allow, prefer, \
                 require, verify-ca or verify-full",
            ),
            (
                "hostaddr=example.com",
                r#"invalid hostaddr "example.com" in the connection string; expected an IPv4 or IPv6 address"#,
            ),
            (
                "connect_timeout=soon",
                r#"invalid integer value "soon" for connection option "connect_timeout" in the connection string"#,
            ),
            (
                "host=a,b",
                "multiple hosts in the connection string are not supported; give a single host",
            ),
            (
                "postgres://a:1,b:2/db",
                "multiple hosts in the URL are not supported; give a single host",
            ),
            ("postgres://[::1/db", r#"missing "]" after the IPv6 address in the URL"#),
            (
                "postgres://[::1]x/db",
                r#"unexpected character 'x' after the IPv6 address in the URL at byte 16"#,
            ),
            ("postgres://h/d%zz", "invalid percent-encoding in the database name of the URL"),
            ("postgres://h/d%00", "invalid percent-encoding in the database name of the URL"),
            ("postgres://h/d%ff", "invalid percent-encoding in the database name of the URL"),
            ("postgres://u:p%4@h/d", "invalid percent-encoding in the password of the URL"),
            (
                "postgres://h/d?sslmode",
                r#"missing key/value separator "=" in URI query parameter: "sslmode""#,
            ),
            (
                "mysql://u:p@h/d",
                r#"unsupported URL scheme "mysql"; expected postgres:// or postgresql://"#,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_err(input).to_string(), *expected, "{input}");
        }
    }

    #[test]
    fn connect_timeout_follows_libpq() {
        assert_eq!(parse("connect_timeout=0").connect_timeout, None);
        assert_eq!(parse("connect_timeout=-5").connect_timeout, None);
        assert_eq!(parse("connect_timeout=1").connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(parse("connect_timeout=30").connect_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn environment_fallbacks() {
        let env = [
            ("PGHOST", "db.internal"),
            ("PGPORT", "6432"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "require"),
            ("PGSSLROOTCERT", "/ca.pem"),
            ("PGAPPNAME", "envapp"),
            ("PGCONNECT_TIMEOUT", "7"),
            ("PGOPTIONS", "-c a=b"),
            ("USER", "osuser"),
        ];
        let info = with_env("", &env).unwrap();
        assert_eq!(info.host, tcp("db.internal"));
        assert_eq!(info.port, 6432);
        assert_eq!(info.user, "envuser");
        assert_eq!(info.password, Some(Secret::new("envpw")));
        assert_eq!(info.dbname, "envdb");
        assert_eq!(info.ssl_mode, SslMode::Require);
        assert_eq!(info.ssl_root_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(info.application_name.as_deref(), Some("envapp"));
        assert_eq!(info.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(info.options.as_deref(), Some("-c a=b"));

        // The string wins over the environment.
        let info = with_env("postgres://me:pw@h:1/d?sslmode=disable", &env).unwrap();
        assert_eq!((info.user.as_str(), info.port, info.dbname.as_str()), ("me", 1, "d"));
        assert_eq!(info.password, Some(Secret::new("pw")));
        assert_eq!(info.ssl_mode, SslMode::Disable);

        // $USER is the user (and so the database) when PGUSER is unset.
        let info = with_env("host=h", &[("USER", "osuser")]).unwrap();
        assert_eq!((info.user.as_str(), info.dbname.as_str()), ("osuser", "osuser"));

        // Empty variables are unset; bad ones name the variable.
        let info = with_env("", &[("PGHOST", ""), ("PGPORT", "")]).unwrap();
        assert_eq!((info.host, info.port), (default_host(), 5432));
        assert_eq!(
            with_env("", &[("PGPORT", "x")]).unwrap_err().to_string(),
            r#"invalid port number: "x" in environment variable PGPORT"#
        );
        assert_eq!(
            with_env("", &[("PGSSLMODE", "yes")]).unwrap_err(),
            ConnInfoError::InvalidSslMode { value: "yes".into(), origin: Origin::Env("PGSSLMODE") }
        );
        assert_eq!(
            with_env("", &[("PGHOST", "/run/pg")]).unwrap().host,
            Host::Unix("/run/pg".into())
        );
    }

    #[test]
    fn hostaddr_without_host_connects_by_address() {
        let info = parse("hostaddr=127.0.0.1");
        assert_eq!(info.host, tcp("127.0.0.1"));
        assert_eq!(info.ssl_mode, SslMode::Prefer);
    }

    #[test]
    fn password_never_in_errors_debug_or_display() {
        let inputs = [
            format!("postgres://user:{PW}@host:badport/db"),
            format!("postgres://user:{PW}@host/db?bogus=1"),
            format!("postgres://user:{PW}@host/db?sslmode=nope"),
            format!("postgres://user:{PW}@[::1/db"),
            format!("postgres://user:{PW}%zz@host/db"),
            format!("postgres://user:{PW}@a,b/db"),
            format!("postgres://user:{PW}@h/d?password"),
            format!("postgres://user:{PW}@h/d?connect_timeout=x"),
            format!("postgres://user:pre/{PW}@host/db"),
            format!("postgres://user:pre?{PW}@host/db"),
            format!("postgres://user:pre#{PW}@host/db"),
            format!("host=h password={PW} port=x"),
            format!("host=h password='{PW}' bogus=1"),
            format!("password='{PW}"),
            format!("password={PW} sslmode=x"),
            format!("mysql://user:{PW}@h/d"),
        ];
        for input in &inputs {
            match ConnInfo::parse_with_env(input, &no_env) {
                Err(err) => {
                    assert!(!err.to_string().contains(PW), "{input} -> {err}");
                    assert!(!format!("{err:?}").contains(PW), "{input} -> {err:?}");
                }
                Ok(info) => {
                    assert!(!info.to_string().contains(PW), "{input} -> {info}");
                    assert!(!format!("{info:?}").contains(PW), "{input} -> {info:?}");
                }
            }
        }
        assert_eq!(
            parse_err(&format!("postgres://user:pre/{PW}@host:5432/db")),
            ConnInfoError::InvalidUrlPortAmbiguous
        );

        let info = parse(&format!("postgres://user:{PW}@host/db"));
        assert_eq!(info.password.as_ref().map(Secret::expose), Some(PW));
        assert!(!format!("{info:?}").contains(PW));
        assert!(!info.redacted().contains(PW));
    }

    #[test]
    fn redacted_form() {
        let info = parse("postgres://u:pw@db.example.com:6543/app?sslmode=require");
        assert_eq!(info.redacted(), "postgres://u@db.example.com:6543/app?sslmode=require");
        let info = parse("postgres://u@[::1]/app");
        assert_eq!(info.to_string(), "postgres://u@[::1]:5432/app?sslmode=prefer");
        let info = parse("host=/var/run/postgresql user='a b' dbname=x/y");
        assert_eq!(
            info.to_string(),
            "postgres://a%20b@%2Fvar%2Frun%2Fpostgresql:5432/x%2Fy?sslmode=disable"
        );
        // The redacted form parses back to the same connection (minus password).
        let back = parse(&info.to_string());
        assert_eq!(back, info);
    }

    /// Fuzz finding (conninfo target): a host with `:` and characters an
    /// IPv6 address cannot have was printed in brackets, and the redacted
    /// form no longer parsed ("missing ]").
    #[test]
    fn redacted_form_of_odd_hosts_parses_back() {
        for input in [
            "host=ydsql://postgresqll:o",
            "host=a:b]c",
            "host=h:1@x?y#z",
            "host=fe80::1%eth0",
            "host=::ffff:10.0.0.1",
        ] {
            let info = parse(input);
            let back = parse(&info.redacted());
            assert_eq!(back, info, "{input}");
        }
        // Fuzz finding: a NUL (possible through a TOML `\u0000`) was kept in
        // the value, and the redacted form's `%00` did not parse back.
        for input in ["host=a\0b", "user='x\0'", "postgres://h/db?application_name=a\0"] {
            assert_eq!(parse_err(input), ConnInfoError::NulCharacter, "{input:?}");
        }
        assert_eq!(
            parse("host=a:b/c").to_string(),
            "postgres://postgres@a%3Ab%2Fc:5432/postgres?sslmode=prefer"
        );
    }

    #[test]
    fn to_tokio_postgres_maps_every_field() {
        use tokio_postgres::config::{Host as TpHost, SslMode as TpSslMode};
        let info = parse(
            "postgres://u:pw@h:6000/d?sslmode=verify-full&application_name=a\
             &connect_timeout=5&options=-c%20x%3D1&hostaddr=::1",
        );
        let config = info.to_tokio_postgres();
        assert_eq!(config.get_hosts(), &[TpHost::Tcp("h".into())]);
        assert_eq!(config.get_hostaddrs(), &["::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(config.get_ports(), &[6000]);
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(config.get_password(), Some(&b"pw"[..]));
        assert_eq!(config.get_dbname(), Some("d"));
        assert_eq!(config.get_ssl_mode(), TpSslMode::Require);
        assert_eq!(config.get_application_name(), Some("a"));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert_eq!(config.get_options(), Some("-c x=1"));

        let expected = [
            ("disable", TpSslMode::Disable),
            ("allow", TpSslMode::Prefer),
            ("prefer", TpSslMode::Prefer),
            ("require", TpSslMode::Require),
            ("verify-ca", TpSslMode::Require),
            ("verify-full", TpSslMode::Require),
        ];
        for (mode, tp) in expected {
            let config = parse(&format!("host=h sslmode={mode}")).to_tokio_postgres();
            assert_eq!(config.get_ssl_mode(), tp, "{mode}");
        }

        let config = parse("host=/run/pg").to_tokio_postgres();
        assert_eq!(config.get_hosts(), &[TpHost::Unix("/run/pg".into())]);
    }

    #[test]
    fn application_name_is_clamped_on_a_char_boundary() {
        let info = parse("host=h");
        assert_eq!(
            info.with_application_name("walshift:reader").application_name.as_deref(),
            Some("walshift:reader")
        );
        let long = "x".repeat(62) + "é"; // 64 bytes; 'é' straddles byte 63
        let clamped = info.with_application_name(&long).application_name.unwrap();
        assert_eq!(clamped, "x".repeat(62));
        let exact = "y".repeat(63);
        assert_eq!(clamp_application_name(&exact), exact);
        assert_eq!(clamp_application_name(&"z".repeat(100)).len(), 63);
    }

    #[test]
    fn same_database() {
        let a = parse("postgres://u:x@h:5432/db");
        assert!(a.same_database(&parse("host=h dbname=db user=other")));
        assert!(!a.same_database(&parse("host=h dbname=db2")));
        assert!(!a.same_database(&parse("host=h2 dbname=db")));
    }

    #[test]
    fn random_inputs_never_panic() {
        let pieces = [
            "postgres://",
            "u",
            ":",
            PW,
            "@",
            "h",
            "[",
            "]",
            "::1",
            "/",
            "?",
            "&",
            "=",
            "%",
            "%2F",
            "%4",
            "'",
            "\\",
            " ",
            "host",
            "port",
            "password",
            "sslmode",
            "5432",
            ",",
            "#",
            "x",
        ];
        let mut rng = fastrand::Rng::with_seed(42);
        for _ in 0..5000 {
            let input: String =
                (0..rng.usize(0..14)).map(|_| pieces[rng.usize(..pieces.len())]).collect();
            if let Ok(info) = ConnInfo::parse_with_env(&input, &no_env) {
                let _ = info.to_tokio_postgres();
                let _ = info.redacted();
            }
        }
    }
}
