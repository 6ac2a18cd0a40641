//! A started logical replication stream: frames in, decoded pgoutput
//! messages out, standby status updates back.
//!
//! # Progress contract
//!
//! The stream never decides on its own what is durable. The caller reports
//! positions whose effects are durable (printed and flushed for `tail`;
//! committed on the target for `run`) through [`LogicalStream::confirm_flushed`],
//! and only those are ever sent as the flush LSN, which is what moves the
//! slot's `confirmed_flush_lsn`. The confirmed position is monotonic. Status
//! updates go out every `status_interval` and at once when a keepalive asks
//! for a reply (the server is about to hit `wal_sender_timeout`).
//!
//! # Batching
//!
//! [`LogicalStream::next_buffered`] decodes from bytes already received and
//! does no I/O; when it returns `None` the caller flushes its own output,
//! confirms what became durable, and awaits [`LogicalStream::fill`]. This keeps
//! one output flush per socket read instead of one per message.

use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use postgres_protocol::escape::{escape_identifier, escape_literal};

use crate::lsn::Lsn;
use crate::pg::conninfo::ConnInfo;
use crate::replication::pgoutput::{DecodeError, Decoder, PgOutputMessage, ProtoVersion};
use crate::replication::protocol::{ProtocolError, ServerMessage, StandbyStatusUpdate};
use crate::replication::wire::{CopyFrame, ReplicationConnection, WireError};

/// The pgoutput protocol version walshift asks for.
pub const PGOUTPUT_PROTO_VERSION: ProtoVersion = ProtoVersion::V1;

/// What to stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Replication slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// Where to start; `Lsn::ZERO` means the slot's `confirmed_flush_lsn`.
    /// Transactions that committed before it are not sent.
    pub start_lsn: Lsn,
    /// Interval between standby status updates.
    pub status_interval: Duration,
}

/// Errors of a replication stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The connection failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A replication sub-protocol message was malformed.
    #[error("malformed replication message: {0}")]
    Protocol(#[from] ProtocolError),
    /// A pgoutput message was malformed.
    #[error("cannot decode pgoutput message at {lsn}: {source}")]
    Decode {
        /// Position of the message.
        lsn: Lsn,
        /// The cause.
        source: DecodeError,
    },
    /// The server ended the stream.
    #[error("server ended the replication stream")]
    Ended,
    /// Nothing arrived for `receive_timeout_ms`, although a reply was asked
    /// for at half of it: the network path or the server is stuck.
    #[error(
        "no message from the server for {} ms (receive_timeout_ms); \
         the replication connection is treated as dead",
        .0.as_millis()
    )]
    ReceiveTimeout(Duration),
}

impl StreamError {
    /// Whether reconnecting can help.
    pub fn is_transient(&self) -> bool {
        match self {
            StreamError::Wire(e) => e.is_transient(),
            StreamError::Ended | StreamError::ReceiveTimeout(_) => true,
            StreamError::Protocol(_) | StreamError::Decode { .. } => false,
        }
    }

    /// Whether the connection went silent ([`StreamError::ReceiveTimeout`]):
    /// its walsender may not know yet and still hold the slot.
    pub fn is_receive_timeout(&self) -> bool {
        matches!(self, StreamError::ReceiveTimeout(_))
    }

    /// Whether the server could not be reached at all (connect refused or
    /// timed out), as opposed to a connection the server ended.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StreamError::Wire(WireError::Connect { .. } | WireError::ConnectTimeout { .. })
        )
    }
}

/// One event from the stream.
#[derive(Debug)]
pub enum StreamEvent {
    /// A decoded pgoutput message.
    Message {
        /// WAL position of the message (`XLogData.wal_start`).
        lsn: Lsn,
        /// The message.
        message: PgOutputMessage,
    },
    /// A keepalive: the server has sent everything before `wal_end`.
    Keepalive {
        /// The server's current WAL end.
        wal_end: Lsn,
    },
}

/// A logical replication stream in CopyBoth mode.
#[derive(Debug)]
pub struct LogicalStream {
    conn: ReplicationConnection,
    decoder: Decoder,
    status_interval: Duration,
    last_status: Instant,
    received: Lsn,
    flushed: Lsn,
    /// The flush position in the last status update sent.
    reported: Lsn,
    reply_pending: bool,
    status_buf: BytesMut,
    /// See [`crate::config::DEFAULT_RECEIVE_TIMEOUT_MS`]; `None`: wait forever.
    receive_timeout: Option<Duration>,
    /// When bytes last arrived from the server.
    last_received: Instant,
    /// Whether a reply was asked for since bytes last arrived.
    pinged: bool,
}

impl LogicalStream {
    /// Connects and issues `START_REPLICATION` for `options`.
    pub async fn start(info: &ConnInfo, options: &StreamOptions) -> Result<Self, StreamError> {
        let mut conn = ReplicationConnection::connect(info).await?;
        conn.start_copy_both(&start_replication_command(options)).await?;
        Ok(LogicalStream {
            conn,
            decoder: Decoder::new(PGOUTPUT_PROTO_VERSION),
            status_interval: options.status_interval,
            last_status: Instant::now(),
            received: options.start_lsn,
            // Nothing is confirmed until the caller says so: `0/0` leaves the
            // slot where it is, even when starting at an explicit position.
            flushed: Lsn::ZERO,
            reported: Lsn::ZERO,
            reply_pending: false,
            status_buf: BytesMut::with_capacity(64),
            receive_timeout: info.receive_timeout,
            last_received: Instant::now(),
            pinged: false,
        })
    }

    /// The walsender process serving this stream.
    pub fn backend_pid(&self) -> Option<i32> {
        self.conn.backend_pid()
    }

    /// Decodes the next event from already-received bytes; `None` when the
    /// caller should flush its output and await [`Self::fill`].
    pub fn next_buffered(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        let payload = match self.conn.next_buffered_frame()? {
            None => return Ok(None),
            Some(CopyFrame::Done) => return Err(StreamError::Ended),
            Some(CopyFrame::Data(payload)) => payload,
        };
        match ServerMessage::parse(payload)? {
            ServerMessage::XLogData(x) => {
                self.received = self.received.max(x.wal_start);
                let message = self
                    .decoder
                    .decode(x.data)
                    .map_err(|source| StreamError::Decode { lsn: x.wal_start, source })?;
                Ok(Some(StreamEvent::Message { lsn: x.wal_start, message }))
            }
            ServerMessage::Keepalive(k) => {
                self.received = self.received.max(k.wal_end);
                self.reply_pending |= k.reply_requested;
                Ok(Some(StreamEvent::Keepalive { wal_end: k.wal_end }))
            }
        }
    }

    /// Reads more bytes from the server. Cancel-safe. Fails with
    /// [`StreamError::ReceiveTimeout`] when nothing has arrived for the
    /// receive timeout (bytes already waiting in the socket always win over
    /// the deadline, so time spent not reading is not held against the server).
    pub async fn fill(&mut self) -> Result<(), StreamError> {
        let Some(limit) = self.receive_timeout else {
            return Ok(self.conn.fill().await?);
        };
        let deadline = self.last_received + limit;
        match tokio::time::timeout_at(deadline.into(), self.conn.fill()).await {
            Ok(filled) => {
                filled?;
                self.last_received = Instant::now();
                self.pinged = false;
                Ok(())
            }
            Err(_) => Err(StreamError::ReceiveTimeout(limit)),
        }
    }

    /// Records that everything up to `lsn` is durably processed. Never
    /// moves backwards.
    pub fn confirm_flushed(&mut self, lsn: Lsn) {
        self.flushed = self.flushed.max(lsn);
    }

    /// The highest confirmed position.
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// When the next status update is due: the periodic one, or the one
    /// asking for a reply when the server has been silent for half the
    /// receive timeout.
    pub fn next_status_at(&self) -> Instant {
        let periodic = self.last_status + self.status_interval;
        match self.ping_at() {
            Some(ping) => periodic.min(ping),
            None => periodic,
        }
    }

    fn ping_at(&self) -> Option<Instant> {
        let limit = self.receive_timeout?;
        (!self.pinged).then(|| self.last_received + limit / 2)
    }

    /// Sends a status update if one is due, was requested by the server, or
    /// `force` is set; it asks for a reply when the server has been silent
    /// for half the receive timeout.
    pub async fn send_status_if_due(&mut self, force: bool) -> Result<(), StreamError> {
        let now = Instant::now();
        if self.ping_at().is_some_and(|ping| now >= ping) {
            self.pinged = true;
            self.send_status(true).await?;
        } else if force || self.reply_pending || now >= self.last_status + self.status_interval {
            self.send_status(false).await?;
        }
        Ok(())
    }

    /// Sends a status update if the confirmed position moved since the last
    /// one, so the slot follows the consumer's durable progress at once (as
    /// native apply workers do) rather than once per status interval.
    pub async fn send_status_if_advanced(&mut self) -> Result<(), StreamError> {
        if self.flushed > self.reported {
            self.send_status(false).await?;
        }
        Ok(())
    }

    /// Sends a status update asking the server to answer with a keepalive,
    /// which tells us how far it has read even when it has nothing to send.
    pub async fn request_keepalive(&mut self) -> Result<(), StreamError> {
        self.send_status(true).await
    }

    async fn send_status(&mut self, reply_requested: bool) -> Result<(), StreamError> {
        let update = StandbyStatusUpdate {
            write: self.received.max(self.flushed),
            flush: self.flushed,
            apply: self.flushed,
            reply_requested,
        };
        self.status_buf.clear();
        update.encode(SystemTime::now(), &mut self.status_buf);
        self.conn.send_copy_data(&self.status_buf).await?;
        self.last_status = Instant::now();
        self.reported = self.flushed;
        self.reply_pending = false;
        tracing::trace!(flush = %self.flushed, "sent standby status update");
        Ok(())
    }

    /// Sends a final status update and closes the connection.
    pub async fn close(mut self) -> Result<(), StreamError> {
        self.send_status(false).await?;
        self.conn.close().await?;
        Ok(())
    }
}

/// `START_REPLICATION SLOT "slot" LOGICAL X/Y (proto_version '1', publication_names '"pub"', messages 'true')`.
pub fn start_replication_command(options: &StreamOptions) -> String {
    // publication_names is itself a list of identifiers inside a string literal.
    let publications = escape_literal(&escape_identifier(&options.publication));
    format!(
        "START_REPLICATION SLOT {} LOGICAL {} (proto_version '{}', publication_names {}, messages 'true')",
        escape_identifier(&options.slot),
        options.start_lsn,
        PGOUTPUT_PROTO_VERSION,
        publications,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_command_quotes_names() {
        let cmd = start_replication_command(&StreamOptions {
            slot: "walshift_billing".into(),
            publication: "pub'x\"y".into(),
            start_lsn: Lsn(0x1_0000_0010),
            status_interval: Duration::from_secs(10),
        });
        assert_eq!(
            cmd,
            "START_REPLICATION SLOT \"walshift_billing\" LOGICAL 1/10 (proto_version '1', \
             publication_names '\"pub''x\"\"y\"', messages 'true')"
        );
    }
}
