//! The replication sub-protocol carried inside `CopyData` messages.
//!
//! Once `START_REPLICATION` switches the connection to CopyBoth mode, every
//! server message is a `CopyData` whose payload starts with a one-byte tag:
//!
//! | tag | direction | message |
//! |-----|-----------|---------|
//! | `w` | server → client | XLogData: `wal_start`, `wal_end`, send time, then a pgoutput message |
//! | `k` | server → client | Primary keepalive: `wal_end`, send time, "reply requested" flag |
//! | `r` | client → server | Standby status update: write / flush / apply LSNs, time, reply flag |
//!
//! See <https://www.postgresql.org/docs/15/protocol-replication.html>.
//! Parsing is pure and never panics: short or unknown payloads are errors.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::lsn::Lsn;

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A message the server sends inside `CopyData` during replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// WAL data: one pgoutput message.
    XLogData(XLogData),
    /// A keepalive, possibly asking for an immediate status update.
    Keepalive(PrimaryKeepalive),
}

/// An XLogData message (`w`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// WAL position this message was decoded at.
    pub wal_start: Lsn,
    /// Current end of WAL on the server.
    pub wal_end: Lsn,
    /// Server clock when sent, microseconds since 2000-01-01.
    pub send_time_micros: i64,
    /// The pgoutput payload (a slice of the received frame, not a copy).
    pub data: Bytes,
}

/// A primary keepalive message (`k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// Current end of WAL on the server.
    pub wal_end: Lsn,
    /// Server clock when sent, microseconds since 2000-01-01.
    pub send_time_micros: i64,
    /// The server asks for a status update at once (it is close to `wal_sender_timeout`).
    pub reply_requested: bool,
}

/// Why a replication payload could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The payload was empty.
    #[error("empty CopyData payload in replication stream")]
    Empty,
    /// The payload is shorter than its fixed header.
    #[error("truncated {what} message: need {needed} bytes, got {got}")]
    Truncated {
        /// Which message.
        what: &'static str,
        /// Bytes the header needs.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// An unknown tag.
    #[error("unknown replication message tag 0x{0:02x}")]
    UnknownTag(u8),
}

impl ServerMessage {
    /// Parses one `CopyData` payload received during replication.
    pub fn parse(mut payload: Bytes) -> Result<ServerMessage, ProtocolError> {
        let Some(&tag) = payload.first() else {
            return Err(ProtocolError::Empty);
        };
        match tag {
            b'w' => {
                const HEADER: usize = 1 + 8 + 8 + 8;
                if payload.len() < HEADER {
                    return Err(ProtocolError::Truncated {
                        what: "XLogData",
                        needed: HEADER,
                        got: payload.len(),
                    });
                }
                payload.advance(1);
                let wal_start = Lsn(payload.get_u64());
                let wal_end = Lsn(payload.get_u64());
                let send_time_micros = payload.get_i64();
                Ok(ServerMessage::XLogData(XLogData {
                    wal_start,
                    wal_end,
                    send_time_micros,
                    data: payload,
                }))
            }
            b'k' => {
                const LEN: usize = 1 + 8 + 8 + 1;
                if payload.len() < LEN {
                    return Err(ProtocolError::Truncated {
                        what: "primary keepalive",
                        needed: LEN,
                        got: payload.len(),
                    });
                }
                payload.advance(1);
                Ok(ServerMessage::Keepalive(PrimaryKeepalive {
                    wal_end: Lsn(payload.get_u64()),
                    send_time_micros: payload.get_i64(),
                    reply_requested: payload.get_u8() != 0,
                }))
            }
            other => Err(ProtocolError::UnknownTag(other)),
        }
    }
}

/// A standby status update (`r`) telling the server how far we got.
///
/// Only `flush` moves the slot's `confirmed_flush_lsn`; callers must only put
/// positions there whose effects are durable (printed, or committed on the
/// target). `Lsn::ZERO` means "nothing confirmed", which leaves the slot alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last WAL position received.
    pub write: Lsn,
    /// Last WAL position durably processed.
    pub flush: Lsn,
    /// Last WAL position applied (we report `flush`).
    pub apply: Lsn,
    /// Ask the server to answer with a keepalive.
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Encodes the update as a `CopyData` payload, stamped with `now`.
    pub fn encode(&self, now: SystemTime, out: &mut BytesMut) {
        out.reserve(34);
        out.put_u8(b'r');
        out.put_u64(self.write.0);
        out.put_u64(self.flush.0);
        out.put_u64(self.apply.0);
        out.put_i64(pg_time_micros(now));
        out.put_u8(u8::from(self.reply_requested));
    }
}

/// `now` as microseconds since the Postgres epoch (saturating on absurd clocks).
pub fn pg_time_micros(now: SystemTime) -> i64 {
    let unix_micros = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    };
    unix_micros.saturating_sub(PG_EPOCH_OFFSET_MICROS)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn xlog(wal_start: u64, wal_end: u64, data: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(wal_start);
        b.put_u64(wal_end);
        b.put_i64(42);
        b.put_slice(data);
        b.freeze()
    }

    #[test]
    fn parses_xlogdata_without_copying_the_payload() {
        let frame = xlog(0x10, 0x20, b"Bhello");
        let ServerMessage::XLogData(x) = ServerMessage::parse(frame.clone()).unwrap() else {
            panic!("expected XLogData");
        };
        assert_eq!((x.wal_start, x.wal_end, x.send_time_micros), (Lsn(0x10), Lsn(0x20), 42));
        assert_eq!(&x.data[..], b"Bhello");
        assert_eq!(x.data.as_ptr(), frame[25..].as_ptr());
    }

    #[test]
    fn parses_keepalive() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(0x99);
        b.put_i64(7);
        b.put_u8(1);
        let msg = ServerMessage::parse(b.freeze()).unwrap();
        assert_eq!(
            msg,
            ServerMessage::Keepalive(PrimaryKeepalive {
                wal_end: Lsn(0x99),
                send_time_micros: 7,
                reply_requested: true
            })
        );
    }

    #[test]
    fn rejects_short_and_unknown_payloads() {
        assert_eq!(ServerMessage::parse(Bytes::new()), Err(ProtocolError::Empty));
        let full = xlog(1, 2, b"");
        for len in 1..full.len() {
            assert!(matches!(
                ServerMessage::parse(full.slice(..len)),
                Err(ProtocolError::Truncated { what: "XLogData", .. })
            ));
        }
        assert!(ServerMessage::parse(Bytes::from_static(b"k\0\0")).is_err());
        assert_eq!(
            ServerMessage::parse(Bytes::from_static(b"z")),
            Err(ProtocolError::UnknownTag(b'z'))
        );
    }

    #[test]
    fn encodes_status_update() {
        let mut out = BytesMut::new();
        let update = StandbyStatusUpdate {
            write: Lsn(3),
            flush: Lsn(2),
            apply: Lsn(1),
            reply_requested: false,
        };
        update.encode(UNIX_EPOCH + Duration::from_secs(946_684_800), &mut out);
        assert_eq!(out.len(), 34);
        assert_eq!(out[0], b'r');
        assert_eq!(&out[1..9], &3u64.to_be_bytes());
        assert_eq!(&out[9..17], &2u64.to_be_bytes());
        assert_eq!(&out[17..25], &1u64.to_be_bytes());
        assert_eq!(&out[25..33], &0i64.to_be_bytes());
        assert_eq!(out[33], 0);
    }
}
