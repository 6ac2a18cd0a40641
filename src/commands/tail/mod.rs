//! `walshift tail`: print decoded changes from the slot as JSON lines.
//!
//! `pg_recvlogical` shows bytes; this shows rows (format in [`json`]).
//!
//! # Acknowledgement
//!
//! With acknowledgement on (the default) the flush LSN sent to the server is
//! the end of the last transaction whose lines have been written to stdout
//! (or, between transactions, the position of the last keepalive: the server
//! has sent every transaction that committed before it). With `--no-ack` the
//! flush LSN stays `0/0`, so the slot does not move.
//!
//! # Reconnecting without losing or repeating a change
//!
//! When the connection breaks (walsender terminated, server restart), tail
//! reconnects with back-off and restarts at the end of the last transaction
//! it printed completely; the server skips every transaction that committed
//! before that. If the break happened in the middle of a transaction, that
//! transaction is sent again from its start: tail remembers how many lines of
//! it were already printed and skips exactly those.

pub mod json;

use std::io::Write;
use std::time::Duration;

use tokio::time::Instant;

use crate::cli::TailArgs;
use crate::config::ValidatedConfig;
use crate::error::Error;
use crate::lsn::Lsn;
use crate::replication::pgoutput::PgOutputMessage;
use crate::replication::stream::{LogicalStream, StreamError, StreamEvent, StreamOptions};
use crate::runtime::shutdown::Shutdown;
use json::{Op, Renderer, TxnContext};

/// Output is written to stdout once this many bytes are buffered (or when
/// the socket has nothing more to read, whichever comes first).
const OUTPUT_FLUSH_BYTES: usize = 256 * 1024;

/// First reconnect delay; doubles up to the configured maximum.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// While waiting for `--endpos` with nothing to read, ask the server where
/// it is this often.
const ENDPOS_POLL: Duration = Duration::from_millis(200);

/// How a tail run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEnd {
    /// `--endpos` was reached.
    EndposReached,
    /// SIGINT/SIGTERM.
    Interrupted,
    /// stdout was closed (e.g. `| head`).
    OutputClosed,
}

/// Counters of a tail run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TailSummary {
    /// Row-change lines printed.
    pub rows: u64,
    /// Transactions completed.
    pub transactions: u64,
    /// Times the connection was re-established.
    pub reconnects: u64,
}

/// An open transaction.
#[derive(Debug)]
struct OpenTxn {
    ctx: TxnContext,
    /// Lines of this transaction seen so far (printed or skipped).
    lines: u64,
    /// Lines to skip because they were printed before a reconnect.
    skip: u64,
}

/// What the event loop decided.
enum Step {
    Continue,
    Stop(TailEnd),
}

/// The state that survives reconnects.
struct Tail<'a> {
    args: &'a TailArgs,
    renderer: Renderer,
    out: Vec<u8>,
    sink: &'a mut (dyn Write + Send),
    txn: Option<OpenTxn>,
    /// A transaction interrupted by a reconnect: (commit LSN, lines printed).
    resume: Option<(Lsn, u64)>,
    /// Everything before this position is in `out` or already written.
    done: Lsn,
    /// Everything before this position is written to the sink.
    written: Lsn,
    summary: TailSummary,
}

/// Runs `tail` until `--endpos`, a signal, or a fatal error.
pub async fn run(
    cfg: &ValidatedConfig,
    args: &TailArgs,
    mut shutdown: Shutdown,
    sink: &mut (dyn Write + Send),
) -> Result<(TailEnd, TailSummary), Error> {
    let url = cfg.source.url.with_application_name("walshift:tail");
    let mut tail = Tail {
        args,
        renderer: Renderer::default(),
        out: Vec::with_capacity(OUTPUT_FLUSH_BYTES + 64 * 1024),
        sink,
        txn: None,
        resume: None,
        done: args.start_lsn.unwrap_or(Lsn::ZERO),
        written: Lsn::ZERO,
        summary: TailSummary::default(),
    };
    let mut backoff = INITIAL_BACKOFF;
    let mut connected_once = false;
    loop {
        let options = StreamOptions {
            slot: cfg.source.slot.clone(),
            publication: cfg.source.publication.clone(),
            start_lsn: tail.done,
            status_interval: cfg.source.status_interval,
        };
        let error = match LogicalStream::start(&url, &options).await {
            Ok(stream) => {
                connected_once = true;
                backoff = INITIAL_BACKOFF;
                match tail.pump(stream, &mut shutdown).await {
                    Ok(end) => return Ok((end, tail.summary)),
                    Err(TailError::Fatal(err)) => return Err(*err),
                    Err(TailError::Stream(err)) => err,
                }
            }
            Err(err) => err,
        };
        // A server that cannot be reached at the first attempt is most
        // likely a wrong address: fail fast. A connection the server ended
        // (a walsender terminated while starting, a restart) is retried,
        // first attempt or not.
        if !error.is_transient() || (!connected_once && error.is_unreachable()) {
            return Err(classify(error, cfg).await);
        }
        tail.connection_lost();
        tracing::warn!(error = %error, retry_in = ?backoff, resume_at = %tail.done, "replication connection lost, reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait() => {
                tail.flush().map_err(Error::Output)?;
                return Ok((TailEnd::Interrupted, tail.summary));
            }
        }
        backoff = (backoff * 2).min(cfg.source.reconnect_max_backoff);
        tail.summary.reconnects += 1;
    }
}

/// Turns "slot/publication does not exist" into an actionable precondition,
/// naming `wal_level` when it was lowered (the root cause of a missing slot).
async fn classify(error: StreamError, cfg: &ValidatedConfig) -> Error {
    // The server refused to stream (no slot, or "logical decoding requires
    // wal_level >= logical"): look for the root cause.
    if let StreamError::Wire(wire) = &error
        && wire.server_error().is_some()
    {
        let limits = crate::pg::client::SessionLimits::ADMIN;
        if let Ok(source) = crate::pg::client::connect(&cfg.source.url, "tail", limits).await
            && let Ok(failures) = crate::checks::stream_source(&source, &cfg.source.slot).await
            && !failures.is_empty()
        {
            return Error::Checks(crate::checks::CheckFailures(failures));
        }
    }
    if let StreamError::Wire(wire) = &error
        && let Some(server) = wire.server_error()
        && server.code == "42704"
    {
        return Error::Precondition(format!(
            "{} (slot {}, publication {}): run `walshift setup` first",
            server.message, cfg.source.slot, cfg.source.publication
        ));
    }
    Error::Stream(error)
}

enum TailError {
    /// Reconnecting may help.
    Stream(StreamError),
    /// Stop.
    Fatal(Box<Error>),
}

impl TailError {
    fn fatal(err: Error) -> TailError {
        TailError::Fatal(Box::new(err))
    }
}

impl From<StreamError> for TailError {
    fn from(err: StreamError) -> Self {
        if err.is_transient() {
            TailError::Stream(err)
        } else {
            TailError::fatal(Error::Stream(err))
        }
    }
}

impl Tail<'_> {
    /// Reads, prints and acknowledges until a stop condition or an error.
    async fn pump(
        &mut self,
        mut stream: LogicalStream,
        shutdown: &mut Shutdown,
    ) -> Result<TailEnd, TailError> {
        let mut last_poll = Instant::now();
        loop {
            while let Some(event) = stream.next_buffered()? {
                if let Step::Stop(end) = self.handle(event)? {
                    return self.finish(stream, end).await;
                }
                if self.out.len() >= OUTPUT_FLUSH_BYTES && !self.flush_or_closed() {
                    return self.finish(stream, TailEnd::OutputClosed).await;
                }
            }
            if !self.flush_or_closed() {
                return self.finish(stream, TailEnd::OutputClosed).await;
            }
            if !self.args.no_ack {
                stream.confirm_flushed(self.written);
            }
            stream.send_status_if_due(false).await?;
            let waiting_for_endpos = self.args.endpos.is_some() && self.txn.is_none();
            if waiting_for_endpos && last_poll.elapsed() >= ENDPOS_POLL {
                stream.request_keepalive().await?;
                last_poll = Instant::now();
            }
            let wake = if waiting_for_endpos {
                (last_poll + ENDPOS_POLL).min(stream.next_status_at().into())
            } else {
                stream.next_status_at().into()
            };
            tokio::select! {
                filled = stream.fill() => filled?,
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.wait() => return self.finish(stream, TailEnd::Interrupted).await,
            }
        }
    }

    /// Writes what is buffered, confirms it, says goodbye to the server.
    async fn finish(
        &mut self,
        mut stream: LogicalStream,
        end: TailEnd,
    ) -> Result<TailEnd, TailError> {
        let closed = !self.flush_or_closed();
        if !self.args.no_ack {
            stream.confirm_flushed(self.written);
        }
        if let Err(error) = stream.close().await {
            tracing::debug!(error = %error, "closing the replication connection");
        }
        Ok(if closed { TailEnd::OutputClosed } else { end })
    }

    /// Flushes; `false` when stdout is closed. Other write errors are fatal
    /// to the process but the tail loop only needs to stop.
    fn flush_or_closed(&mut self) -> bool {
        match self.flush() {
            Ok(()) => true,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::BrokenPipe {
                    tracing::error!(error = %error, "cannot write output");
                }
                false
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.sink.write_all(&self.out)?;
            self.sink.flush()?;
            self.out.clear();
        }
        self.written = self.done;
        Ok(())
    }

    /// The connection broke: remember how far into an open transaction we got.
    fn connection_lost(&mut self) {
        if let Some(txn) = self.txn.take() {
            self.resume = Some((txn.ctx.commit_lsn, txn.lines.max(txn.skip)));
        }
    }

    /// Whether the next line of the open transaction is new (and counts it).
    fn next_line_is_new(&mut self) -> bool {
        match &mut self.txn {
            Some(txn) => {
                txn.lines += 1;
                txn.lines > txn.skip
            }
            None => true,
        }
    }

    fn open_txn(&self, lsn: Lsn) -> Result<&OpenTxn, TailError> {
        self.txn.as_ref().ok_or_else(|| {
            TailError::fatal(Error::Protocol(format!("change at {lsn} outside a transaction")))
        })
    }

    fn handle(&mut self, event: StreamEvent) -> Result<Step, TailError> {
        let (lsn, message) = match event {
            StreamEvent::Keepalive { wal_end } => {
                if self.txn.is_none() {
                    // Every transaction that committed before wal_end was sent.
                    self.done = self.done.max(wal_end);
                    if let Some(endpos) = self.args.endpos
                        && wal_end >= endpos
                    {
                        tracing::debug!(%wal_end, %endpos, "keepalive reached endpos");
                        return Ok(Step::Stop(TailEnd::EndposReached));
                    }
                }
                return Ok(Step::Continue);
            }
            StreamEvent::Message { lsn, message } => (lsn, message),
        };
        let render_err = |e: json::RenderError| TailError::fatal(Error::Protocol(e.to_string()));
        match message {
            PgOutputMessage::Begin(begin) => {
                if let Some(endpos) = self.args.endpos
                    && begin.final_lsn >= endpos
                {
                    tracing::debug!(commit_lsn = %begin.final_lsn, %endpos, "transaction beyond endpos");
                    return Ok(Step::Stop(TailEnd::EndposReached));
                }
                if self.txn.is_some() {
                    return Err(TailError::fatal(Error::Protocol(format!(
                        "BEGIN at {lsn} inside an open transaction"
                    ))));
                }
                let skip = match self.resume.take() {
                    Some((commit_lsn, lines)) if commit_lsn == begin.final_lsn => lines,
                    _ => 0,
                };
                self.txn = Some(OpenTxn { ctx: TxnContext::from_begin(&begin), lines: 0, skip });
                if self.args.all && self.next_line_is_new() {
                    self.renderer.begin(&mut self.out, lsn, &begin);
                }
            }
            PgOutputMessage::Commit(commit) => {
                let txn = self.open_txn(lsn)?;
                let ctx = txn.ctx;
                if ctx.commit_lsn != commit.commit_lsn {
                    return Err(TailError::fatal(Error::Protocol(format!(
                        "COMMIT at {} does not match BEGIN at {}",
                        commit.commit_lsn, ctx.commit_lsn
                    ))));
                }
                if self.args.all && self.next_line_is_new() {
                    self.renderer.commit(&mut self.out, lsn, &ctx, &commit);
                }
                self.txn = None;
                self.done = self.done.max(commit.end_lsn);
                self.summary.transactions += 1;
                if let Some(endpos) = self.args.endpos
                    && commit.end_lsn >= endpos
                {
                    return Ok(Step::Stop(TailEnd::EndposReached));
                }
            }
            PgOutputMessage::Relation(relation) => {
                self.renderer.relation(&relation);
                // Not counted as a transaction line: after a reconnect the
                // server describes relations again, wherever it first needs them.
                if self.args.all {
                    self.renderer.relation_event(&mut self.out, lsn, relation.rel_id);
                }
            }
            PgOutputMessage::Insert(insert) => {
                let ctx = self.open_txn(lsn)?.ctx;
                if self.next_line_is_new() {
                    self.renderer
                        .row(
                            &mut self.out,
                            lsn,
                            &ctx,
                            insert.rel_id,
                            Op::Insert,
                            Some(&insert.new_tuple),
                            None,
                        )
                        .map_err(render_err)?;
                    self.summary.rows += 1;
                }
            }
            PgOutputMessage::Update(update) => {
                let ctx = self.open_txn(lsn)?.ctx;
                if self.next_line_is_new() {
                    let old = update.old_tuple.as_ref().map(|o| (o.kind, &o.tuple));
                    self.renderer
                        .row(
                            &mut self.out,
                            lsn,
                            &ctx,
                            update.rel_id,
                            Op::Update,
                            Some(&update.new_tuple),
                            old,
                        )
                        .map_err(render_err)?;
                    self.summary.rows += 1;
                }
            }
            PgOutputMessage::Delete(delete) => {
                let ctx = self.open_txn(lsn)?.ctx;
                if self.next_line_is_new() {
                    let old = Some((delete.old_tuple.kind, &delete.old_tuple.tuple));
                    self.renderer
                        .row(&mut self.out, lsn, &ctx, delete.rel_id, Op::Delete, None, old)
                        .map_err(render_err)?;
                    self.summary.rows += 1;
                }
            }
            PgOutputMessage::Truncate(truncate) => {
                let ctx = self.open_txn(lsn)?.ctx;
                if self.args.all && self.next_line_is_new() {
                    self.renderer
                        .truncate(&mut self.out, lsn, &ctx, &truncate)
                        .map_err(render_err)?;
                }
            }
            PgOutputMessage::Message(message) => {
                if message.transactional {
                    let ctx = self.open_txn(lsn)?.ctx;
                    if self.args.all && self.next_line_is_new() {
                        self.renderer.message(&mut self.out, lsn, Some(&ctx), &message);
                    }
                } else if self.txn.is_none() {
                    if let Some(endpos) = self.args.endpos
                        && message.lsn >= endpos
                    {
                        return Ok(Step::Stop(TailEnd::EndposReached));
                    }
                    if self.args.all {
                        self.renderer.message(&mut self.out, lsn, None, &message);
                    }
                    // Restarting after this point does not send it again.
                    self.done = self.done.max(Lsn(message.lsn.0 + 1));
                } else if self.args.all && self.next_line_is_new() {
                    self.renderer.message(&mut self.out, lsn, None, &message);
                }
            }
            PgOutputMessage::Origin(_) | PgOutputMessage::Type(_) => {}
        }
        Ok(Step::Continue)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::replication::pgoutput::{
        Begin, Commit, Insert, PgTimestamp, Relation, RelationColumn, ReplicaIdentity, TupleData,
        TupleValue,
    };

    fn args(all: bool, endpos: Option<Lsn>) -> TailArgs {
        TailArgs { all, no_ack: false, endpos, start_lsn: None }
    }

    fn msg(lsn: u64, message: PgOutputMessage) -> StreamEvent {
        StreamEvent::Message { lsn: Lsn(lsn), message }
    }

    fn relation() -> PgOutputMessage {
        PgOutputMessage::Relation(Relation {
            rel_id: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![RelationColumn {
                flags: 1,
                name: "id".into(),
                type_oid: 23,
                type_modifier: -1,
            }],
        })
    }

    /// A transaction committing at `commit` with rows `ids`.
    fn txn(commit: u64, ids: &[u32]) -> Vec<StreamEvent> {
        let mut events = vec![msg(
            commit - 100,
            PgOutputMessage::Begin(Begin {
                final_lsn: Lsn(commit),
                commit_time: PgTimestamp(0),
                xid: 7,
            }),
        )];
        for (i, id) in ids.iter().enumerate() {
            events.push(msg(
                commit - 99 + i as u64,
                PgOutputMessage::Insert(Insert {
                    rel_id: 1,
                    new_tuple: TupleData {
                        columns: vec![TupleValue::Text(Bytes::from(id.to_string()))],
                    },
                }),
            ));
        }
        events.push(msg(
            commit + 10,
            PgOutputMessage::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(commit),
                end_lsn: Lsn(commit + 10),
                commit_time: PgTimestamp(0),
            }),
        ));
        events
    }

    fn printed_ids(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("op").is_some())
            .map(|v| v["new"]["id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn feed(tail: &mut Tail<'_>, events: Vec<StreamEvent>) -> Option<TailEnd> {
        for event in events {
            match tail.handle(event) {
                Ok(Step::Continue) => {}
                Ok(Step::Stop(end)) => return Some(end),
                Err(_) => panic!("handle failed"),
            }
        }
        None
    }

    fn new_tail<'a>(args: &'a TailArgs, sink: &'a mut Vec<u8>) -> Tail<'a> {
        Tail {
            args,
            renderer: Renderer::default(),
            out: Vec::new(),
            sink,
            txn: None,
            resume: None,
            done: Lsn::ZERO,
            written: Lsn::ZERO,
            summary: TailSummary::default(),
        }
    }

    #[test]
    fn a_transaction_resent_after_a_reconnect_is_printed_once() {
        for all in [false, true] {
            let args = args(all, None);
            let mut sink = Vec::new();
            let mut tail = new_tail(&args, &mut sink);
            feed(&mut tail, vec![msg(0, relation())]);
            feed(&mut tail, txn(1000, &[1, 2]));
            // The next transaction breaks off after two of its three rows...
            let mut second = txn(2000, &[3, 4, 5]);
            second.truncate(3);
            feed(&mut tail, second);
            tail.connection_lost();
            assert_eq!(tail.done, Lsn(1010), "restart after the last complete transaction");
            // ...and the server sends it again from the start (with the relation).
            feed(&mut tail, vec![msg(0, relation())]);
            feed(&mut tail, txn(2000, &[3, 4, 5]));
            feed(&mut tail, txn(3000, &[6]));
            tail.flush().unwrap();
            assert_eq!(tail.written, Lsn(3010));
            let out = std::mem::take(&mut tail.out);
            assert!(out.is_empty());
            let lines = String::from_utf8_lossy(&sink).into_owned();
            assert_eq!(printed_ids(lines.as_bytes()), ["1", "2", "3", "4", "5", "6"], "all={all}");
            if all {
                assert_eq!(lines.matches("\"event\":\"begin\"").count(), 3);
                assert_eq!(lines.matches("\"event\":\"commit\"").count(), 3);
            }
        }
    }

    #[test]
    fn endpos_stops_before_later_transactions_and_on_keepalives() {
        let args = args(false, Some(Lsn(1500)));
        let mut sink = Vec::new();
        let mut tail = new_tail(&args, &mut sink);
        feed(&mut tail, vec![msg(0, relation())]);
        assert_eq!(feed(&mut tail, txn(1000, &[1])), None);
        assert_eq!(feed(&mut tail, txn(2000, &[2])), Some(TailEnd::EndposReached));
        tail.flush().unwrap();
        assert_eq!(printed_ids(&sink), ["1"]);

        let args = self::args(false, Some(Lsn(1500)));
        let mut sink = Vec::new();
        let mut tail = new_tail(&args, &mut sink);
        let keepalive = |lsn| StreamEvent::Keepalive { wal_end: Lsn(lsn) };
        assert_eq!(feed(&mut tail, vec![keepalive(1499)]), None);
        assert_eq!(tail.done, Lsn(1499), "an idle keepalive is a resume point");
        assert_eq!(feed(&mut tail, vec![keepalive(1500)]), Some(TailEnd::EndposReached));
    }

    #[test]
    fn keepalives_inside_a_transaction_do_not_move_the_resume_point() {
        let args = args(false, None);
        let mut sink = Vec::new();
        let mut tail = new_tail(&args, &mut sink);
        feed(&mut tail, vec![msg(0, relation())]);
        let mut events = txn(1000, &[1, 2]);
        events.insert(2, StreamEvent::Keepalive { wal_end: Lsn(5000) });
        let commit = events.pop().unwrap();
        feed(&mut tail, events);
        assert_eq!(tail.done, Lsn::ZERO);
        feed(&mut tail, vec![commit]);
        assert_eq!(tail.done, Lsn(1010));
    }
}
