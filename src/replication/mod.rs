//! The replication side: a replication-protocol client and the pgoutput
//! decoder.
//!
//! ```text
//! wire (socket, TLS, auth, CopyBoth frames)
//!   └─▶ protocol (XLogData / keepalive / status update)
//!         └─▶ pgoutput (decode) ─▶ relation_cache (rel id → columns)
//! stream = wire + protocol + pgoutput + the progress (ack) rule
//! reader = stream ─▶ projected StreamItems ─▶ applier; durable LSN ─▶ flush LSN
//! slot   = IDENTIFY_SYSTEM, CREATE/DROP_REPLICATION_SLOT
//! ```
//!
//! Progress rule: the flush LSN sent to the server is only ever a position
//! the caller has confirmed as durably processed (see [`stream`]).

pub mod heartbeat;
pub mod pgoutput;
pub mod protocol;
pub mod reader;
pub mod relation_cache;
pub mod slot;
pub mod stream;
pub mod wire;
