//! A replication-mode connection speaking the Postgres frontend/backend
//! protocol directly.
//!
//! tokio-postgres cannot open a replication stream, so walshift owns this
//! small client, built on `postgres-protocol`'s message codec and SCRAM:
//!
//! ```text
//! connect ─▶ [SSLRequest ─▶ TLS handshake] ─▶ StartupMessage(replication=database)
//!         ─▶ auth (trust | cleartext | md5 | SCRAM-SHA-256) ─▶ ReadyForQuery
//!         ─▶ simple queries (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, ...)
//!         ─▶ START_REPLICATION ─▶ CopyBoth: CopyData frames both ways
//! ```
//!
//! The read side is split in two so callers can batch their own output:
//! [`ReplicationConnection::next_buffered_frame`] parses a frame out of what has
//! already been read (no I/O), and [`ReplicationConnection::fill`] reads more
//! bytes from the socket (cancel-safe, so it can sit in a `select!`).
//! `CopyData` payloads are handed out as `Bytes` slices of the read buffer:
//! nothing is copied between the socket and the pgoutput decoder.
//!
//! The framing itself is the pure [`parse_copy_both_frame`] (a fuzz target,
//! see `docs/fuzzing.md`). A frame's length field is untrusted: one longer
//! than [`MAX_MESSAGE_LEN`] is an error, and a partial frame reserves at most
//! [`MAX_RESERVE_AHEAD`] bytes ahead, so memory grows with the bytes that
//! actually arrive, never with what a header claims.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::pg::conninfo::{ConnInfo, Host, SslMode};
use crate::pg::tls::{self, TlsError};

/// Default time allowed for TCP connect, TLS and authentication.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`ReplicationConnection::close`] waits for the server to end
/// the replication stream.
pub const CLOSE_LINGER: Duration = Duration::from_secs(10);

/// Bytes requested from the socket per read. Large enough that one read
/// carries hundreds of small pgoutput messages; the buffer itself grows only
/// as far as the largest single message needs.
const READ_CHUNK_BYTES: usize = 128 * 1024;

/// A read buffer with more room than this after a frame was taken out of it
/// was grown by a large frame, and is replaced by a normal one (see
/// [`ReplicationConnection::next_buffered_frame`]).
const LARGE_BUFFER_BYTES: usize = 8 * READ_CHUNK_BYTES;

/// Longest backend message accepted, as its length field counts it (the
/// body plus the 4 length bytes). The server builds each message, XLogData
/// header included, in a `StringInfo`, which cannot exceed 1 GiB
/// (`MaxAllocSize`), so a longer length is a corrupt stream.
pub const MAX_MESSAGE_LEN: usize = (1 << 30) + 4;

/// Most bytes reserved at once for the rest of a partial frame. Reserving
/// the whole announced length would let one header allocate up to
/// [`MAX_MESSAGE_LEN`] before any of it arrives; beyond this, the buffer
/// grows with [`ReplicationConnection::fill`] as data comes in.
pub const MAX_RESERVE_AHEAD: usize = 1024 * 1024;

/// An error reported by the server in an `ErrorResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL` or `PANIC`.
    pub severity: String,
    /// SQLSTATE code, e.g. `42704`.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint.
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (SQLSTATE {})", self.severity, self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

impl ServerError {
    fn from_body(body: &backend::ErrorResponseBody) -> ServerError {
        let mut err = ServerError {
            severity: String::from("ERROR"),
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        let mut fields = body.fields();
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => err.severity = value,
                b'C' => err.code = value,
                b'M' => err.message = value,
                b'D' => err.detail = Some(value),
                b'H' => err.hint = Some(value),
                _ => {}
            }
        }
        err
    }

    /// Whether retrying the same operation later can succeed: connection
    /// problems (class 08), shutdowns and terminated backends (57P0x),
    /// resource exhaustion (class 53), an object in use (55006, e.g. a slot
    /// still held by a dying walsender) and serialization failures (class 40).
    pub fn is_transient(&self) -> bool {
        let class = self.code.get(..2).unwrap_or("");
        matches!(class, "08" | "53" | "40")
            || matches!(self.code.as_str(), "57P01" | "57P02" | "57P03" | "55006")
    }
}

/// Errors of the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// TCP or unix-socket connect failed.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// `host:port` or socket path.
        endpoint: String,
        /// The cause.
        source: io::Error,
    },
    /// Connecting and authenticating took longer than the connect timeout.
    #[error("timed out connecting to {endpoint} after {timeout:?}")]
    ConnectTimeout {
        /// `host:port` or socket path.
        endpoint: String,
        /// The limit that passed.
        timeout: Duration,
    },
    /// The server refused TLS while `sslmode` requires it.
    #[error("server at {endpoint} does not support TLS, but sslmode={mode} requires it")]
    TlsRefused {
        /// `host:port`.
        endpoint: String,
        /// The configured mode.
        mode: SslMode,
    },
    /// TLS setup or handshake failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server asked for a password and none was configured.
    #[error("server requested password authentication for user {user:?} but no password was given")]
    PasswordRequired {
        /// The user name.
        user: String,
    },
    /// The server asked for an authentication method walshift does not speak.
    #[error("unsupported authentication method requested by the server: {0}")]
    UnsupportedAuth(String),
    /// SCRAM exchange failed on our side (bad server proof, malformed message).
    #[error("SCRAM-SHA-256 authentication failed: {0}")]
    Scram(io::Error),
    /// The server answered with an error.
    #[error("server error: {0}")]
    Server(Box<ServerError>),
    /// The server sent a message that is not valid in the current state.
    #[error("protocol violation: expected {expected}, got message {tag:?}")]
    Unexpected {
        /// What was expected.
        expected: &'static str,
        /// The tag received.
        tag: char,
    },
    /// A message could not be parsed.
    #[error("malformed message from server: {0}")]
    Malformed(io::Error),
    /// The connection broke.
    #[error("connection to server lost: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("server closed the connection unexpectedly")]
    Closed,
}

impl WireError {
    /// Whether reconnecting and retrying can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            WireError::Connect { .. }
            | WireError::ConnectTimeout { .. }
            | WireError::Io(_)
            | WireError::Closed => true,
            WireError::Server(e) => e.is_transient(),
            _ => false,
        }
    }

    /// The server error, if this is one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            WireError::Server(e) => Some(e),
            _ => None,
        }
    }
}

/// The socket under a connection: TCP, unix socket, or TLS over TCP.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One frame received while in CopyBoth mode.
#[derive(Debug)]
pub enum CopyFrame {
    /// A `CopyData` payload.
    Data(Bytes),
    /// The server ended the copy (`CopyDone`).
    Done,
}

/// Rows and column names returned by a simple query.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows in text format; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

impl QueryResult {
    /// The value of `column` in the first row, if both exist and it is not NULL.
    pub fn first(&self, column: &str) -> Option<&str> {
        let idx = self.columns.iter().position(|c| c == column)?;
        self.rows.first()?.get(idx)?.as_deref()
    }
}

/// A connection opened with `replication=database`.
pub struct ReplicationConnection {
    stream: Stream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    server_version: Option<String>,
    backend_pid: Option<i32>,
    /// Whether the connection is in CopyBoth mode (streaming).
    streaming: bool,
}

impl fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("server_version", &self.server_version)
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Connects, negotiates TLS per `sslmode`, starts up in logical
    /// replication mode and authenticates.
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationConnection, WireError> {
        let endpoint = endpoint(info);
        let timeout = info.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        match tokio::time::timeout(timeout, Self::connect_inner(info, &endpoint)).await {
            Ok(result) => result,
            Err(_) => Err(WireError::ConnectTimeout { endpoint, timeout }),
        }
    }

    async fn connect_inner(
        info: &ConnInfo,
        endpoint: &str,
    ) -> Result<ReplicationConnection, WireError> {
        let stream = open_stream(info, endpoint).await?;
        let mut conn = ReplicationConnection {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            write_buf: BytesMut::with_capacity(1024),
            server_version: None,
            backend_pid: None,
            streaming: false,
        };
        conn.startup(info).await?;
        Ok(conn)
    }
}

/// Opens the socket `info` names and negotiates TLS per its `sslmode`: the
/// stream a startup packet goes over next. Shared by the replication
/// connection and the regular SQL connections ([`crate::pg::client`]).
pub(crate) async fn open_stream(info: &ConnInfo, endpoint: &str) -> Result<Stream, WireError> {
    let connect_err =
        |source: io::Error| WireError::Connect { endpoint: endpoint.to_owned(), source };
    match &info.host {
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{}", info.port));
            Ok(Stream::Unix(UnixStream::connect(path).await.map_err(connect_err)?))
        }
        Host::Tcp(host) => {
            // As in libpq, hostaddr (when given) is where we connect and
            // host is the name the server certificate is checked against.
            let tcp = match info.hostaddr {
                Some(addr) => TcpStream::connect((addr, info.port)).await,
                None => TcpStream::connect((host.as_str(), info.port)).await,
            }
            .map_err(connect_err)?;
            tcp.set_nodelay(true).map_err(connect_err)?;
            negotiate_tls(tcp, info, host, endpoint).await
        }
    }
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    info: &ConnInfo,
    host: &str,
    endpoint: &str,
) -> Result<Stream, WireError> {
    let Some(config) = tls::client_config(info)? else {
        return Ok(Stream::Tcp(tcp));
    };
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {
            let name = tls::server_name(host)?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|source| TlsError::Handshake { endpoint: endpoint.to_owned(), source })?;
            Ok(Stream::Tls(Box::new(tls)))
        }
        b'N' if !tls::requires_tls(info.ssl_mode) => Ok(Stream::Tcp(tcp)),
        b'N' => Err(WireError::TlsRefused { endpoint: endpoint.to_owned(), mode: info.ssl_mode }),
        other => Err(WireError::Unexpected {
            expected: "SSLRequest answer 'S' or 'N'",
            tag: char::from(other),
        }),
    }
}

impl ReplicationConnection {
    async fn startup(&mut self, info: &ConnInfo) -> Result<(), WireError> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
        ];
        if let Some(name) = &info.application_name {
            params.push(("application_name", name.as_str()));
        }
        if let Some(options) = &info.options {
            params.push(("options", options.as_str()));
        }
        frontend::startup_message(params.iter().copied(), &mut self.write_buf)
            .map_err(WireError::Malformed)?;
        self.flush_writes().await?;
        self.authenticate(info).await?;
        loop {
            match self.read_message().await? {
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ParameterStatus(p) => {
                    if p.name().ok() == Some("server_version") {
                        self.server_version = p.value().ok().map(str::to_owned);
                    }
                }
                backend::Message::BackendKeyData(key) => self.backend_pid = Some(key.process_id()),
                backend::Message::NoticeResponse(_) => {}
                backend::Message::ErrorResponse(body) => {
                    return Err(WireError::Server(Box::new(ServerError::from_body(&body))));
                }
                other => return Err(unexpected("ReadyForQuery", &other)),
            }
        }
    }

    async fn authenticate(&mut self, info: &ConnInfo) -> Result<(), WireError> {
        let password = || -> Result<&[u8], WireError> {
            info.password
                .as_ref()
                .map(|p| p.expose().as_bytes())
                .ok_or_else(|| WireError::PasswordRequired { user: info.user.clone() })
        };
        match self.read_message().await? {
            backend::Message::AuthenticationOk => return Ok(()),
            backend::Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?, &mut self.write_buf)
                    .map_err(WireError::Malformed)?;
            }
            backend::Message::AuthenticationMd5Password(body) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    info.user.as_bytes(),
                    password()?,
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                    .map_err(WireError::Malformed)?;
            }
            backend::Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut has_scram = false;
                while let Some(m) = mechanisms.next().map_err(WireError::Malformed)? {
                    has_scram |= m == sasl::SCRAM_SHA_256;
                }
                if !has_scram {
                    return Err(WireError::UnsupportedAuth(String::from(
                        "SASL without SCRAM-SHA-256",
                    )));
                }
                self.scram(password()?).await?;
            }
            backend::Message::ErrorResponse(body) => {
                return Err(WireError::Server(Box::new(ServerError::from_body(&body))));
            }
            backend::Message::AuthenticationGss
            | backend::Message::AuthenticationGssContinue(_)
            | backend::Message::AuthenticationSspi => {
                return Err(WireError::UnsupportedAuth(String::from("GSSAPI/SSPI")));
            }
            backend::Message::AuthenticationKerberosV5
            | backend::Message::AuthenticationScmCredential => {
                return Err(WireError::UnsupportedAuth(String::from("Kerberos/SCM")));
            }
            other => return Err(unexpected("an authentication request", &other)),
        }
        self.flush_writes().await?;
        match self.read_message().await? {
            backend::Message::AuthenticationOk => Ok(()),
            backend::Message::ErrorResponse(body) => {
                Err(WireError::Server(Box::new(ServerError::from_body(&body))))
            }
            other => Err(unexpected("AuthenticationOk", &other)),
        }
    }

    /// SCRAM-SHA-256 without channel binding (the `n` flag, which every
    /// server accepts whether or not it offers `-PLUS`).
    async fn scram(&mut self, password: &[u8]) -> Result<(), WireError> {
        let mut scram = ScramSha256::new(password, sasl::ChannelBinding::unsupported());
        frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), &mut self.write_buf)
            .map_err(WireError::Malformed)?;
        self.flush_writes().await?;
        match self.read_message().await? {
            backend::Message::AuthenticationSaslContinue(body) => {
                scram.update(body.data()).map_err(WireError::Scram)?;
            }
            backend::Message::ErrorResponse(body) => {
                return Err(WireError::Server(Box::new(ServerError::from_body(&body))));
            }
            other => return Err(unexpected("AuthenticationSASLContinue", &other)),
        }
        frontend::sasl_response(scram.message(), &mut self.write_buf)
            .map_err(WireError::Malformed)?;
        self.flush_writes().await?;
        match self.read_message().await? {
            backend::Message::AuthenticationSaslFinal(body) => {
                scram.finish(body.data()).map_err(WireError::Scram)
            }
            backend::Message::ErrorResponse(body) => {
                Err(WireError::Server(Box::new(ServerError::from_body(&body))))
            }
            other => Err(unexpected("AuthenticationSASLFinal", &other)),
        }
    }

    /// The server's `server_version` parameter, if it sent one.
    pub fn server_version(&self) -> Option<&str> {
        self.server_version.as_deref()
    }

    /// Runs one command through the simple-query protocol and returns its
    /// rows as text. Replication commands (`IDENTIFY_SYSTEM`, ...) go here.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, WireError> {
        frontend::query(sql, &mut self.write_buf).map_err(WireError::Malformed)?;
        self.flush_writes().await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            match self.read_message().await? {
                backend::Message::RowDescription(desc) => {
                    let mut fields = desc.fields();
                    while let Some(field) = fields.next().map_err(WireError::Malformed)? {
                        result.columns.push(field.name().to_owned());
                    }
                }
                backend::Message::DataRow(row) => {
                    let buf = row.buffer();
                    let mut ranges = row.ranges();
                    let mut values = Vec::with_capacity(result.columns.len());
                    while let Some(range) = ranges.next().map_err(WireError::Malformed)? {
                        values.push(range.map(|r| {
                            String::from_utf8_lossy(buf.get(r).unwrap_or_default()).into_owned()
                        }));
                    }
                    result.rows.push(values);
                }
                backend::Message::ErrorResponse(body) => {
                    error = Some(ServerError::from_body(&body));
                }
                backend::Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(WireError::Server(Box::new(e))),
                        None => Ok(result),
                    };
                }
                backend::Message::CommandComplete(_)
                | backend::Message::EmptyQueryResponse
                | backend::Message::NoticeResponse(_)
                | backend::Message::ParameterStatus(_) => {}
                other => return Err(unexpected("a query response", &other)),
            }
        }
    }

    /// Sends `START_REPLICATION ...` and waits for the server to enter
    /// CopyBoth mode.
    pub async fn start_copy_both(&mut self, command: &str) -> Result<(), WireError> {
        frontend::query(command, &mut self.write_buf).map_err(WireError::Malformed)?;
        self.flush_writes().await?;
        loop {
            let (tag, frame) = self.read_frame().await?;
            match tag {
                b'W' => {
                    self.streaming = true;
                    return Ok(());
                }
                b'N' => {}
                _ => {
                    let mut buf = BytesMut::from(&frame[..]);
                    match backend::Message::parse(&mut buf).map_err(WireError::Malformed)? {
                        Some(backend::Message::ErrorResponse(body)) => {
                            let err = ServerError::from_body(&body);
                            // Drain to ReadyForQuery so the connection stays usable.
                            self.drain_until_ready().await?;
                            return Err(WireError::Server(Box::new(err)));
                        }
                        Some(other) => return Err(unexpected("CopyBothResponse", &other)),
                        None => return Err(WireError::Closed),
                    }
                }
            }
        }
    }

    async fn drain_until_ready(&mut self) -> Result<(), WireError> {
        loop {
            if let backend::Message::ReadyForQuery(_) = self.read_message().await? {
                return Ok(());
            }
        }
    }

    /// Parses the next CopyBoth frame out of bytes already read, without I/O.
    /// `Ok(None)` means more bytes are needed: call [`Self::fill`].
    pub fn next_buffered_frame(&mut self) -> Result<Option<CopyFrame>, WireError> {
        let frame = parse_copy_both_frame(&mut self.read_buf)?;
        // A large frame grew the buffer, and the frame's values keep that
        // allocation alive until they are applied. The buffer itself must
        // not hold on to it: reading on into its spare room would keep it
        // (and its resident pages) for the connection's life, so what follows
        // the frame moves to a buffer of the normal size.
        if frame.is_some() && self.read_buf.capacity() > LARGE_BUFFER_BYTES {
            let rest = std::mem::take(&mut self.read_buf);
            self.read_buf = BytesMut::with_capacity(READ_CHUNK_BYTES.max(rest.len()));
            self.read_buf.extend_from_slice(&rest);
        }
        Ok(frame)
    }

    /// Reads more bytes from the socket into the buffer. Cancel-safe.
    pub async fn fill(&mut self) -> Result<(), WireError> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK_BYTES / 4 {
            self.read_buf.reserve(READ_CHUNK_BYTES);
        }
        let n = self.stream.read_buf(&mut self.read_buf).await?;
        if n == 0 {
            return Err(WireError::Closed);
        }
        Ok(())
    }

    /// Sends one `CopyData` message with `payload`.
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), WireError> {
        let data = frontend::CopyData::new(payload).map_err(WireError::Malformed)?;
        data.write(&mut self.write_buf);
        self.flush_writes().await
    }

    /// The server process serving this connection (the walsender), from
    /// `BackendKeyData`.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Ends CopyBoth mode from our side, waits (at most [`CLOSE_LINGER`])
    /// until the server has left it too, then closes the connection.
    ///
    /// The wait is what makes the messages sent just before (the final
    /// status update, i.e. the slot's new `confirmed_flush_lsn`) count:
    /// closing at once while the walsender is still sending makes our kernel
    /// answer its next segment with a reset, and a reset discards whatever
    /// the walsender had not read yet, our last status update included.
    pub async fn close(mut self) -> Result<(), WireError> {
        if self.streaming {
            frontend::copy_done(&mut self.write_buf);
            self.flush_writes().await?;
            let left_copy = tokio::time::timeout(CLOSE_LINGER, self.read_until_ready()).await;
            if !matches!(left_copy, Ok(Ok(()))) {
                tracing::debug!(
                    "the server did not end the replication stream in time; closing anyway"
                );
            }
        }
        frontend::terminate(&mut self.write_buf);
        self.flush_writes().await.ok();
        self.stream.shutdown().await.ok();
        Ok(())
    }

    /// Reads and drops messages until `ReadyForQuery`.
    async fn read_until_ready(&mut self) -> Result<(), WireError> {
        loop {
            let (tag, _) = self.read_frame().await?;
            if tag == b'Z' {
                return Ok(());
            }
        }
    }

    async fn flush_writes(&mut self) -> Result<(), WireError> {
        if !self.write_buf.is_empty() {
            self.stream.write_all(&self.write_buf).await?;
            self.write_buf.clear();
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// Reads one whole frame (tag + body), reading from the socket as needed.
    async fn read_frame(&mut self) -> Result<(u8, BytesMut), WireError> {
        loop {
            if let Some((tag, len)) = peek_header(&self.read_buf)?
                && self.read_buf.len() > len
            {
                return Ok((tag, self.read_buf.split_to(len + 1)));
            }
            self.fill().await?;
        }
    }

    /// Reads and parses one regular backend message.
    async fn read_message(&mut self) -> Result<backend::Message, WireError> {
        let (_, mut frame) = self.read_frame().await?;
        match backend::Message::parse(&mut frame).map_err(WireError::Malformed)? {
            Some(message) => Ok(message),
            None => Err(WireError::Closed),
        }
    }
}

/// Takes the next CopyBoth-mode frame off the front of `buf`: pure, no I/O.
///
/// Returns `Ok(None)` when `buf` does not hold a whole frame yet (it then
/// reserves room for the rest, at most [`MAX_RESERVE_AHEAD`] bytes), skips
/// notices and parameter changes, turns an `ErrorResponse` into
/// [`WireError::Server`] and any other message into an error. A `CopyData`
/// payload is a slice of `buf`, not a copy.
pub fn parse_copy_both_frame(buf: &mut BytesMut) -> Result<Option<CopyFrame>, WireError> {
    loop {
        let Some((tag, len)) = peek_header(buf)? else {
            return Ok(None);
        };
        if buf.len() <= len {
            buf.reserve((len + 1 - buf.len()).min(MAX_RESERVE_AHEAD));
            return Ok(None);
        }
        let mut frame = buf.split_to(len + 1);
        match tag {
            backend::COPY_DATA_TAG => {
                frame.advance(5);
                return Ok(Some(CopyFrame::Data(frame.freeze())));
            }
            backend::COPY_DONE_TAG => return Ok(Some(CopyFrame::Done)),
            // A walsender stopping for a server shutdown ends the stream
            // with CommandComplete and no CopyDone (`WalSndDone`).
            backend::COMMAND_COMPLETE_TAG => return Ok(Some(CopyFrame::Done)),
            // Notices and parameter changes can arrive at any time.
            backend::NOTICE_RESPONSE_TAG | backend::PARAMETER_STATUS_TAG => continue,
            backend::ERROR_RESPONSE_TAG => {
                return match backend::Message::parse(&mut frame).map_err(WireError::Malformed)? {
                    Some(backend::Message::ErrorResponse(body)) => {
                        Err(WireError::Server(Box::new(ServerError::from_body(&body))))
                    }
                    _ => Err(WireError::Closed),
                };
            }
            other => {
                return Err(WireError::Unexpected {
                    expected: "CopyData or CopyDone",
                    tag: char::from(other),
                });
            }
        }
    }
}

/// Reads the 5-byte header (tag, length including itself) of the next frame;
/// a length below 4 or above [`MAX_MESSAGE_LEN`] is an error.
fn peek_header(buf: &[u8]) -> Result<Option<(u8, usize)>, WireError> {
    let Some(header) = backend::Header::parse(buf).map_err(WireError::Malformed)? else {
        return Ok(None);
    };
    let len = usize::try_from(header.len()).map_err(|_| {
        WireError::Malformed(io::Error::new(io::ErrorKind::InvalidData, "negative frame length"))
    })?;
    if len < 4 {
        return Err(WireError::Malformed(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame length shorter than its header",
        )));
    }
    if len > MAX_MESSAGE_LEN {
        return Err(WireError::Malformed(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame length over 1 GiB, the most a server message can hold",
        )));
    }
    Ok(Some((header.tag(), len)))
}

fn unexpected(expected: &'static str, message: &backend::Message) -> WireError {
    let tag = match message {
        backend::Message::ErrorResponse(_) => 'E',
        backend::Message::CopyData(_) => 'd',
        backend::Message::CopyDone => 'c',
        backend::Message::DataRow(_) => 'D',
        backend::Message::ReadyForQuery(_) => 'Z',
        backend::Message::RowDescription(_) => 'T',
        backend::Message::CommandComplete(_) => 'C',
        _ => '?',
    };
    WireError::Unexpected { expected, tag }
}

pub(crate) fn endpoint(info: &ConnInfo) -> String {
    match &info.host {
        Host::Tcp(host) if host.contains(':') => format!("[{host}]:{}", info.port),
        Host::Tcp(host) => format!("{host}:{}", info.port),
        Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), info.port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rejects_impossible_lengths() {
        assert!(peek_header(b"d\0\0\0\x02").is_err());
        assert!(peek_header(b"d\xff\xff\xff\xff").is_err());
        assert!(peek_header(b"d\0\0").unwrap().is_none());
        assert_eq!(peek_header(b"d\0\0\0\x09rest").unwrap(), Some((b'd', 9)));
        let max = u32::try_from(MAX_MESSAGE_LEN).unwrap().to_be_bytes();
        let over = u32::try_from(MAX_MESSAGE_LEN + 1).unwrap().to_be_bytes();
        assert_eq!(
            peek_header(&[b'd', max[0], max[1], max[2], max[3]]).unwrap().unwrap().1,
            MAX_MESSAGE_LEN
        );
        assert!(peek_header(&[b'd', over[0], over[1], over[2], over[3]]).is_err());
    }

    /// A whole frame: tag, length (counting itself), body.
    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn copy_both_frames_are_split_and_notices_skipped() {
        let mut bytes = frame(b'd', b"w-payload");
        bytes.extend(frame(b'N', b"SNOTICE\0\0"));
        bytes.extend(frame(b'S', b"TimeZone\0UTC\0"));
        bytes.extend(frame(b'd', b"k"));
        bytes.extend(frame(b'c', b""));
        let mut buf = BytesMut::from(&bytes[..]);
        let Some(CopyFrame::Data(first)) = parse_copy_both_frame(&mut buf).unwrap() else {
            panic!("expected CopyData");
        };
        assert_eq!(&first[..], b"w-payload");
        let Some(CopyFrame::Data(second)) = parse_copy_both_frame(&mut buf).unwrap() else {
            panic!("expected CopyData after the notice and parameter status");
        };
        assert_eq!(&second[..], b"k");
        assert!(matches!(parse_copy_both_frame(&mut buf).unwrap(), Some(CopyFrame::Done)));
        assert!(parse_copy_both_frame(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
    }

    /// A source shut down with `-m fast` ends the stream this way; it was
    /// taken for a protocol violation and stopped `run` for good.
    #[test]
    fn command_complete_without_copy_done_ends_the_stream() {
        let mut bytes = frame(b'd', b"k");
        bytes.extend(frame(b'C', b"COPY 0\0"));
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(parse_copy_both_frame(&mut buf).unwrap(), Some(CopyFrame::Data(_))));
        assert!(matches!(parse_copy_both_frame(&mut buf).unwrap(), Some(CopyFrame::Done)));
    }

    #[test]
    fn copy_both_partial_frames_wait_for_more() {
        let bytes = frame(b'd', b"abcdef");
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            assert!(parse_copy_both_frame(&mut buf).unwrap().is_none(), "prefix of {len}");
            assert_eq!(buf.len(), len, "a partial frame is left in place");
        }
    }

    #[test]
    fn copy_both_errors_and_unexpected_messages() {
        let mut buf = BytesMut::from(&frame(b'E', b"SERROR\0C57P01\0Mterminating\0\0")[..]);
        match parse_copy_both_frame(&mut buf) {
            Err(WireError::Server(e)) => {
                assert_eq!((e.code.as_str(), e.message.as_str()), ("57P01", "terminating"));
            }
            other => panic!("expected a server error, got {other:?}"),
        }
        let mut buf = BytesMut::from(&frame(b'Z', b"I")[..]);
        assert!(matches!(
            parse_copy_both_frame(&mut buf),
            Err(WireError::Unexpected { tag: 'Z', .. })
        ));
        let mut buf = BytesMut::from(&b"d\x7f\xff\xff\xffw"[..]);
        assert!(matches!(parse_copy_both_frame(&mut buf), Err(WireError::Malformed(_))));
    }

    #[test]
    fn copy_both_length_field_does_not_size_the_buffer() {
        // A header announcing the largest allowed frame, and nothing else.
        let max = u32::try_from(MAX_MESSAGE_LEN).unwrap().to_be_bytes();
        let mut buf = BytesMut::from(&[b'd', max[0], max[1], max[2], max[3], b'w'][..]);
        assert!(parse_copy_both_frame(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= 2 * MAX_RESERVE_AHEAD, "reserved {} bytes", buf.capacity());
    }

    /// Fuzz finding (replication_frame target, against the reader before
    /// the caps): a CopyData whose length covers the start of the next
    /// frame leaves "TimeZone" text to be read as a header announcing
    /// 0x5a6f6e65 bytes ("Zone"), and the partial frame reserved all 1.5 GB
    /// of them (libFuzzer: malloc exceeds limit).
    #[test]
    fn copy_both_fuzz_oom_announced_length_is_rejected() {
        let hex = "4e0000002b534e4f5449434500564e4f5449434500433030303030004d736c6f\
                   7420616476616e63656400006400000032770000000002eb48f00000000002eb\
                   48f0420000000002eb4ab0000303c2193653a90000033d530000001154696d65\
                   5a6f6e65005554430064000000166b0000000002e0b0d244a000420000000002\
                   eb4ab0000303c2193653a90000033d530000001154696d655a6f6e6500555443\
                   0064000000166b0000000002eb48f00002e0b0d244a000016300000004";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(parse_copy_both_frame(&mut buf), Ok(Some(CopyFrame::Data(_)))));
        assert!(matches!(parse_copy_both_frame(&mut buf), Err(WireError::Malformed(_))));
        assert!(buf.capacity() <= bytes.len(), "reserved {} bytes", buf.capacity());
    }

    #[test]
    fn classifies_transient_server_errors() {
        let err = |code: &str| ServerError {
            severity: "FATAL".into(),
            code: code.into(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        for code in ["57P01", "08006", "55006", "53300", "40001"] {
            assert!(err(code).is_transient(), "{code}");
        }
        for code in ["42704", "28P01", "42501", "0A000"] {
            assert!(!err(code).is_transient(), "{code}");
        }
    }
}
