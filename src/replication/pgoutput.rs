//! Decoder for the messages of the `pgoutput` logical decoding plugin.
//!
//! Every XLogData message of a logical replication stream carries exactly one
//! pgoutput message: a one-byte tag followed by fields in network byte order.
//! The formats are specified in
//! <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.
//!
//! # Contract
//!
//! - **Pure.** [`Decoder::decode`] turns one payload into one
//!   [`PgOutputMessage`]; it does no I/O and keeps no state across messages
//!   in protocol version 1.
//! - **Zero-copy.** The input is a [`Bytes`]; column values
//!   ([`TupleValue::Text`], [`TupleValue::Binary`]) and logical message
//!   contents are `Bytes` slices of it, so decoding never copies a value. Only
//!   names (namespaces, relations, columns, types, origins, message prefixes)
//!   become `String`s: they are short, and an invalid UTF-8 name is an error
//!   rather than a lossy conversion.
//! - **Never panics.** The input comes from the network. Every read is
//!   length-checked; malformed input (a short field, an unknown tag, a
//!   negative length, bytes left over after a complete message) is a typed
//!   [`DecodeError`]. Counts read from the input never size an allocation
//!   beyond what the remaining bytes could hold. The tests feed every strict
//!   prefix and thousands of mutations of real captured messages through the
//!   decoder (see `testdata/`).
//! - **Strict.** Bits and bytes this decoder does not understand (an unknown
//!   replica identity, truncate option or logical message flag) are errors,
//!   not silently ignored: a consumer that guesses at the meaning of a change
//!   corrupts the shadow copy.
//!
//! # Protocol versions
//!
//! Only protocol version 1 (`proto_version '1'` in `START_REPLICATION`,
//! [`ProtoVersion::V1`]) is implemented. Later versions add streamed
//! in-progress transactions (v2: messages `S` stream start, `E` stream stop,
//! `c` stream commit, `A` stream abort, and an `Int32` xid in front of the
//! Relation, Type, Insert, Update, Delete, Truncate and Message bodies while
//! inside a stream), two-phase commit (v3: `b`, `P`, `K`, `r`, `p`) and
//! parallel apply (v4: more fields in stream abort). Those tags are rejected
//! with [`DecodeError::UnsupportedMessage`] in version 1. Room for them:
//! [`Decoder`] is a value constructed with the negotiated [`ProtoVersion`]
//! (an enum, so an unimplemented version cannot be asked for) and `decode`
//! takes `&mut self`, so the "inside a stream" state of v2 can live there; the
//! in-stream xid can then be added to the affected message structs (or a
//! wrapper) without changing how callers drive the decoder.
//!
//! [`PgOutputMessage::encode_v1`] writes messages back to bytes; it exists
//! for round-trip tests and for fakes that play a server.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::lsn::Lsn;

/// Message tags, as sent by the server.
mod tag {
    pub const BEGIN: u8 = b'B';
    pub const COMMIT: u8 = b'C';
    pub const ORIGIN: u8 = b'O';
    pub const RELATION: u8 = b'R';
    pub const TYPE: u8 = b'Y';
    pub const INSERT: u8 = b'I';
    pub const UPDATE: u8 = b'U';
    pub const DELETE: u8 = b'D';
    pub const TRUNCATE: u8 = b'T';
    pub const MESSAGE: u8 = b'M';

    /// Tags of protocol versions 2 (streaming: stream start, stop, commit,
    /// abort) and 3 (two-phase: begin prepare, prepare, commit prepared,
    /// rollback prepared, stream prepare).
    pub const LATER_VERSIONS: [u8; 9] = [b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'p'];

    /// Tuple markers inside Insert, Update and Delete.
    pub const NEW_TUPLE: u8 = b'N';
    pub const KEY_TUPLE: u8 = b'K';
    pub const OLD_TUPLE: u8 = b'O';

    /// Column kinds inside TupleData.
    pub const NULL: u8 = b'n';
    pub const UNCHANGED_TOAST: u8 = b'u';
    pub const TEXT: u8 = b't';
    pub const BINARY: u8 = b'b';
}

/// Truncate option bit: `TRUNCATE ... CASCADE`.
const TRUNCATE_CASCADE: u8 = 1;
/// Truncate option bit: `TRUNCATE ... RESTART IDENTITY`.
const TRUNCATE_RESTART_IDENTITY: u8 = 2;
/// Logical message flag bit: the message was emitted transactionally.
const MESSAGE_TRANSACTIONAL: u8 = 1;
/// Relation column flag bit: the column is part of the replica identity key.
pub const COLUMN_FLAG_KEY: u8 = 1;

/// Days from the Unix epoch (1970-01-01) to the Postgres epoch (2000-01-01).
const UNIX_TO_PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A pgoutput protocol version this decoder implements.
///
/// `Display` prints the number, as `START_REPLICATION ... (proto_version '1')` wants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtoVersion {
    /// Version 1 (PostgreSQL 10 and later): whole transactions, sent at commit.
    V1,
}

impl ProtoVersion {
    /// The newest version implemented.
    pub const LATEST: ProtoVersion = ProtoVersion::V1;

    /// The version number sent to the server.
    pub fn number(self) -> u32 {
        match self {
            ProtoVersion::V1 => 1,
        }
    }
}

impl fmt::Display for ProtoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

impl TryFrom<u32> for ProtoVersion {
    type Error = UnsupportedProtoVersion;

    fn try_from(number: u32) -> Result<Self, Self::Error> {
        match number {
            1 => Ok(ProtoVersion::V1),
            requested => Err(UnsupportedProtoVersion { requested }),
        }
    }
}

/// A pgoutput protocol version number this decoder does not implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput protocol version {requested} is not supported (supported: 1)")]
pub struct UnsupportedProtoVersion {
    /// The version number that was asked for.
    pub requested: u32,
}

/// Decodes pgoutput messages for one replication stream.
///
/// Construct one per stream with the protocol version passed to
/// `START_REPLICATION`, and feed it every XLogData payload in order.
#[derive(Clone, Debug)]
pub struct Decoder {
    proto_version: ProtoVersion,
}

impl Decoder {
    /// A decoder for the negotiated protocol version.
    pub fn new(proto_version: ProtoVersion) -> Self {
        Decoder { proto_version }
    }

    /// The protocol version this decoder was created for.
    pub fn proto_version(&self) -> ProtoVersion {
        self.proto_version
    }

    /// Decodes one pgoutput message (the payload of one XLogData message).
    ///
    /// Values in the result are slices of `data`; the whole payload must be
    /// one complete message.
    pub fn decode(&mut self, data: Bytes) -> Result<PgOutputMessage, DecodeError> {
        let mut r = Reader::new(data);
        let tag = r.u8("message tag")?;
        let message = match tag {
            tag::BEGIN => PgOutputMessage::Begin(Begin {
                final_lsn: r.lsn("begin final lsn")?,
                commit_time: r.timestamp("begin commit timestamp")?,
                xid: r.u32("begin xid")?,
            }),
            tag::COMMIT => PgOutputMessage::Commit(Commit {
                flags: r.u8("commit flags")?,
                commit_lsn: r.lsn("commit lsn")?,
                end_lsn: r.lsn("commit end lsn")?,
                commit_time: r.timestamp("commit timestamp")?,
            }),
            tag::ORIGIN => PgOutputMessage::Origin(Origin {
                commit_lsn: r.lsn("origin commit lsn")?,
                name: r.cstring("origin name")?,
            }),
            tag::RELATION => PgOutputMessage::Relation(decode_relation(&mut r)?),
            tag::TYPE => PgOutputMessage::Type(TypeMessage {
                type_oid: r.u32("type oid")?,
                namespace: r.cstring("type namespace")?,
                name: r.cstring("type name")?,
            }),
            tag::INSERT => {
                let rel_id = r.u32("insert relation id")?;
                expect_new_tuple_marker(&mut r, tag)?;
                PgOutputMessage::Insert(Insert { rel_id, new_tuple: decode_tuple(&mut r)? })
            }
            tag::UPDATE => {
                let rel_id = r.u32("update relation id")?;
                let old_tuple = match r.u8("tuple marker")? {
                    tag::NEW_TUPLE => None,
                    marker => {
                        let kind = old_tuple_kind(marker, tag, "'K', 'O' or 'N'")?;
                        let tuple = decode_tuple(&mut r)?;
                        expect_new_tuple_marker(&mut r, tag)?;
                        Some(OldTuple { kind, tuple })
                    }
                };
                PgOutputMessage::Update(Update {
                    rel_id,
                    old_tuple,
                    new_tuple: decode_tuple(&mut r)?,
                })
            }
            tag::DELETE => {
                let rel_id = r.u32("delete relation id")?;
                let kind = old_tuple_kind(r.u8("tuple marker")?, tag, "'K' or 'O'")?;
                PgOutputMessage::Delete(Delete {
                    rel_id,
                    old_tuple: OldTuple { kind, tuple: decode_tuple(&mut r)? },
                })
            }
            tag::TRUNCATE => PgOutputMessage::Truncate(decode_truncate(&mut r)?),
            tag::MESSAGE => {
                let flags = r.u8("message flags")?;
                if flags & !MESSAGE_TRANSACTIONAL != 0 {
                    return Err(DecodeError::UnknownMessageFlags(flags));
                }
                let lsn = r.lsn("message lsn")?;
                let prefix = r.cstring("message prefix")?;
                let len = r.length("message content length")?;
                PgOutputMessage::Message(LogicalMessage {
                    transactional: flags & MESSAGE_TRANSACTIONAL != 0,
                    lsn,
                    prefix,
                    content: r.take(len, "message content")?,
                })
            }
            t if tag::LATER_VERSIONS.contains(&t) => {
                return Err(DecodeError::UnsupportedMessage {
                    tag: t,
                    proto_version: self.proto_version,
                });
            }
            t => return Err(DecodeError::UnknownMessageTag(t)),
        };
        r.finish(tag)?;
        Ok(message)
    }
}

fn decode_relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let rel_id = r.u32("relation id")?;
    let namespace = r.cstring("relation namespace")?;
    let name = r.cstring("relation name")?;
    let identity = r.u8("relation replica identity")?;
    let replica_identity = ReplicaIdentity::from_byte(identity)
        .ok_or(DecodeError::UnknownReplicaIdentity(identity))?;
    let count = usize::from(r.u16("relation column count")?);
    // Each column takes at least 10 bytes: flags, an empty name, oid, typmod.
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        columns.push(RelationColumn {
            flags: r.u8("relation column flags")?,
            name: r.cstring("relation column name")?,
            type_oid: r.u32("relation column type oid")?,
            type_modifier: r.i32("relation column type modifier")?,
        });
    }
    Ok(Relation { rel_id, namespace, name, replica_identity, columns })
}

fn decode_truncate(r: &mut Reader) -> Result<Truncate, DecodeError> {
    let count = r.length("truncate relation count")?;
    let options = r.u8("truncate options")?;
    if options & !(TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY) != 0 {
        return Err(DecodeError::UnknownTruncateOptions(options));
    }
    // Check the whole list up front so a huge count cannot size the Vec.
    let needed = count.saturating_mul(4);
    if needed > r.remaining() {
        return Err(DecodeError::Truncated {
            what: "truncate relation ids",
            needed,
            remaining: r.remaining(),
        });
    }
    let mut rel_ids = Vec::with_capacity(count);
    for _ in 0..count {
        rel_ids.push(r.u32("truncate relation id")?);
    }
    Ok(Truncate {
        cascade: options & TRUNCATE_CASCADE != 0,
        restart_identity: options & TRUNCATE_RESTART_IDENTITY != 0,
        rel_ids,
    })
}

fn decode_tuple(r: &mut Reader) -> Result<TupleData, DecodeError> {
    let count = usize::from(r.u16("tuple column count")?);
    // Each column takes at least its one-byte kind.
    let mut columns = Vec::with_capacity(count.min(r.remaining()));
    for column in 0..count {
        let value = match r.u8("tuple column kind")? {
            tag::NULL => TupleValue::Null,
            tag::UNCHANGED_TOAST => TupleValue::UnchangedToast,
            tag::TEXT => {
                let len = r.length("tuple column length")?;
                TupleValue::Text(r.take(len, "tuple column value")?)
            }
            tag::BINARY => {
                let len = r.length("tuple column length")?;
                TupleValue::Binary(r.take(len, "tuple column value")?)
            }
            other => return Err(DecodeError::UnknownTupleKind { tag: other, column }),
        };
        columns.push(value);
    }
    Ok(TupleData { columns })
}

/// Reads the `N` marker that precedes a new tuple.
fn expect_new_tuple_marker(r: &mut Reader, message_tag: u8) -> Result<(), DecodeError> {
    match r.u8("tuple marker")? {
        tag::NEW_TUPLE => Ok(()),
        found => {
            Err(DecodeError::UnexpectedTupleMarker { tag: message_tag, expected: "'N'", found })
        }
    }
}

/// The kind of old tuple a `K` or `O` marker announces.
fn old_tuple_kind(
    marker: u8,
    message_tag: u8,
    expected: &'static str,
) -> Result<OldTupleKind, DecodeError> {
    OldTupleKind::from_marker(marker).ok_or(DecodeError::UnexpectedTupleMarker {
        tag: message_tag,
        expected,
        found: marker,
    })
}

/// A bounds-checked cursor over one message.
struct Reader {
    data: Bytes,
    pos: usize,
}

impl Reader {
    fn new(data: Bytes) -> Self {
        Reader { data, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// Advances past the next `n` bytes, returning where they start.
    fn advance(&mut self, n: usize, what: &'static str) -> Result<usize, DecodeError> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(DecodeError::Truncated { what, needed: n, remaining });
        }
        let start = self.pos;
        self.pos += n;
        Ok(start)
    }

    /// The next `n` bytes as a slice of the input (no copy).
    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.advance(n, what)?;
        Ok(self.data.slice(start..start + n))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let start = self.advance(N, what)?;
        let mut out = [0; N];
        out.copy_from_slice(&self.data[start..start + N]);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(what)?)))
    }

    fn timestamp(&mut self, what: &'static str) -> Result<PgTimestamp, DecodeError> {
        Ok(PgTimestamp(i64::from_be_bytes(self.array(what)?)))
    }

    /// An `Int32` length or count; negative values are errors.
    fn length(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let value = self.i32(what)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength { what, value })
    }

    /// A NUL-terminated UTF-8 string.
    fn cstring(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let end =
            rest.iter().position(|&b| b == 0).ok_or(DecodeError::UnterminatedString { what })?;
        let (text, _) = rest.split_at(end);
        let text = std::str::from_utf8(text).map_err(|_| DecodeError::InvalidUtf8 { what })?;
        self.pos += text.len() + 1;
        Ok(text.to_owned())
    }

    /// Succeeds only if the whole message was consumed.
    fn finish(self, tag: u8) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { tag, count }),
        }
    }
}

/// Why a payload is not a valid pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ended before a field was complete.
    #[error(
        "pgoutput message truncated reading {what}: needed {needed} bytes, {remaining} remaining"
    )]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the message.
        remaining: usize,
    },
    /// The first byte is not a pgoutput message tag.
    #[error("unknown pgoutput message tag {}", TagDisplay(*.0))]
    UnknownMessageTag(u8),
    /// A message of a later protocol version than the negotiated one.
    #[error(
        "pgoutput message {} is not valid in negotiated protocol version {proto_version}",
        TagDisplay(*.tag)
    )]
    UnsupportedMessage {
        /// The message tag.
        tag: u8,
        /// The negotiated protocol version.
        proto_version: ProtoVersion,
    },
    /// A TupleData column kind other than `n`, `u`, `t` or `b`.
    #[error("unknown tuple column kind {} in column {column}", TagDisplay(*.tag))]
    UnknownTupleKind {
        /// The kind byte.
        tag: u8,
        /// Zero-based index of the column.
        column: usize,
    },
    /// An Insert, Update or Delete without the expected `N`/`K`/`O` marker.
    #[error(
        "pgoutput message {} expected tuple marker {expected}, found {}",
        TagDisplay(*.tag),
        TagDisplay(*.found)
    )]
    UnexpectedTupleMarker {
        /// The message tag.
        tag: u8,
        /// The markers allowed at this point.
        expected: &'static str,
        /// The byte found instead.
        found: u8,
    },
    /// A name is not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        what: &'static str,
    },
    /// A name has no terminating NUL byte.
    #[error("{what} is not NUL-terminated")]
    UnterminatedString {
        /// The field being read.
        what: &'static str,
    },
    /// An `Int32` length or count is negative.
    #[error("negative {what}: {value}")]
    NegativeLength {
        /// The field being read.
        what: &'static str,
        /// The value found.
        value: i32,
    },
    /// A Relation's replica identity byte is not `d`, `n`, `f` or `i`.
    #[error("unknown relation replica identity {}", TagDisplay(*.0))]
    UnknownReplicaIdentity(u8),
    /// A Truncate's options byte has bits other than CASCADE and RESTART IDENTITY.
    #[error("unknown truncate options 0x{0:02x}")]
    UnknownTruncateOptions(u8),
    /// A logical Message's flags byte has bits other than "transactional".
    #[error("unknown logical message flags 0x{0:02x}")]
    UnknownMessageFlags(u8),
    /// Bytes left over after a complete message.
    #[error("{count} trailing bytes after pgoutput message {}", TagDisplay(*.tag))]
    TrailingBytes {
        /// The message tag.
        tag: u8,
        /// How many bytes were left.
        count: usize,
    },
}

/// Prints a protocol byte as a quoted character when printable, else as hex.
struct TagDisplay(u8);

impl fmt::Display for TagDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", char::from(self.0))
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// `B`: a transaction starts.
    Begin(Begin),
    /// `C`: a transaction commits.
    Commit(Commit),
    /// `O`: the transaction was replayed from another node through a replication origin.
    Origin(Origin),
    /// `R`: the schema of a relation, sent before its first change and after it changes.
    Relation(Relation),
    /// `Y`: a non-builtin type used by a relation column.
    Type(TypeMessage),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: relations were truncated.
    Truncate(Truncate),
    /// `M`: a logical decoding message (`pg_logical_emit_message`).
    Message(LogicalMessage),
}

impl PgOutputMessage {
    /// The one-byte wire tag of this message.
    pub fn tag(&self) -> u8 {
        match self {
            PgOutputMessage::Begin(_) => tag::BEGIN,
            PgOutputMessage::Commit(_) => tag::COMMIT,
            PgOutputMessage::Origin(_) => tag::ORIGIN,
            PgOutputMessage::Relation(_) => tag::RELATION,
            PgOutputMessage::Type(_) => tag::TYPE,
            PgOutputMessage::Insert(_) => tag::INSERT,
            PgOutputMessage::Update(_) => tag::UPDATE,
            PgOutputMessage::Delete(_) => tag::DELETE,
            PgOutputMessage::Truncate(_) => tag::TRUNCATE,
            PgOutputMessage::Message(_) => tag::MESSAGE,
        }
    }

    /// A short lowercase name of the message kind, suitable as a metric label.
    pub fn kind_name(&self) -> &'static str {
        match self {
            PgOutputMessage::Begin(_) => "begin",
            PgOutputMessage::Commit(_) => "commit",
            PgOutputMessage::Origin(_) => "origin",
            PgOutputMessage::Relation(_) => "relation",
            PgOutputMessage::Type(_) => "type",
            PgOutputMessage::Insert(_) => "insert",
            PgOutputMessage::Update(_) => "update",
            PgOutputMessage::Delete(_) => "delete",
            PgOutputMessage::Truncate(_) => "truncate",
            PgOutputMessage::Message(_) => "message",
        }
    }
}

/// `B`: the start of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the commit record; equals [`Commit::commit_lsn`].
    pub final_lsn: Lsn,
    /// Commit time (the origin's timestamp for replayed transactions).
    pub commit_time: PgTimestamp,
    /// Transaction id.
    pub xid: u32,
}

/// `C`: the end of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Flags; currently unused by the server (always 0).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record: the position to confirm once applied.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_time: PgTimestamp,
}

/// `O`: the transaction originated on another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// The replication origin's name.
    pub name: String,
}

/// `R`: the description of a relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// The relation's oid.
    pub rel_id: u32,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// Relation name.
    pub name: String,
    /// The replica identity setting, which decides what old tuples carry.
    pub replica_identity: ReplicaIdentity,
    /// Columns in attribute order, which is the order of [`TupleData::columns`].
    pub columns: Vec<RelationColumn>,
}

/// A relation's `REPLICA IDENTITY` setting (`pg_class.relreplident`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key, if any.
    Default,
    /// `n`: nothing; updates and deletes carry no old key.
    Nothing,
    /// `f`: all columns; old tuples are complete rows.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// Parses the wire byte.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    /// The wire byte.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// One column of a [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// Flags; bit [`COLUMN_FLAG_KEY`] marks replica identity key columns.
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// The column type's oid.
    pub type_oid: u32,
    /// The type modifier (`atttypmod`), `-1` when there is none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Whether the column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & COLUMN_FLAG_KEY != 0
    }
}

/// `Y`: a data type referenced by a relation column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeMessage {
    /// The type's oid.
    pub type_oid: u32,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// `I`: an inserted row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insert {
    /// The relation's oid.
    pub rel_id: u32,
    /// The new row.
    pub new_tuple: TupleData,
}

/// `U`: an updated row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The relation's oid.
    pub rel_id: u32,
    /// The old key (`K`, when the key changed) or old row (`O`, with
    /// `REPLICA IDENTITY FULL`); absent when the key did not change.
    pub old_tuple: Option<OldTuple>,
    /// The new row; TOASTed columns that did not change are
    /// [`TupleValue::UnchangedToast`].
    pub new_tuple: TupleData,
}

/// `D`: a deleted row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    /// The relation's oid.
    pub rel_id: u32,
    /// The old key or old row.
    pub old_tuple: OldTuple,
}

/// The old image in an Update or Delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldTuple {
    /// Whether only key columns are set or the whole row.
    pub kind: OldTupleKind,
    /// The values, one per relation column.
    pub tuple: TupleData,
}

/// What an [`OldTuple`] contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OldTupleKind {
    /// `K`: the replica identity key columns; all other columns are null.
    Key,
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

impl OldTupleKind {
    fn from_marker(marker: u8) -> Option<Self> {
        match marker {
            tag::KEY_TUPLE => Some(OldTupleKind::Key),
            tag::OLD_TUPLE => Some(OldTupleKind::Full),
            _ => None,
        }
    }

    fn marker(self) -> u8 {
        match self {
            OldTupleKind::Key => tag::KEY_TUPLE,
            OldTupleKind::Full => tag::OLD_TUPLE,
        }
    }
}

/// The column values of one row, in relation column order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TupleData {
    /// One value per column.
    pub columns: Vec<TupleValue>,
}

/// One column value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TupleValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: a TOASTed value that did not change; the value itself is not sent.
    UnchangedToast,
    /// `t`: the value in the type's text format.
    Text(Bytes),
    /// `b`: the value in the type's binary (send) format (`binary` option).
    Binary(Bytes),
}

/// `T`: truncated relations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    /// `TRUNCATE ... CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE ... RESTART IDENTITY`.
    pub restart_identity: bool,
    /// Oids of all truncated relations, including those reached by CASCADE.
    pub rel_ids: Vec<u32>,
}

/// `M`: a message written with `pg_logical_emit_message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Emitted inside a transaction (delivered between its Begin and Commit)
    /// rather than immediately.
    pub transactional: bool,
    /// The LSN of the message record.
    pub lsn: Lsn,
    /// The prefix that namespaces the message.
    pub prefix: String,
    /// The content, uninterpreted.
    pub content: Bytes,
}

/// A Postgres `timestamptz` on the wire: microseconds since
/// 2000-01-01 00:00:00 UTC.
///
/// `Display` prints RFC 3339 in UTC with exactly six fractional digits,
/// `2026-11-21T06:13:51.123456Z`. Years outside 0000–9999 (which RFC 3339
/// cannot express) are printed in ISO 8601 expanded form with a sign and
/// astronomical numbering (year 0 is 1 BC); Postgres's `infinity` and
/// `-infinity` print as such.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// Postgres's `infinity`.
    pub const INFINITY: PgTimestamp = PgTimestamp(i64::MAX);
    /// Postgres's `-infinity`.
    pub const NEG_INFINITY: PgTimestamp = PgTimestamp(i64::MIN);

    /// Microseconds since the Unix epoch, or `None` for the infinities or on overflow.
    pub fn unix_micros(self) -> Option<i64> {
        if self == Self::INFINITY || self == Self::NEG_INFINITY {
            return None;
        }
        self.0.checked_add(UNIX_TO_PG_EPOCH_DAYS * MICROS_PER_DAY)
    }

    /// The timestamp `micros` microseconds after the Unix epoch (saturating).
    pub fn from_unix_micros(micros: i64) -> PgTimestamp {
        PgTimestamp(micros.saturating_sub(UNIX_TO_PG_EPOCH_DAYS * MICROS_PER_DAY))
    }
}

impl fmt::Display for PgTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::INFINITY => return f.write_str("infinity"),
            Self::NEG_INFINITY => return f.write_str("-infinity"),
            _ => {}
        }
        let days = self.0.div_euclid(MICROS_PER_DAY) + UNIX_TO_PG_EPOCH_DAYS;
        let micros_of_day = self.0.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let secs_of_day = micros_of_day / 1_000_000;
        let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
        let micros = micros_of_day % 1_000_000;
        if (0..=9999).contains(&year) {
            write!(f, "{year:04}")?;
        } else {
            write!(f, "{year:+05}")?;
        }
        write!(f, "-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{micros:06}Z")
    }
}

/// The proleptic Gregorian (year, month, day) of a count of days since
/// 1970-01-01; Howard Hinnant's `civil_from_days`
/// (<https://howardhinnant.github.io/date_algorithms.html#civil_from_days>).
///
/// Exact for every day an `i64` of microseconds can reach (about ±292,000
/// years), with no overflow.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468; // shift the epoch to 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let mp = (5 * day_of_year + 2) / 153; // [0, 11], March = 0
    let day = day_of_year - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Why a message cannot be written in protocol version 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A name contains a NUL byte, which would end it early on the wire.
    #[error("{what} contains a NUL byte")]
    NulInString {
        /// The field being written.
        what: &'static str,
    },
    /// A count or length does not fit its wire field.
    #[error("{what} {value} does not fit its wire field")]
    TooLarge {
        /// The field being written.
        what: &'static str,
        /// The value.
        value: usize,
    },
}

impl PgOutputMessage {
    /// Writes the message in protocol version 1, exactly as the server would.
    ///
    /// Test support: used by the `decode(encode(m)) == m` property test and
    /// by fakes that play a replication server. Fails only for messages the
    /// wire format cannot carry (a NUL inside a name, more than 65,535
    /// columns, a value over 2 GiB).
    pub fn encode_v1(&self) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::with_capacity(64);
        out.put_u8(self.tag());
        match self {
            PgOutputMessage::Begin(m) => {
                out.put_u64(m.final_lsn.0);
                out.put_i64(m.commit_time.0);
                out.put_u32(m.xid);
            }
            PgOutputMessage::Commit(m) => {
                out.put_u8(m.flags);
                out.put_u64(m.commit_lsn.0);
                out.put_u64(m.end_lsn.0);
                out.put_i64(m.commit_time.0);
            }
            PgOutputMessage::Origin(m) => {
                out.put_u64(m.commit_lsn.0);
                put_cstring(&mut out, &m.name, "origin name")?;
            }
            PgOutputMessage::Relation(m) => {
                out.put_u32(m.rel_id);
                put_cstring(&mut out, &m.namespace, "relation namespace")?;
                put_cstring(&mut out, &m.name, "relation name")?;
                out.put_u8(m.replica_identity.as_byte());
                out.put_u16(fit_u16(m.columns.len(), "relation column count")?);
                for column in &m.columns {
                    out.put_u8(column.flags);
                    put_cstring(&mut out, &column.name, "relation column name")?;
                    out.put_u32(column.type_oid);
                    out.put_i32(column.type_modifier);
                }
            }
            PgOutputMessage::Type(m) => {
                out.put_u32(m.type_oid);
                put_cstring(&mut out, &m.namespace, "type namespace")?;
                put_cstring(&mut out, &m.name, "type name")?;
            }
            PgOutputMessage::Insert(m) => {
                out.put_u32(m.rel_id);
                out.put_u8(tag::NEW_TUPLE);
                put_tuple(&mut out, &m.new_tuple)?;
            }
            PgOutputMessage::Update(m) => {
                out.put_u32(m.rel_id);
                if let Some(old) = &m.old_tuple {
                    out.put_u8(old.kind.marker());
                    put_tuple(&mut out, &old.tuple)?;
                }
                out.put_u8(tag::NEW_TUPLE);
                put_tuple(&mut out, &m.new_tuple)?;
            }
            PgOutputMessage::Delete(m) => {
                out.put_u32(m.rel_id);
                out.put_u8(m.old_tuple.kind.marker());
                put_tuple(&mut out, &m.old_tuple.tuple)?;
            }
            PgOutputMessage::Truncate(m) => {
                out.put_i32(fit_i32(m.rel_ids.len(), "truncate relation count")?);
                let mut options = 0;
                if m.cascade {
                    options |= TRUNCATE_CASCADE;
                }
                if m.restart_identity {
                    options |= TRUNCATE_RESTART_IDENTITY;
                }
                out.put_u8(options);
                for rel_id in &m.rel_ids {
                    out.put_u32(*rel_id);
                }
            }
            PgOutputMessage::Message(m) => {
                out.put_u8(if m.transactional { MESSAGE_TRANSACTIONAL } else { 0 });
                out.put_u64(m.lsn.0);
                put_cstring(&mut out, &m.prefix, "message prefix")?;
                out.put_i32(fit_i32(m.content.len(), "message content length")?);
                out.put_slice(&m.content);
            }
        }
        Ok(out.freeze())
    }
}

fn put_cstring(out: &mut BytesMut, s: &str, what: &'static str) -> Result<(), EncodeError> {
    if s.as_bytes().contains(&0) {
        return Err(EncodeError::NulInString { what });
    }
    out.put_slice(s.as_bytes());
    out.put_u8(0);
    Ok(())
}

fn put_tuple(out: &mut BytesMut, tuple: &TupleData) -> Result<(), EncodeError> {
    out.put_u16(fit_u16(tuple.columns.len(), "tuple column count")?);
    for value in &tuple.columns {
        match value {
            TupleValue::Null => out.put_u8(tag::NULL),
            TupleValue::UnchangedToast => out.put_u8(tag::UNCHANGED_TOAST),
            TupleValue::Text(bytes) | TupleValue::Binary(bytes) => {
                let kind =
                    if matches!(value, TupleValue::Text(_)) { tag::TEXT } else { tag::BINARY };
                out.put_u8(kind);
                out.put_i32(fit_i32(bytes.len(), "tuple column length")?);
                out.put_slice(bytes);
            }
        }
    }
    Ok(())
}

fn fit_u16(value: usize, what: &'static str) -> Result<u16, EncodeError> {
    u16::try_from(value).map_err(|_| EncodeError::TooLarge { what, value })
}

fn fit_i32(value: usize, what: &'static str) -> Result<i32, EncodeError> {
    i32::try_from(value).map_err(|_| EncodeError::TooLarge { what, value })
}

/// The captured byte fixtures in `testdata/` (see the `capture*.sql` scripts).
#[cfg(test)]
pub(crate) mod fixtures {
    use bytes::Bytes;

    use crate::lsn::Lsn;

    /// Every v1 message kind, from `capture.sql`.
    pub(crate) const PGOUTPUT_V1: &str = include_str!("testdata/pgoutput_v1.txt");
    /// Binary-format column values, from `capture_binary.sql`.
    pub(crate) const PGOUTPUT_V1_BINARY: &str = include_str!("testdata/pgoutput_v1_binary.txt");
    /// 1,963 messages on a billing-like table, from `capture_usage_events.sql`.
    pub(crate) const USAGE_EVENTS_V1: &str = include_str!("testdata/usage_events_v1.txt");

    /// Parses `<lsn> <hex>` lines, skipping `#` comments.
    pub(crate) fn parse(text: &str) -> Vec<(Lsn, Bytes)> {
        text.lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (lsn, hex) = line.split_once(' ').expect("fixture line is `<lsn> <hex>`");
                (lsn.parse().expect("fixture lsn"), Bytes::from(unhex(hex)))
            })
            .collect()
    }

    fn unhex(hex: &str) -> Vec<u8> {
        assert!(hex.len().is_multiple_of(2), "odd-length hex in fixture");
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("fixture hex"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn decode(data: Bytes) -> Result<PgOutputMessage, DecodeError> {
        Decoder::new(ProtoVersion::V1).decode(data)
    }

    fn decode_fixture(text: &str) -> Vec<(Lsn, PgOutputMessage)> {
        fixtures::parse(text)
            .into_iter()
            .enumerate()
            .map(|(i, (lsn, data))| match decode(data) {
                Ok(message) => (lsn, message),
                Err(err) => panic!("fixture message {i} at {lsn}: {err}"),
            })
            .collect()
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn nulls(n: usize) -> Vec<TupleValue> {
        vec![TupleValue::Null; n]
    }

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    /// A replayable random source: the seed is printed and can be overridden
    /// with `WALSHIFT_TEST_SEED`.
    fn test_rng(test: &str) -> (fastrand::Rng, u64) {
        let seed = std::env::var("WALSHIFT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5EED_2026_u64);
        println!("{test}: seed {seed} (set WALSHIFT_TEST_SEED to replay another)");
        (fastrand::Rng::with_seed(seed), seed)
    }

    /// One line per message: tag, relation names instead of oids, and the
    /// facts that distinguish the captured cases.
    fn summarize(messages: &[(Lsn, PgOutputMessage)]) -> Vec<String> {
        let mut names: HashMap<u32, String> = HashMap::new();
        let mut out = Vec::new();
        for (_, message) in messages {
            let name = |rel_id: &u32| names.get(rel_id).cloned().unwrap_or_else(|| "?".into());
            let old = |old: Option<&OldTuple>| match old.map(|o| o.kind) {
                None => "-",
                Some(OldTupleKind::Key) => "K",
                Some(OldTupleKind::Full) => "O",
            };
            let line = match message {
                PgOutputMessage::Begin(_) => "B".to_owned(),
                PgOutputMessage::Commit(_) => "C".to_owned(),
                PgOutputMessage::Origin(o) => format!("O {}", o.name),
                PgOutputMessage::Relation(r) => {
                    names.insert(r.rel_id, r.name.clone());
                    let identity = char::from(r.replica_identity.as_byte());
                    format!("R {}.{} {identity} {}", r.namespace, r.name, r.columns.len())
                }
                PgOutputMessage::Type(t) => format!("Y {}.{}", t.namespace, t.name),
                PgOutputMessage::Insert(m) => format!("I {}", name(&m.rel_id)),
                PgOutputMessage::Update(m) => {
                    format!("U {} {}", name(&m.rel_id), old(m.old_tuple.as_ref()))
                }
                PgOutputMessage::Delete(m) => {
                    format!("D {} {}", name(&m.rel_id), old(Some(&m.old_tuple)))
                }
                PgOutputMessage::Truncate(t) => format!(
                    "T {} cascade={} restart={}",
                    t.rel_ids.iter().map(name).collect::<Vec<_>>().join(","),
                    t.cascade,
                    t.restart_identity
                ),
                PgOutputMessage::Message(m) => {
                    format!("M {} transactional={}", m.prefix, m.transactional)
                }
            };
            out.push(line);
        }
        out
    }

    #[test]
    fn captured_stream_has_the_expected_message_sequence() {
        let messages = decode_fixture(fixtures::PGOUTPUT_V1);
        let expected: Vec<&str> = [
            // 1. many types; the enum column makes the Type message come first
            "B",
            "Y public.mood",
            "R public.kinds d 16",
            "I kinds",
            "C",
            // 2. all NULL but the key
            "B",
            "I kinds",
            "C",
            // 3. TOASTed insert, 4. update leaving it unchanged
            "B",
            "I kinds",
            "C",
            "B",
            "U kinds -",
            "C",
            // 5. key change, 6. delete with the default identity
            "B",
            "U kinds K",
            "C",
            "B",
            "D kinds K",
            "C",
            // 7.-9. REPLICA IDENTITY FULL
            "B",
            "R public.full_ident f 3",
            "I full_ident",
            "C",
            "B",
            "U full_ident O",
            "C",
            "B",
            "D full_ident O",
            "C",
            // 10. multi-table transaction with a transactional message
            "B",
            "R public.parent d 2",
            "I parent",
            "I parent",
            "R public.child d 3",
            "I child",
            "I child",
            "M walshift transactional=true",
            "U parent -",
            "C",
            // 11. non-transactional message: no Begin/Commit around it
            "M walshift transactional=false",
            // 12. ADD COLUMN re-sends the Relation (and the Type)
            "B",
            "Y public.mood",
            "R public.kinds d 17",
            "I kinds",
            "C",
            // 13. REPLICA IDENTITY FULL re-sends the Relation
            "B",
            "R public.child f 3",
            "U child O",
            "C",
            // 14.-17. truncates; every TRUNCATE re-sends the Relations involved
            "B",
            "R public.counters d 2",
            "I counters",
            "I counters",
            "C",
            "B",
            "R public.parent d 2",
            "R public.child f 3",
            "T parent,child cascade=true restart=false",
            "C",
            "B",
            "R public.counters d 2",
            "T counters cascade=false restart=true",
            "C",
            "B",
            "R public.counters d 2",
            "R public.full_ident f 3",
            "T counters,full_ident cascade=true restart=true",
            "C",
            // 18. replayed through a replication origin
            "B",
            "O upstream",
            "R public.counters d 2",
            "I counters",
            "C",
        ]
        .into();
        assert_eq!(summarize(&messages), expected);
    }

    #[test]
    fn captured_transactions_are_framed_consistently() {
        let messages = decode_fixture(fixtures::PGOUTPUT_V1);
        let mut open: Option<&Begin> = None;
        let mut last_xid = 0;
        let mut transactions = 0;
        for (row_lsn, message) in &messages {
            match (message, open) {
                (PgOutputMessage::Begin(begin), None) => {
                    assert!(begin.xid > last_xid, "xids increase");
                    last_xid = begin.xid;
                    open = Some(begin);
                }
                (PgOutputMessage::Commit(commit), Some(begin)) => {
                    assert_eq!(commit.flags, 0);
                    assert_eq!(commit.commit_lsn, begin.final_lsn);
                    assert_eq!(commit.commit_time, begin.commit_time);
                    assert!(commit.end_lsn > commit.commit_lsn);
                    // The SQL interface reports a commit at its end LSN.
                    assert_eq!(*row_lsn, commit.end_lsn);
                    transactions += 1;
                    open = None;
                }
                (PgOutputMessage::Message(m), None) => {
                    assert!(!m.transactional);
                    assert_eq!(m.lsn, *row_lsn);
                }
                (PgOutputMessage::Message(m), Some(begin)) => {
                    assert!(m.transactional);
                    assert!(m.lsn < begin.final_lsn);
                }
                (PgOutputMessage::Begin(_) | PgOutputMessage::Commit(_), _) => {
                    panic!("unbalanced transaction at {row_lsn}: {message:?}")
                }
                (_, open) => assert!(open.is_some(), "change outside a transaction: {message:?}"),
            }
        }
        assert!(open.is_none());
        assert_eq!(transactions, 17);
    }

    /// The decoded stream and the relations it announced, by name.
    struct Captured {
        messages: Vec<PgOutputMessage>,
    }

    impl Captured {
        fn load() -> Self {
            Captured {
                messages: decode_fixture(fixtures::PGOUTPUT_V1)
                    .into_iter()
                    .map(|(_, m)| m)
                    .collect(),
            }
        }

        fn relations(&self, name: &str) -> Vec<&Relation> {
            self.messages
                .iter()
                .filter_map(|m| match m {
                    PgOutputMessage::Relation(r) if r.name == name => Some(r),
                    _ => None,
                })
                .collect()
        }

        fn rel_id(&self, name: &str) -> u32 {
            self.relations(name)[0].rel_id
        }

        fn inserts(&self, name: &str) -> Vec<&TupleData> {
            let rel_id = self.rel_id(name);
            self.messages
                .iter()
                .filter_map(|m| match m {
                    PgOutputMessage::Insert(i) if i.rel_id == rel_id => Some(&i.new_tuple),
                    _ => None,
                })
                .collect()
        }

        fn updates(&self, name: &str) -> Vec<&Update> {
            let rel_id = self.rel_id(name);
            self.messages
                .iter()
                .filter_map(|m| match m {
                    PgOutputMessage::Update(u) if u.rel_id == rel_id => Some(u),
                    _ => None,
                })
                .collect()
        }

        fn deletes(&self, name: &str) -> Vec<&Delete> {
            let rel_id = self.rel_id(name);
            self.messages
                .iter()
                .filter_map(|m| match m {
                    PgOutputMessage::Delete(d) if d.rel_id == rel_id => Some(d),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn captured_relation_and_type_describe_the_columns() {
        let captured = Captured::load();
        let kinds = captured.relations("kinds");
        let Some(PgOutputMessage::Type(mood)) = captured.messages.get(1) else {
            panic!("second message is the Type message");
        };
        assert_eq!((mood.namespace.as_str(), mood.name.as_str()), ("public", "mood"));
        assert!(mood.type_oid >= 16384, "user types have non-builtin oids");

        let described: Vec<(&str, u32, i32, bool)> = kinds[0]
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.type_oid, c.type_modifier, c.is_key()))
            .collect();
        assert_eq!(
            described,
            [
                ("id", 23, -1, true),
                ("small", 21, -1, false),
                ("big_int", 20, -1, false),
                // numeric(10, 2): ((10 << 16) | 2) + 4
                ("amount", 1700, 655_366, false),
                ("ratio", 1700, -1, false),
                // varchar(20): 20 + 4
                ("label", 1043, 24, false),
                ("note", 25, -1, false),
                ("raw", 17, -1, false),
                ("score", 701, -1, false),
                ("flag", 16, -1, false),
                ("at", 1184, -1, false),
                ("doc", 3802, -1, false),
                ("tags", 1007, -1, false),
                ("uid", 2950, -1, false),
                ("feeling", mood.type_oid, -1, false),
                ("blob", 25, -1, false),
            ]
        );
        assert_eq!(kinds[0].replica_identity, ReplicaIdentity::Default);
        assert_eq!(kinds[0].columns[0].flags, COLUMN_FLAG_KEY);

        // Re-sent after ADD COLUMN: the same columns plus `extra`.
        assert_eq!(kinds[1].rel_id, kinds[0].rel_id);
        assert_eq!(kinds[1].columns[..16], kinds[0].columns[..]);
        assert_eq!(
            kinds[1].columns[16],
            RelationColumn { flags: 0, name: "extra".into(), type_oid: 25, type_modifier: -1 }
        );

        // REPLICA IDENTITY FULL marks every column as a key column.
        let full = captured.relations("full_ident");
        assert_eq!(full[0].replica_identity, ReplicaIdentity::Full);
        assert!(full[0].columns.iter().all(RelationColumn::is_key));
        let child = captured.relations("child");
        assert_eq!(child[0].replica_identity, ReplicaIdentity::Default);
        assert_eq!(child[1].replica_identity, ReplicaIdentity::Full);
        assert!(child[1].columns.iter().all(RelationColumn::is_key));
    }

    #[test]
    fn captured_inserts_carry_text_values_and_nulls() {
        let captured = Captured::load();
        let inserts = captured.inserts("kinds");
        assert_eq!(inserts.len(), 4);
        assert_eq!(
            inserts[0].columns,
            [
                text("1"),
                text("-32768"),
                text("9223372036854775807"),
                text("12345678.90"),
                text("NaN"),
                text("varchar ✓"),
                text("héllo wörld ✓ 日本語 🐘"),
                text("\\xdeadbeef00ff"),
                text("-Infinity"),
                text("t"),
                text("2026-11-21 06:13:51.123456+00"),
                text(r#"{"a": [1, 2, {"b": null}]}"#),
                text("{1,NULL,3}"),
                text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                text("happy"),
                text("small"),
            ]
        );
        assert_eq!(inserts[1].columns, [vec![text("2")], nulls(15)].concat());

        // The TOASTed value arrives whole in the insert.
        let blob = toasted_blob(inserts[2], 15);
        assert_eq!(inserts[2].columns[6], text("toasted"));
        assert_eq!(blob.len(), 9600);

        // After ADD COLUMN ... DEFAULT 'x' tuples have 17 columns.
        assert_eq!(
            inserts[3].columns,
            [vec![text("4")], nulls(5), vec![text("after add column")], nulls(9), vec![text("x")]]
                .concat()
        );
    }

    /// The value of a TOASTed column: 9,600 hex digits (300 md5s).
    fn toasted_blob(tuple: &TupleData, column: usize) -> Bytes {
        let TupleValue::Text(blob) = &tuple.columns[column] else {
            panic!("column {column} is text: {:?}", tuple.columns[column]);
        };
        assert!(blob.iter().all(u8::is_ascii_hexdigit));
        blob.clone()
    }

    #[test]
    fn captured_update_leaving_toast_unchanged_sends_u() {
        let captured = Captured::load();
        let updates = captured.updates("kinds");
        let toast_update = updates[0];
        assert_eq!(toast_update.old_tuple, None, "key unchanged: no old tuple");
        let mut expected =
            [vec![text("3"), text("7")], nulls(4), vec![text("toasted")], nulls(8)].concat();
        expected.push(TupleValue::UnchangedToast);
        assert_eq!(toast_update.new_tuple.columns, expected);
    }

    #[test]
    fn captured_key_change_and_delete_carry_the_old_key_only() {
        let captured = Captured::load();
        let key_change = captured.updates("kinds")[1];
        // A `K` tuple has a value for every column; non-key columns are null.
        assert_eq!(
            key_change.old_tuple,
            Some(OldTuple {
                kind: OldTupleKind::Key,
                tuple: TupleData { columns: [vec![text("1")], nulls(15)].concat() },
            })
        );
        assert_eq!(key_change.new_tuple.columns[0], text("10"));
        assert_eq!(key_change.new_tuple.columns[15], text("small"));

        let deletes = captured.deletes("kinds");
        assert_eq!(deletes.len(), 1);
        assert_eq!(deletes[0].old_tuple.kind, OldTupleKind::Key);
        assert_eq!(deletes[0].old_tuple.tuple.columns, [vec![text("2")], nulls(15)].concat());
    }

    #[test]
    fn captured_full_identity_carries_whole_old_rows_including_toast() {
        let captured = Captured::load();
        let inserted = toasted_blob(captured.inserts("full_ident")[0], 2);

        let update = captured.updates("full_ident")[0];
        let old = update.old_tuple.as_ref().expect("FULL identity sends the old row");
        assert_eq!(old.kind, OldTupleKind::Full);
        assert_eq!(old.tuple.columns[..2], [text("1"), text("one")]);
        // The old row is detoasted; the new row marks the same value unchanged.
        assert_eq!(toasted_blob(&old.tuple, 2), inserted);
        assert_eq!(update.new_tuple.columns, [text("1"), text("uno"), TupleValue::UnchangedToast]);

        let delete = captured.deletes("full_ident")[0];
        assert_eq!(delete.old_tuple.kind, OldTupleKind::Full);
        assert_eq!(delete.old_tuple.tuple.columns[..2], [text("1"), text("uno")]);
        assert_eq!(toasted_blob(&delete.old_tuple.tuple, 2), inserted);

        let child_update = captured.updates("child")[0];
        assert_eq!(
            child_update.old_tuple,
            Some(OldTuple {
                kind: OldTupleKind::Full,
                tuple: TupleData { columns: vec![text("2"), text("2"), TupleValue::Null] },
            })
        );
        assert_eq!(child_update.new_tuple.columns, [text("2"), text("2"), text("c2")]);
    }

    #[test]
    fn captured_multi_table_transaction_and_messages() {
        let captured = Captured::load();
        assert_eq!(
            captured.inserts("parent").iter().map(|t| t.columns.clone()).collect::<Vec<_>>(),
            [vec![text("1"), text("p1")], vec![text("2"), text("p2")]]
        );
        assert_eq!(
            captured.inserts("child").iter().map(|t| t.columns.clone()).collect::<Vec<_>>(),
            [vec![text("1"), text("1"), text("c1")], vec![text("2"), text("2"), TupleValue::Null]]
        );
        assert_eq!(
            captured.updates("parent")[0].new_tuple.columns,
            [text("1"), text("p1 renamed")]
        );

        let messages: Vec<&LogicalMessage> = captured
            .messages
            .iter()
            .filter_map(|m| match m {
                PgOutputMessage::Message(m) => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(messages.len(), 2);
        assert!(messages[0].transactional);
        assert_eq!(messages[0].prefix, "walshift");
        assert_eq!(messages[0].content, Bytes::from_static(b"hello"));
        assert!(!messages[1].transactional);
        assert_eq!(messages[1].prefix, "walshift");
        assert_eq!(messages[1].content, Bytes::from_static(&[0x00, 0xff, 0x0a]));
        assert!(messages[1].lsn > messages[0].lsn);
    }

    #[test]
    fn captured_truncates_carry_options_and_all_relations() {
        let captured = Captured::load();
        let (parent, child, counters, full) = (
            captured.rel_id("parent"),
            captured.rel_id("child"),
            captured.rel_id("counters"),
            captured.rel_id("full_ident"),
        );
        let truncates: Vec<&Truncate> = captured
            .messages
            .iter()
            .filter_map(|m| match m {
                PgOutputMessage::Truncate(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(
            truncates,
            [
                &Truncate { cascade: true, restart_identity: false, rel_ids: vec![parent, child] },
                &Truncate { cascade: false, restart_identity: true, rel_ids: vec![counters] },
                &Truncate { cascade: true, restart_identity: true, rel_ids: vec![counters, full] },
            ]
        );
    }

    #[test]
    fn captured_origin_transaction_uses_the_origin_timestamp() {
        let messages = decode_fixture(fixtures::PGOUTPUT_V1);
        let tail: Vec<&PgOutputMessage> =
            messages.iter().rev().take(5).rev().map(|(_, m)| m).collect();
        let [
            PgOutputMessage::Begin(begin),
            PgOutputMessage::Origin(origin),
            _,
            PgOutputMessage::Insert(insert),
            PgOutputMessage::Commit(commit),
        ] = tail[..]
        else {
            panic!("the last transaction is Begin, Origin, Relation, Insert, Commit: {tail:?}");
        };
        assert_eq!(origin, &Origin { commit_lsn: lsn("0/AABBCCDD"), name: "upstream".into() });
        // Set by pg_replication_origin_xact_setup, not the local commit time.
        assert_eq!(begin.commit_time.to_string(), "2026-01-02T03:04:05.123456Z");
        assert_eq!(commit.commit_time, begin.commit_time);
        assert_eq!(insert.new_tuple.columns, [text("1"), text("from upstream")]);
    }

    #[test]
    fn captured_binary_values_are_in_send_format() {
        let messages = decode_fixture(fixtures::PGOUTPUT_V1_BINARY);
        let inserts: Vec<&TupleData> = messages
            .iter()
            .filter_map(|(_, m)| match m {
                PgOutputMessage::Insert(i) => Some(&i.new_tuple),
                _ => None,
            })
            .collect();
        let binary = |b: &'static [u8]| TupleValue::Binary(Bytes::from_static(b));
        assert_eq!(
            inserts[0].columns,
            [
                binary(&[0, 0, 0, 1]),
                binary(b"hi"),
                // numeric 1.5: ndigits 2, weight 0, sign +, dscale 1, digits 1, 5000
                binary(&[0, 2, 0, 0, 0, 0, 0, 1, 0, 1, 0x13, 0x88]),
                binary(&[1]),
                // 2000-01-01 00:00:00+00 is 0 microseconds after the Postgres epoch
                binary(&[0; 8]),
            ]
        );
        assert_eq!(inserts[1].columns, [vec![binary(&[0, 0, 0, 2])], nulls(4)].concat());
    }

    #[test]
    fn captured_usage_events_stream_decodes() {
        let messages = decode_fixture(fixtures::USAGE_EVENTS_V1);
        let count = |tag: u8| messages.iter().filter(|(_, m)| m.tag() == tag).count();
        assert_eq!(messages.len(), 1963);
        assert_eq!((count(b'B'), count(b'C'), count(b'R')), (21, 21, 1));
        assert_eq!((count(b'I'), count(b'U')), (1200, 720));
        for (_, message) in &messages {
            match message {
                PgOutputMessage::Insert(Insert { new_tuple, .. })
                | PgOutputMessage::Update(Update { old_tuple: None, new_tuple, .. }) => {
                    assert_eq!(new_tuple.columns.len(), 7);
                    assert!(new_tuple.columns.iter().all(|v| matches!(v, TupleValue::Text(_))));
                }
                PgOutputMessage::Update(update) => panic!("unexpected old tuple: {update:?}"),
                _ => {}
            }
        }
    }

    #[test]
    fn values_are_slices_of_the_input() {
        let (_, data) = fixtures::parse(fixtures::PGOUTPUT_V1)
            .into_iter()
            .find(|(_, data)| data.len() > 9000)
            .expect("the TOASTed insert");
        let range = data.as_ptr_range();
        let PgOutputMessage::Insert(insert) = decode(data).unwrap() else {
            panic!("an insert");
        };
        for value in &insert.new_tuple.columns {
            if let TupleValue::Text(bytes) = value {
                assert!(range.contains(&bytes.as_ptr()), "value was copied");
            }
        }
    }

    fn all_captured_payloads() -> Vec<Bytes> {
        [fixtures::PGOUTPUT_V1, fixtures::PGOUTPUT_V1_BINARY, fixtures::USAGE_EVENTS_V1]
            .into_iter()
            .flat_map(fixtures::parse)
            .map(|(_, data)| data)
            .collect()
    }

    #[test]
    fn every_strict_prefix_of_a_captured_message_is_an_error() {
        for data in all_captured_payloads() {
            for len in 0..data.len() {
                let result = decode(data.slice(..len));
                assert!(result.is_err(), "prefix of {len} bytes of {data:?} decoded: {result:?}");
            }
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let (mut rng, _) = test_rng("random_garbage_never_panics");
        let tags = b"BCORYIUDTMSEcAbPKrpnutNX\0\xff";
        for _ in 0..20_000 {
            let len = rng.usize(0..64);
            let mut data: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
            // Half the inputs start with a real tag to get past the first byte.
            if let (Some(first), true) = (data.first_mut(), rng.bool()) {
                *first = tags[rng.usize(..tags.len())];
            }
            if let Err(err) = decode(Bytes::from(data)) {
                assert!(!err.to_string().is_empty());
            }
        }
    }

    #[test]
    fn mutated_captured_messages_never_panic() {
        let (mut rng, _) = test_rng("mutated_captured_messages_never_panic");
        for data in all_captured_payloads() {
            for _ in 0..40 {
                let mut mutated = data.to_vec();
                let at = rng.usize(..mutated.len());
                mutated[at] = rng.u8(..);
                if rng.u8(..4) == 0 {
                    mutated.truncate(rng.usize(at..=mutated.len()));
                }
                let _ = decode(Bytes::from(mutated));
            }
        }
    }

    fn random_string(rng: &mut fastrand::Rng) -> String {
        const POOL: &[char] = &['a', 'z', 'A', '_', '0', ' ', '"', '.', 'é', '✓', '日', '🐘'];
        (0..rng.usize(0..12)).map(|_| POOL[rng.usize(..POOL.len())]).collect()
    }

    fn random_bytes(rng: &mut fastrand::Rng, max: usize) -> Bytes {
        (0..rng.usize(0..=max)).map(|_| rng.u8(..)).collect()
    }

    fn random_tuple(rng: &mut fastrand::Rng) -> TupleData {
        let columns = (0..rng.usize(0..20))
            .map(|_| match rng.u8(..4) {
                0 => TupleValue::Null,
                1 => TupleValue::UnchangedToast,
                2 => TupleValue::Text(random_bytes(rng, 40)),
                _ => TupleValue::Binary(random_bytes(rng, 40)),
            })
            .collect();
        TupleData { columns }
    }

    fn random_old_tuple(rng: &mut fastrand::Rng) -> OldTuple {
        let kind = if rng.bool() { OldTupleKind::Key } else { OldTupleKind::Full };
        OldTuple { kind, tuple: random_tuple(rng) }
    }

    fn random_message(rng: &mut fastrand::Rng) -> PgOutputMessage {
        let lsn = |rng: &mut fastrand::Rng| Lsn(rng.u64(..));
        let time = |rng: &mut fastrand::Rng| PgTimestamp(rng.i64(..));
        match rng.u8(..10) {
            0 => PgOutputMessage::Begin(Begin {
                final_lsn: lsn(rng),
                commit_time: time(rng),
                xid: rng.u32(..),
            }),
            1 => PgOutputMessage::Commit(Commit {
                flags: rng.u8(..),
                commit_lsn: lsn(rng),
                end_lsn: lsn(rng),
                commit_time: time(rng),
            }),
            2 => PgOutputMessage::Origin(Origin { commit_lsn: lsn(rng), name: random_string(rng) }),
            3 => {
                let identities = [
                    ReplicaIdentity::Default,
                    ReplicaIdentity::Nothing,
                    ReplicaIdentity::Full,
                    ReplicaIdentity::Index,
                ];
                let columns = (0..rng.usize(0..10))
                    .map(|_| RelationColumn {
                        flags: rng.u8(..),
                        name: random_string(rng),
                        type_oid: rng.u32(..),
                        type_modifier: rng.i32(..),
                    })
                    .collect();
                PgOutputMessage::Relation(Relation {
                    rel_id: rng.u32(..),
                    namespace: random_string(rng),
                    name: random_string(rng),
                    replica_identity: identities[rng.usize(..identities.len())],
                    columns,
                })
            }
            4 => PgOutputMessage::Type(TypeMessage {
                type_oid: rng.u32(..),
                namespace: random_string(rng),
                name: random_string(rng),
            }),
            5 => PgOutputMessage::Insert(Insert {
                rel_id: rng.u32(..),
                new_tuple: random_tuple(rng),
            }),
            6 => PgOutputMessage::Update(Update {
                rel_id: rng.u32(..),
                old_tuple: rng.bool().then(|| random_old_tuple(rng)),
                new_tuple: random_tuple(rng),
            }),
            7 => PgOutputMessage::Delete(Delete {
                rel_id: rng.u32(..),
                old_tuple: random_old_tuple(rng),
            }),
            8 => PgOutputMessage::Truncate(Truncate {
                cascade: rng.bool(),
                restart_identity: rng.bool(),
                rel_ids: (0..rng.usize(0..8)).map(|_| rng.u32(..)).collect(),
            }),
            _ => PgOutputMessage::Message(LogicalMessage {
                transactional: rng.bool(),
                lsn: lsn(rng),
                prefix: random_string(rng),
                content: random_bytes(rng, 64),
            }),
        }
    }

    #[test]
    fn random_messages_round_trip_through_encode() {
        let (mut rng, seed) = test_rng("random_messages_round_trip_through_encode");
        for i in 0..10_000 {
            let message = random_message(&mut rng);
            let encoded = message.encode_v1().expect("random messages are encodable");
            assert_eq!(
                decode(encoded.clone()),
                Ok(message.clone()),
                "message {i} (seed {seed}) {encoded:?}"
            );
        }
    }

    #[test]
    fn captured_messages_re_encode_to_the_same_bytes() {
        for data in all_captured_payloads() {
            assert_eq!(decode(data.clone()).unwrap().encode_v1(), Ok(data));
        }
    }

    #[test]
    fn encode_rejects_what_the_wire_cannot_carry() {
        let message = PgOutputMessage::Origin(Origin { commit_lsn: Lsn(1), name: "a\0b".into() });
        assert_eq!(message.encode_v1(), Err(EncodeError::NulInString { what: "origin name" }));
        let wide = TupleData { columns: nulls(70_000) };
        let message = PgOutputMessage::Insert(Insert { rel_id: 1, new_tuple: wide });
        assert_eq!(
            message.encode_v1(),
            Err(EncodeError::TooLarge { what: "tuple column count", value: 70_000 })
        );
    }

    /// Builds a message from parts; numbers are big-endian like the wire.
    fn msg(parts: &[&[u8]]) -> Bytes {
        parts.concat().into()
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        let rel = &1_u32.to_be_bytes()[..];
        let cases: Vec<(Bytes, DecodeError)> = vec![
            (msg(&[]), DecodeError::Truncated { what: "message tag", needed: 1, remaining: 0 }),
            (msg(&[b"Q"]), DecodeError::UnknownMessageTag(b'Q')),
            (
                msg(&[b"B", &[0; 10]]),
                DecodeError::Truncated { what: "begin commit timestamp", needed: 8, remaining: 2 },
            ),
            (msg(&[b"B", &[0; 21]]), DecodeError::TrailingBytes { tag: b'B', count: 1 }),
            (
                msg(&[b"I", rel, b"N", &[0, 1], b"x"]),
                DecodeError::UnknownTupleKind { tag: b'x', column: 0 },
            ),
            (
                msg(&[b"I", rel, b"N", &[0, 2], b"n", b"t", &(-1_i32).to_be_bytes()]),
                DecodeError::NegativeLength { what: "tuple column length", value: -1 },
            ),
            (
                msg(&[b"I", rel, b"N", &[0, 1], b"t", &5_i32.to_be_bytes(), b"abc"]),
                DecodeError::Truncated { what: "tuple column value", needed: 5, remaining: 3 },
            ),
            (
                msg(&[b"I", rel, b"K", &[0, 0]]),
                DecodeError::UnexpectedTupleMarker { tag: b'I', expected: "'N'", found: b'K' },
            ),
            (
                msg(&[b"U", rel, b"X"]),
                DecodeError::UnexpectedTupleMarker {
                    tag: b'U',
                    expected: "'K', 'O' or 'N'",
                    found: b'X',
                },
            ),
            (
                msg(&[b"U", rel, b"K", &[0, 0], b"K", &[0, 0]]),
                DecodeError::UnexpectedTupleMarker { tag: b'U', expected: "'N'", found: b'K' },
            ),
            (
                msg(&[b"D", rel, b"N", &[0, 0]]),
                DecodeError::UnexpectedTupleMarker {
                    tag: b'D',
                    expected: "'K' or 'O'",
                    found: b'N',
                },
            ),
            (
                msg(&[b"O", &[0; 8], b"no terminator"]),
                DecodeError::UnterminatedString { what: "origin name" },
            ),
            (
                msg(&[b"Y", rel, b"public\0", &[0xc3, 0x28, 0]]),
                DecodeError::InvalidUtf8 { what: "type name" },
            ),
            (
                msg(&[b"R", rel, b"public\0t\0", b"x", &[0, 0]]),
                DecodeError::UnknownReplicaIdentity(b'x'),
            ),
            (
                msg(&[b"R", rel, b"public\0t\0", b"d", &[0xff, 0xff], &[0; 9]]),
                DecodeError::Truncated {
                    what: "relation column type modifier",
                    needed: 4,
                    remaining: 3,
                },
            ),
            (
                msg(&[b"T", &(-3_i32).to_be_bytes(), &[0]]),
                DecodeError::NegativeLength { what: "truncate relation count", value: -3 },
            ),
            (
                msg(&[b"T", &i32::MAX.to_be_bytes(), &[0], rel]),
                DecodeError::Truncated {
                    what: "truncate relation ids",
                    needed: 4 * i32::MAX as usize,
                    remaining: 4,
                },
            ),
            (msg(&[b"T", &1_i32.to_be_bytes(), &[4], rel]), DecodeError::UnknownTruncateOptions(4)),
            (msg(&[b"M", &[2], &[0; 8], b"p\0", &[0; 4]]), DecodeError::UnknownMessageFlags(2)),
            (
                msg(&[b"M", &[1], &[0; 8], b"p\0", &(-7_i32).to_be_bytes()]),
                DecodeError::NegativeLength { what: "message content length", value: -7 },
            ),
        ];
        for (data, expected) in cases {
            assert_eq!(decode(data.clone()), Err(expected), "{data:?}");
        }
    }

    #[test]
    fn later_protocol_messages_are_rejected_in_version_1() {
        for tag in *b"SEcAbPKrp" {
            assert_eq!(
                decode(msg(&[&[tag], &[0; 16]])),
                Err(DecodeError::UnsupportedMessage { tag, proto_version: ProtoVersion::V1 })
            );
        }
        assert_eq!(ProtoVersion::try_from(1), Ok(ProtoVersion::V1));
        assert_eq!(ProtoVersion::try_from(2), Err(UnsupportedProtoVersion { requested: 2 }));
        assert_eq!(ProtoVersion::LATEST.to_string(), "1");
        assert_eq!(Decoder::new(ProtoVersion::V1).proto_version(), ProtoVersion::V1);
    }

    #[test]
    fn error_messages_name_the_field_and_print_tags_readably() {
        let cases = [
            (DecodeError::UnknownMessageTag(b'Q'), "unknown pgoutput message tag 'Q'"),
            (DecodeError::UnknownMessageTag(0x07), "unknown pgoutput message tag 0x07"),
            (
                DecodeError::UnsupportedMessage { tag: b'S', proto_version: ProtoVersion::V1 },
                "pgoutput message 'S' is not valid in negotiated protocol version 1",
            ),
            (
                DecodeError::Truncated { what: "begin xid", needed: 4, remaining: 1 },
                "pgoutput message truncated reading begin xid: needed 4 bytes, 1 remaining",
            ),
            (
                DecodeError::UnknownTupleKind { tag: b' ', column: 3 },
                "unknown tuple column kind 0x20 in column 3",
            ),
            (
                DecodeError::TrailingBytes { tag: b'C', count: 2 },
                "2 trailing bytes after pgoutput message 'C'",
            ),
            (DecodeError::UnknownTruncateOptions(4), "unknown truncate options 0x04"),
        ];
        for (err, expected) in cases {
            assert_eq!(err.to_string(), expected);
        }
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc() {
        let cases = [
            (0, "2000-01-01T00:00:00.000000Z"),
            (-1, "1999-12-31T23:59:59.999999Z"),
            (848_556_831_123_456, "2026-11-21T06:13:51.123456Z"),
            (-946_684_800_000_000, "1970-01-01T00:00:00.000000Z"),
            (-960_867_740_000_000, "1969-07-20T20:17:40.000000Z"),
            (762_523_200_000_000, "2024-02-29T12:00:00.000000Z"),
            (-3_150_576_000_000_000, "1900-03-01T00:00:00.000000Z"),
            (-63_082_281_600_000_000, "0001-01-01T00:00:00.000000Z"),
            (-63_082_281_600_000_001, "0000-12-31T23:59:59.999999Z"),
            (-63_113_904_000_000_000, "0000-01-01T00:00:00.000000Z"),
            (-63_113_904_000_000_001, "-0001-12-31T23:59:59.999999Z"),
            (252_455_616_000_000_000, "+10000-01-01T00:00:00.000000Z"),
            (i64::MAX, "infinity"),
            (i64::MIN, "-infinity"),
            (i64::MAX - 1, "+294277-01-09T04:00:54.775806Z"),
            (i64::MIN + 1, "-290278-12-22T19:59:05.224193Z"),
        ];
        for (micros, expected) in cases {
            assert_eq!(PgTimestamp(micros).to_string(), expected, "{micros}");
        }
        assert_eq!(PgTimestamp(0).unix_micros(), Some(946_684_800_000_000));
        assert_eq!(PgTimestamp::INFINITY.unix_micros(), None);
    }
}
