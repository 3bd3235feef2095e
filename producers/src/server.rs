//! The HTTP server: HTTP/1.1 (with WebSocket upgrades; HTTP/2 belongs to the proxy in front)
//! with the bounds a public endpoint needs against clients that connect and then say nothing, or
//! too little (slowloris):
//!
//! - a request's headers must arrive within `header_timeout` of the connection becoming ready
//!   for them: from the moment it is accepted, and after each response, so a connection that
//!   never sends a byte and a keep-alive connection idle that long are both closed (a response
//!   that streams, SSE or an upgraded WebSocket, is not waiting for headers and is not cut);
//! - at most `max_connections` open connections, and at most `max_per_address` from one client
//!   address (an IPv6 client by its /64, which one host may own whole), so one client cannot take
//!   them all. A connection counts until its socket closes, upgraded or not. One over either cap
//!   is answered `503` with `Retry-After` and closed at once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bounds on the connections of one API process (0 turns a cap off).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Time allowed for a request's headers, and for an idle keep-alive connection.
    pub header_timeout: Duration,
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_per_address: 1_024,
        }
    }
}

/// What a refused connection reads before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 141\r\n\r\n{\"type\":\"https://conveyor.dev/problems/overloaded\",\"title\":\"Service Unavailable\",\"status\":503,\"detail\":\"too many connections; retry shortly\"}";

/// Open connections, in all and per address.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; leaves the count when dropped.
struct Admitted {
    open: Arc<Mutex<Open>>,
    address: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("connection count poisoned");
        open.total -= 1;
        if let Some(n) = open.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

/// The address a client is counted under: an IPv4 address (also when written IPv4-mapped), or
/// the /64 of an IPv6 one.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

fn admit(open: &Arc<Mutex<Open>>, limits: &ConnectionLimits, peer: IpAddr) -> Option<Admitted> {
    let address = client_key(peer);
    let mut o = open.lock().expect("connection count poisoned");
    let from_address = o.by_address.get(&address).copied().unwrap_or(0);
    if (limits.max_connections > 0 && o.total >= limits.max_connections)
        || (limits.max_per_address > 0 && from_address >= limits.max_per_address)
    {
        return None;
    }
    o.total += 1;
    *o.by_address.entry(address).or_default() += 1;
    Some(Admitted {
        open: open.clone(),
        address,
    })
}

/// Serves `router` on `listener` until `shutdown` fires, then lets open connections finish
/// (live streams end with the server).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Some(limits.header_timeout).filter(|t| !t.is_zero()));
    let builder = Arc::new(builder);
    let open = Arc::new(Mutex::new(Open::default()));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener itself is fine. Pause briefly rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = admit(&open, &limits, peer.ip()) else {
            metrics::counter!("conveyor_rejected_requests_total", "reason" => "connections")
                .increment(1);
            refuse(tcp);
            continue;
        };
        // Small request/response pairs: Nagle's algorithm would hold them back waiting for ACKs.
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let (builder, shutdown) = (builder.clone(), shutdown.clone());
        connections.spawn(async move {
            let io = TokioIo::new(Counted {
                tcp,
                _admitted: admitted,
            });
            let mut conn = pin!(builder.serve_connection(io, service).with_upgrades());
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// A connection's socket, holding its place in the count until it is dropped: after the last
/// response, or, once upgraded to a WebSocket, when the socket closes.
struct Counted {
    tcp: TcpStream,
    _admitted: Admitted,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Answers 503 without reading anything and closes. Never waits on the peer: whatever does not
/// fit in the socket's buffer at once is dropped with it.
fn refuse(tcp: TcpStream) {
    let _ = tcp.try_write(BUSY);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_declares_its_length() {
        let (head, body) = std::str::from_utf8(BUSY)
            .unwrap()
            .split_once("\r\n\r\n")
            .unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[test]
    fn caps_count_in_all_and_per_address() {
        let open = Arc::new(Mutex::new(Open::default()));
        let limits = ConnectionLimits {
            max_connections: 3,
            max_per_address: 2,
            ..Default::default()
        };
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = admit(&open, &limits, a).unwrap();
        let _a2 = admit(&open, &limits, a).unwrap();
        assert!(admit(&open, &limits, a).is_none(), "per address");
        let _b1 = admit(&open, &limits, b).unwrap();
        assert!(admit(&open, &limits, b).is_none(), "in all");
        drop(a1);
        assert!(admit(&open, &limits, b).is_some());
        assert!(open.lock().unwrap().by_address.len() <= 2);
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:127.0.0.2"), key("127.0.0.2"));
        assert_eq!(key("127.0.0.2"), "127.0.0.2".parse::<IpAddr>().unwrap());
    }
}
