//! The pgoutput decoder on one XLogData payload.
//!
//! Checks, beyond "never panics, never allocates from a length field":
//! - a message that decodes re-encodes to exactly the input bytes (the
//!   decoder is strict and keeps every field, so anything else is a field
//!   read wrongly or skipped);
//! - column values and logical message contents are slices of the input
//!   (the zero-copy contract);
//! - errors and timestamps format without panicking.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walshift::replication::pgoutput::{
    Decoder, PgOutputMessage, PgTimestamp, ProtoVersion, TupleData, TupleValue,
};

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    let message = match Decoder::new(ProtoVersion::V1).decode(input.clone()) {
        Ok(message) => message,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    let encoded = match message.encode_v1() {
        Ok(encoded) => encoded,
        Err(err) => panic!("decoded message does not re-encode: {err}: {message:?}"),
    };
    assert_eq!(encoded, input, "decode/encode round trip changed the bytes: {message:?}");

    let within = |value: &Bytes| {
        value.is_empty()
            || (input.as_ptr() <= value.as_ptr()
                && value.as_ptr() as usize + value.len() <= input.as_ptr() as usize + input.len())
    };
    let tuple_within = |tuple: &TupleData| {
        tuple.columns.iter().all(|value| match value {
            TupleValue::Text(bytes) | TupleValue::Binary(bytes) => within(bytes),
            TupleValue::Null | TupleValue::UnchangedToast => true,
        })
    };
    let timestamp = |ts: PgTimestamp| {
        let _ = (ts.to_string(), ts.unix_micros());
    };
    match &message {
        PgOutputMessage::Begin(m) => timestamp(m.commit_time),
        PgOutputMessage::Commit(m) => timestamp(m.commit_time),
        PgOutputMessage::Insert(m) => assert!(tuple_within(&m.new_tuple), "insert copied a value"),
        PgOutputMessage::Update(m) => {
            assert!(tuple_within(&m.new_tuple), "update copied a value");
            assert!(m.old_tuple.as_ref().is_none_or(|old| tuple_within(&old.tuple)));
        }
        PgOutputMessage::Delete(m) => {
            assert!(tuple_within(&m.old_tuple.tuple), "delete copied a value");
        }
        PgOutputMessage::Message(m) => assert!(within(&m.content), "message content copied"),
        PgOutputMessage::Origin(_)
        | PgOutputMessage::Relation(_)
        | PgOutputMessage::Type(_)
        | PgOutputMessage::Truncate(_) => {}
    }
    let _ = (format!("{message:?}"), message.kind_name(), message.tag());
});
