//! The HTTP listener on `[metrics] listen`: read-only endpoints for
//! Prometheus, orchestrators and operators. Nothing here changes state.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus text format |
//! | `/healthz` | `200 ok` while the process runs |
//! | `/readyz` | `200 ready`, or `503` with the reason (stream down, lag unknown or over `[metrics] ready_max_lag_seconds`) |
//! | `/status` | the JSON of `walshift status --json`, with the live figures |
//! | `/` | the live status page (one self-contained HTML file, refreshing from `/status`) |
//!
//! A deliberately small HTTP/1.1 server (GET and HEAD, one request per
//! connection, bounded request size): the endpoints need nothing more, and
//! it keeps a web framework out of the dependency tree.
//!
//! Security (docs/security.md): every other method is answered `405` with
//! `allow: GET, HEAD` before the path is looked at, so no request can change
//! anything; operator actions go through the state schema, guarded by the
//! database's permissions. The default `[metrics] listen` is loopback
//! (`127.0.0.1:9187`); any other address is an explicit choice in the
//! config and is logged as a warning at start. The answers carry no secret:
//! connection strings are never part of the status document.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::runtime::shutdown::Shutdown;
use crate::runtime::tasks::spawn_named;

/// The live status page.
pub const PAGE: &str = include_str!("page.html");

/// Largest request head read.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// A client has this long to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Interval of the exporter's upkeep (draining histogram buffers).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The future of a status read.
pub type StatusFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// What `/status` and `/readyz` ask the running command.
pub trait StatusSource: Send + Sync {
    /// The status document as JSON.
    fn status_json(&self) -> StatusFuture<'_>;
    /// `Ok` when ready, else why not.
    fn readiness(&self) -> Result<(), String>;
}

/// What the listener serves.
pub struct Endpoints {
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Answers `/status` and `/readyz` (`None`: commands without a stream;
    /// `/status` is then 404 and `/readyz` ready).
    pub status: Option<Arc<dyn StatusSource>>,
    /// Refreshes gauges computed from live state (lag) right before a
    /// scrape, so `/metrics` is exact when read, not up to one refresh
    /// interval stale.
    pub before_scrape: Option<Box<dyn Fn() + Send + Sync>>,
}

/// Binds `listen`; warns when it is not a loopback address. Returns the
/// bound address (the port may have been 0).
pub async fn bind(listen: SocketAddr) -> Result<(TcpListener, SocketAddr), std::io::Error> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "metrics.listen {addr} is not a loopback address: /metrics, /status and the status \
             page are readable by whoever can reach it (they hold no secret and change nothing); \
             restrict it with a firewall, or listen on 127.0.0.1"
        );
    }
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz, /status and the status page");
    Ok((listener, addr))
}

/// Serves `endpoints` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, endpoints: Arc<Endpoints>, mut shutdown: Shutdown) {
    let upkeep = endpoints.metrics.clone();
    let _upkeep = spawn_named("metrics-upkeep", async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let endpoints = Arc::clone(&endpoints);
                    let _conn = spawn_named("http-connection", async move {
                        if let Err(e) = handle(stream, &endpoints).await {
                            tracing::debug!(error = %e, "http connection");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = shutdown.wait() => break,
        }
    }
    _upkeep.abort();
}

/// The request line's method and path, once the head is complete.
fn parse_request(head: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(head).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

async fn handle(mut stream: TcpStream, endpoints: &Endpoints) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_REQUEST_BYTES {
                return Ok(false);
            }
        }
    })
    .await
    .unwrap_or(Ok(false))?;
    if !complete {
        return respond(&mut stream, 400, "text/plain", b"bad request\n", false).await;
    }
    let Some((method, path)) = parse_request(&head) else {
        return respond(&mut stream, 400, "text/plain", b"bad request\n", false).await;
    };
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(&mut stream, 405, "text/plain", b"only GET\n", false).await;
    }
    match path {
        "/metrics" => {
            if let Some(refresh) = &endpoints.before_scrape {
                refresh();
            }
            let body = endpoints.metrics.render();
            respond(&mut stream, 200, "text/plain; version=0.0.4", body.as_bytes(), head_only).await
        }
        "/healthz" => respond(&mut stream, 200, "text/plain", b"ok\n", head_only).await,
        "/readyz" => match endpoints.status.as_ref().map_or(Ok(()), |s| s.readiness()) {
            Ok(()) => respond(&mut stream, 200, "text/plain", b"ready\n", head_only).await,
            Err(why) => {
                let body = format!("not ready: {why}\n");
                respond(&mut stream, 503, "text/plain", body.as_bytes(), head_only).await
            }
        },
        "/status" => match &endpoints.status {
            Some(source) => match source.status_json().await {
                Ok(json) => {
                    respond(&mut stream, 200, "application/json", json.as_bytes(), head_only).await
                }
                Err(e) => {
                    let body = serde_json::json!({ "error": e }).to_string();
                    respond(&mut stream, 503, "application/json", body.as_bytes(), head_only).await
                }
            },
            None => respond(&mut stream, 404, "text/plain", b"no status here\n", head_only).await,
        },
        "/" | "/index.html" => {
            respond(&mut stream, 200, "text/html; charset=utf-8", PAGE.as_bytes(), head_only).await
        }
        _ => respond(&mut stream, 404, "text/plain", b"not found\n", head_only).await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let allow = if code == 405 { "allow: GET, HEAD\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         {allow}cache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_request_line() {
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\n\r\n"), Some(("GET", "/metrics")));
        assert_eq!(parse_request(b"GET /status?x=1 HTTP/1.1\r\n"), Some(("GET", "/status")));
        assert_eq!(parse_request(b"\xff\xfe"), None);
        assert_eq!(parse_request(b""), None);
    }
}
