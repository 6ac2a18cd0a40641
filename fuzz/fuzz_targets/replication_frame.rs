//! The replication stream from the socket's bytes on: CopyBoth framing
//! (`wire::parse_copy_both_frame`), the CopyData sub-messages
//! (`protocol::ServerMessage::parse`) and the pgoutput decoder behind them.
//!
//! Checks, beyond "never panics, never allocates from a length field":
//! - every frame returned consumes input (no loop without progress);
//! - reassembly does not depend on how the bytes arrive: feeding the input
//!   in chunks (size from the first byte) gives the same frames, messages
//!   and errors as feeding it at once;
//! - a partial frame never makes the buffer reserve more than
//!   `MAX_RESERVE_AHEAD` beyond what it holds.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use walshift::replication::pgoutput::{Decoder, ProtoVersion};
use walshift::replication::protocol::ServerMessage;
use walshift::replication::wire::{CopyFrame, MAX_RESERVE_AHEAD, parse_copy_both_frame};

/// What one step of the reader saw, compared between the two feedings.
#[derive(Debug, PartialEq)]
enum Seen {
    Message(String),
    Done,
    Error(String),
}

/// Parses every whole frame in `buf`; `true` once the stream failed.
fn drain(buf: &mut BytesMut, decoder: &mut Decoder, seen: &mut Vec<Seen>) -> bool {
    loop {
        let before = buf.len();
        let frame = match parse_copy_both_frame(buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                // Vec-style doubling may round a reservation up, hence the 2x.
                let bound = 2 * (buf.len() + MAX_RESERVE_AHEAD) + 64 * 1024;
                assert!(
                    buf.capacity() <= bound,
                    "capacity {} for {} bytes",
                    buf.capacity(),
                    buf.len()
                );
                return false;
            }
            Err(err) => {
                let _ = err.is_transient();
                seen.push(Seen::Error(err.to_string()));
                return true;
            }
        };
        assert!(buf.len() < before, "frame returned without consuming input");
        match frame {
            CopyFrame::Done => seen.push(Seen::Done),
            CopyFrame::Data(payload) => seen.push(match ServerMessage::parse(payload) {
                Ok(ServerMessage::XLogData(x)) => {
                    let decoded = decoder.decode(x.data.clone());
                    Seen::Message(format!("{x:?} {decoded:?}"))
                }
                Ok(keepalive) => Seen::Message(format!("{keepalive:?}")),
                Err(err) => Seen::Error(err.to_string()),
            }),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 64) + 1;

    let mut whole = Vec::new();
    let mut buf = BytesMut::from(data);
    drain(&mut buf, &mut Decoder::new(ProtoVersion::V1), &mut whole);

    let mut chunked = Vec::new();
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::new(ProtoVersion::V1);
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        if drain(&mut buf, &mut decoder, &mut chunked) {
            break;
        }
    }
    assert_eq!(whole, chunked, "framing depends on how the bytes arrive (chunks of {chunk})");
});
