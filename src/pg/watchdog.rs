//! A socket wrapper that notices a silent server on an SQL connection.
//!
//! TCP cannot tell a slow server from a dead path: when a NAT, a firewall or a
//! stalled proxy stops forwarding without closing the socket, the kernel keeps
//! the connection "established" and a query waits forever (keepalives do not
//! help when a proxy's own kernel answers them). libpq has no cure either;
//! JDBC's `socketTimeout` is the usual one: give up when a reply is owed and
//! nothing arrives for a while.
//!
//! [`ReplyWatchdog`] does that for tokio-postgres without touching its code. It
//! sits between tokio-postgres and the (already TLS-decrypted) socket and reads
//! the protocol's framing in both directions, so it knows when a reply is
//! *owed*: every `Query` (`Q`) and `Sync` (`S`) message, and the startup packet,
//! is answered by exactly one `ReadyForQuery` (`Z`). While at least one reply
//! is owed and neither side has moved a byte for the receive timeout, the next
//! read fails with [`std::io::ErrorKind::TimedOut`]; tokio-postgres then fails
//! every pending query with a connection error, which walshift classifies as
//! transient and answers by reconnecting. An idle connection (nothing owed) is
//! never timed out.
//!
//! The limit therefore also bounds how long a single statement may run without
//! the server sending anything: it must exceed walshift's longest statement
//! (the default, 60 s, is far above any chunk walshift issues).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Counts complete protocol messages of one direction, fed in arbitrary
/// pieces.
#[derive(Debug)]
struct Framing {
    /// The first message has no tag (the startup packet): only the frontend.
    untagged_first: bool,
    /// Header bytes of the message being read (tag + 4-byte length).
    header: [u8; 5],
    /// How many header bytes are filled.
    header_len: usize,
    /// Body bytes of the current message still to skip.
    remaining: usize,
}

impl Framing {
    fn new(untagged_first: bool) -> Self {
        Framing { untagged_first, header: [0; 5], header_len: 0, remaining: 0 }
    }

    /// Feeds `bytes`, calling `on_message(tag)` at the start of each message
    /// (`tag` 0 for the untagged startup packet). Never panics on garbage: a
    /// length below 4 is read as 4.
    fn feed(&mut self, mut bytes: &[u8], mut on_message: impl FnMut(u8)) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(bytes.len());
                self.remaining -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let header_size = if self.untagged_first { 4 } else { 5 };
            let take = (header_size - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len < header_size {
                return;
            }
            let (tag, len_bytes) = if self.untagged_first {
                (0, [self.header[0], self.header[1], self.header[2], self.header[3]])
            } else {
                (self.header[0], [self.header[1], self.header[2], self.header[3], self.header[4]])
            };
            // The length counts itself (and not the tag).
            let len = u32::from_be_bytes(len_bytes).max(4) as usize;
            self.remaining = len - 4;
            self.header_len = 0;
            self.untagged_first = false;
            on_message(tag);
        }
    }
}

/// Wraps a connection's socket and fails reads when the server owes a reply
/// and has sent nothing for `timeout` (see the module doc).
#[derive(Debug)]
pub struct ReplyWatchdog<S> {
    inner: S,
    timeout: Duration,
    /// Replies (`ReadyForQuery`) still owed by the server.
    owed: u64,
    frontend: Framing,
    backend: Framing,
    /// When a byte last moved either way.
    last_progress: Instant,
    sleep: Pin<Box<Sleep>>,
    /// The reader waiting for bytes, woken when a reply becomes owed so it
    /// arms the timer.
    read_waker: Option<Waker>,
}

impl<S> ReplyWatchdog<S> {
    /// Wraps `inner`, a fresh connection on which nothing was sent yet.
    pub fn new(inner: S, timeout: Duration) -> Self {
        let now = Instant::now();
        ReplyWatchdog {
            inner,
            timeout,
            owed: 0,
            frontend: Framing::new(true),
            backend: Framing::new(false),
            last_progress: now,
            sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
            read_waker: None,
        }
    }

    fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no reply from the server for {} ms (receive_timeout_ms); \
                 the connection is treated as dead",
                self.timeout.as_millis()
            ),
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReplyWatchdog<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if !fresh.is_empty() {
                    this.last_progress = Instant::now();
                    let owed = &mut this.owed;
                    this.backend.feed(fresh, |tag| {
                        if tag == b'Z' {
                            *owed = owed.saturating_sub(1);
                        }
                    });
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if !this.read_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    this.read_waker = Some(cx.waker().clone());
                }
                if this.owed == 0 {
                    return Poll::Pending;
                }
                let deadline = this.last_progress + this.timeout;
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(this.timed_out())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReplyWatchdog<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                this.last_progress = Instant::now();
                let was_owed = this.owed;
                let owed = &mut this.owed;
                this.frontend.feed(&buf[..n], |tag| {
                    if matches!(tag, 0 | b'Q' | b'S') {
                        *owed += 1;
                    }
                });
                if was_owed == 0 && this.owed > 0 {
                    if let Some(waker) = &this.read_waker {
                        waker.wake_by_ref();
                    }
                }
            }
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn framing_counts_messages_split_anywhere() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&8u32.to_be_bytes());
        stream.extend_from_slice(&196_608u32.to_be_bytes());
        stream.extend(msg(b'Q', b"select 1\0"));
        stream.extend(msg(b'P', b"\0select $1\0\0\0"));
        stream.extend(msg(b'S', b""));
        for split in 1..stream.len() {
            let mut framing = Framing::new(true);
            let mut tags = Vec::new();
            for piece in stream.chunks(split) {
                framing.feed(piece, |t| tags.push(t));
            }
            assert_eq!(tags, vec![0, b'Q', b'P', b'S'], "split {split}");
        }
    }

    #[test]
    fn framing_survives_garbage_lengths() {
        let mut framing = Framing::new(false);
        let mut n = 0;
        framing.feed(&[b'Z', 0, 0, 0, 0, b'Z', 0, 0, 0, 1, b'Z', 255, 255, 255, 255], |_| n += 1);
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn a_silent_server_times_out_only_while_a_reply_is_owed() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut watched = ReplyWatchdog::new(client, Duration::from_millis(200));
        // Startup, answered with ReadyForQuery: nothing owed afterwards.
        watched.write_all(&8u32.to_be_bytes()).await.unwrap();
        watched.write_all(&196_608u32.to_be_bytes()).await.unwrap();
        let mut startup = [0u8; 8];
        server.read_exact(&mut startup).await.unwrap();
        server.write_all(&msg(b'Z', b"I")).await.unwrap();
        let mut got = [0u8; 6];
        watched.read_exact(&mut got).await.unwrap();
        // Idle: a read waits past the limit without failing.
        let idle = tokio::time::timeout(Duration::from_millis(600), watched.read_u8()).await;
        assert!(idle.is_err(), "an idle connection must not time out");
        // A query owes a reply; silence past the limit fails the read.
        watched.write_all(&msg(b'Q', b"select 1\0")).await.unwrap();
        let started = Instant::now();
        let err = watched.read_u8().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(err.to_string().contains("receive_timeout_ms"), "{err}");
    }
}
