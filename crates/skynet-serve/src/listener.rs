//! The accept loop both listeners run (the console's `[api] listen` and `[metrics] listen`).
//!
//! `axum::serve` has no header-read timeout, no idle timeout and no cap on connections: a
//! client that sends half a request header and goes silent holds its socket (and a task)
//! for ever, and a few thousand of them exhaust the file descriptors. This loop adds:
//!
//! - **a header timeout**: a request's head must arrive whole within `header_timeout` of
//!   its first byte (of the accept, for a connection's first request), and its body within
//!   `header_timeout` of the head (a body of at most 64 KiB: see the routes' limits);
//! - **an idle timeout**: a kept-alive connection with no request in flight is closed after
//!   `connection_idle` without a byte;
//! - **a write-stall timeout**: a client that stops reading its answer (a response, or a
//!   live stream) for `connection_idle` is closed: it would otherwise hold its connection,
//!   and a slot under the cap, for ever;
//! - **a connection cap**: past `max_connections` open at once the loop stops accepting
//!   (the kernel's backlog holds the rest) until one closes, counted in
//!   `skynet_http_connections_capped_total`;
//! - **a per-client cap**: past `max_per_client` open at once from one peer address (an
//!   IPv4-mapped IPv6 address counted as the IPv4 one), a new connection from it is closed at
//!   once, counted in `skynet_http_connections_per_client_capped_total`. Without it one
//!   address could hold every slot of the cap above by reopening half-headers every
//!   `header_timeout`. The `exempt` peers (trusted proxies, whose clients are many) are not
//!   counted;
//! - optional in-process TLS (rustls with ring), the handshake bound by `header_timeout`.
//!
//! hyper's own `header_read_timeout` is not used: it runs from the end of the previous
//! response to the end of the next head, so one value would be both the limit for a slow
//! head (seconds) and for an idle kept-alive connection (a minute). The [`Watched`] stream
//! below keeps the two apart: it knows when a request is in flight from the service.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt;

use crate::ServeError;

/// How long a stopping listener waits for its open connections (a live stream ends only
/// when the process does) before it returns anyway.
const DRAIN: Duration = Duration::from_secs(5);

/// The most a request head may take (hyper's read buffer; a body streams through it).
const MAX_HEAD: usize = 32 * 1024;

/// A listener's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The `listener` label of the listener's metrics: `console` or `metrics`.
    pub name: &'static str,
    pub header_timeout: Duration,
    pub connection_idle: Duration,
    pub max_connections: usize,
    /// Open connections at once from one peer address.
    pub max_per_client: usize,
    /// Peers not held to `max_per_client` (`[api] trusted_proxies`).
    pub exempt: Vec<ipnet::IpNet>,
}

impl Limits {
    /// The metrics listener's: scrapers and probes are few and quick.
    pub fn metrics() -> Self {
        Self {
            name: "metrics",
            header_timeout: Duration::from_secs(10),
            connection_idle: Duration::from_secs(60),
            max_connections: 256,
            max_per_client: 64,
            exempt: Vec::new(),
        }
    }

    /// The console's, from `[api]`.
    pub fn console(config: &crate::console::ApiConfig) -> Self {
        Self {
            name: "console",
            header_timeout: config.header_timeout,
            connection_idle: config.connection_idle,
            max_connections: config.max_connections,
            max_per_client: config.max_connections_per_client,
            exempt: config.trusted_proxies.clone(),
        }
    }
}

/// A TLS server configuration loaded from PEM files (`[api] tls_cert`, `tls_key`).
#[derive(Clone)]
pub struct Tls(tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Reads the certificate chain and the private key; an error names the file at fault.
    /// The ring provider is named here, not taken from the process default, so the console
    /// serves TLS whichever crate installed (or did not install) a default.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, ServeError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let tls_error = |path: &Path, message: String| ServeError::Tls {
            path: path.to_path_buf(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| tls_error(cert, format!("cannot read a PEM certificate: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error(cert, format!("not a PEM certificate chain: {e}")))?;
        if certs.is_empty() {
            return Err(tls_error(cert, "holds no PEM certificate".into()));
        }
        // The key's error never shows the key: pki-types reports only what failed.
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| tls_error(key, format!("not a PEM private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .map_err(|e| {
                tls_error(
                    key,
                    format!(
                        "does not go with the certificate in {}: {e}",
                        cert.display()
                    ),
                )
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }
}

/// Serves `router` on `listener` with `limits` until `shutdown` completes; then stops
/// accepting, asks every open connection to finish its request, and waits for them (at
/// most [`DRAIN`]). Each request carries `ConnectInfo<SocketAddr>`, the TCP peer.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let limits = Arc::new(limits);
    let clients = Clients::default();
    // Under a flood the cap is met again at every close: warn once a minute, count always.
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics::counter!("skynet_http_connections_capped_total", "listener" => limits.name)
                    .increment(1);
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    warned = Some(tokio::time::Instant::now());
                    tracing::warn!(
                        listener = limits.name,
                        max_connections = limits.max_connections,
                        "connection cap reached: new connections wait until one closes"
                    );
                }
                tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // The client gave up between SYN and accept: nothing to do.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: accepting again at once would
                    // spin. Connections closing free some.
                    tracing::warn!(listener = limits.name, error = %e, "accept failed; retrying in a second");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = clients.enter(peer.ip(), &limits) else {
            // Closed at once (the permit goes back with it): waiting would let this client
            // hold the backlog instead.
            metrics::counter!("skynet_http_connections_per_client_capped_total", "listener" => limits.name)
                .increment(1);
            tracing::debug!(listener = limits.name, %peer, "per-client connection cap reached: closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            router.clone(),
            Arc::clone(&limits),
            tls.clone(),
            stopping.clone(),
            (permit, slot),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN, permits.acquire_many(all)).await;
    Ok(())
}

/// Open connections per peer address. An entry lives while its address has a connection
/// open (it is removed at zero), so the map holds at most `max_connections` entries.
#[derive(Clone, Default)]
struct Clients(Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>);

impl Clients {
    /// A slot for a connection from `peer`; `None` when `peer` already holds
    /// `max_per_client`. An exempt peer gets a slot that counts nothing.
    fn enter(&self, peer: IpAddr, limits: &Limits) -> Option<ClientSlot> {
        let peer = crate::console::canonical(peer);
        if limits.exempt.iter().any(|net| net.contains(&peer)) {
            return Some(ClientSlot(None));
        }
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(peer).or_insert(0);
        if *count >= limits.max_per_client {
            return None;
        }
        *count += 1;
        Some(ClientSlot(Some((self.clone(), peer))))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// One connection's place under its client's cap, given back on drop.
struct ClientSlot(Option<(Clients, IpAddr)>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some((clients, peer)) = self.0.take() else {
            return;
        };
        let mut open = clients
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&peer);
            }
        }
    }
}

/// Open connections, per listener, while this lives.
struct Open(&'static str);

impl Open {
    fn new(name: &'static str) -> Self {
        metrics::gauge!("skynet_http_connections", "listener" => name).increment(1.0);
        Self(name)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("skynet_http_connections", "listener" => self.0).decrement(1.0);
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Arc<Limits>,
    tls: Option<Tls>,
    stopping: watch::Receiver<bool>,
    _slots: (OwnedSemaphorePermit, ClientSlot),
) {
    let _open = Open::new(limits.name);
    match tls {
        None => serve_io(stream, peer, router, limits, stopping).await,
        Some(Tls(acceptor)) => {
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_io(stream, peer, router, limits, stopping).await,
                Ok(Err(e)) => {
                    tracing::debug!(listener = limits.name, %peer, error = %e, "TLS handshake failed");
                }
                Err(_) => timed_out(&limits, "handshake"),
            }
        }
    }
}

fn timed_out(limits: &Limits, reason: &'static str) {
    metrics::counter!("skynet_http_timeouts_total", "listener" => limits.name, "reason" => reason)
        .increment(1);
}

async fn serve_io<IO>(
    io: IO,
    peer: SocketAddr,
    router: Router,
    limits: Arc<Limits>,
    mut stopping: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = Arc::new(Clock::default());
    let io = Watched::new(io, Arc::clone(&clock), Arc::clone(&limits));
    let body_timeout = limits.header_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        // A body, too, must arrive within header_timeout: a slow POST would otherwise hold
        // the connection as long as it trickles.
        let mut request = request.map(|body| TimedBody::new(body, body_timeout));
        request.extensions_mut().insert(ConnectInfo(peer));
        let busy = Busy::start(&clock);
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await?;
            Ok::<_, Infallible>(response.map(|body| Guarded { body, _busy: busy }))
        }
    });
    // hyper would buffer a request head of up to ~400 KiB: 4096 slow heads that size hold
    // 1.6 GiB. A console request's head (a cookie or two, a bearer token) is far below this;
    // a larger one is answered 431.
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(listener = limits.name, %peer, error = %e, "connection ended");
            }
            return;
        }
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    // Finish the request in flight, then close.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// What the service tells the stream: requests started, and those still in flight (until
/// their response body is written or dropped).
#[derive(Default)]
struct Clock {
    started: AtomicU64,
    in_flight: AtomicUsize,
    /// The connection task, when a read found a request in flight: hyper may not read again
    /// on its own once the response is written, so the idle deadline would never be set.
    reader: std::sync::Mutex<Option<std::task::Waker>>,
}

impl Clock {
    fn wake_reader(&self) {
        let waker = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A request in flight, from the service call to the end of its response body.
struct Busy(Arc<Clock>);

impl Busy {
    fn start(clock: &Arc<Clock>) -> Self {
        clock.in_flight.fetch_add(1, Ordering::AcqRel);
        clock.started.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(clock))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake_reader();
        }
    }
}

/// A response body that holds its request's [`Busy`] until hyper drops it.
struct Guarded {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails once `timeout` has passed since the request began without its
/// last byte (the handler then answers 400, and the connection is closed).
struct TimedBody {
    body: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(body: Incoming, timeout: Duration) -> Self {
        Self {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(
                        "the request body did not arrive within the header timeout".into(),
                    )));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// What a connection with no request in flight waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// A request is in flight (or was, since the last read): no deadline.
    Nothing,
    /// The first byte of the next request, until `connection_idle`.
    Idle,
    /// The rest of a request head, until `header_timeout` after its first byte.
    Head,
}

/// The connection's byte stream with the header and idle deadlines (see the module doc).
/// hyper reads only when it wants a request head or while a request is in flight, so the
/// deadlines are checked where a read would wait.
struct Watched<IO> {
    io: IO,
    clock: Arc<Clock>,
    limits: Arc<Limits>,
    /// `clock.started` at the last read: a change means a request came and went.
    seen: u64,
    wait: Wait,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// A write is waiting for the client to read: since when, with its deadline.
    write_stalled: bool,
    write_deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<IO> Watched<IO> {
    fn new(io: IO, clock: Arc<Clock>, limits: Arc<Limits>) -> Self {
        // A new connection owes its first head within header_timeout of the accept.
        let deadline = Box::pin(tokio::time::sleep(limits.header_timeout));
        let idle = limits.connection_idle;
        Self {
            io,
            clock,
            limits,
            seen: 0,
            wait: Wait::Head,
            deadline,
            write_stalled: false,
            write_deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let started = this.clock.started.load(Ordering::Acquire);
        if started != this.seen {
            this.seen = started;
            this.wait = Wait::Nothing;
        }
        let busy = this.clock.in_flight.load(Ordering::Acquire) > 0;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if !busy && buf.filled().len() > before && this.wait != Wait::Head {
                    // The first bytes of the next request: its head has header_timeout.
                    this.wait = Wait::Head;
                    let at = tokio::time::Instant::now() + this.limits.header_timeout;
                    this.deadline.as_mut().reset(at);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if busy => {
                this.wait = Wait::Nothing;
                {
                    // Every write of a live stream polls this: clone the waker only when
                    // it changed.
                    let mut reader = this
                        .clock
                        .reader
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if !reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *reader = Some(cx.waker().clone());
                    }
                }
                // The request may have ended since `busy` was read, before the waker was
                // left: then nobody would wake this read.
                if this.clock.in_flight.load(Ordering::Acquire) > 0 {
                    return Poll::Pending;
                }
                this.arm_idle();
                this.expired(cx)
            }
            Poll::Pending => {
                this.arm_idle();
                this.expired(cx)
            }
        }
    }
}

impl<IO> Watched<IO> {
    /// No request in flight and none begun: the idle deadline runs from now.
    fn arm_idle(&mut self) {
        if self.wait == Wait::Nothing {
            self.wait = Wait::Idle;
            let at = tokio::time::Instant::now() + self.limits.connection_idle;
            self.deadline.as_mut().reset(at);
        }
    }

    /// A read that would wait: fails it once the deadline has passed (hyper then closes
    /// the connection), else waits for the data or the deadline.
    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let reason = if self.wait == Wait::Head {
            "header"
        } else {
            "idle"
        };
        timed_out(&self.limits, reason);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no request {reason} in time; connection closed"),
        )))
    }
}

impl<IO> Watched<IO> {
    /// A write that made progress ends a stall; one that waits starts it (the first time)
    /// and fails once the client has read nothing for `connection_idle`.
    fn write_progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.write_stalled = false;
            return poll;
        }
        if !self.write_stalled {
            self.write_stalled = true;
            let at = tokio::time::Instant::now() + self.limits.connection_idle;
            self.write_deadline.as_mut().reset(at);
        }
        if self.write_deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        timed_out(&self.limits, "write");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing of its answer in time; connection closed",
        )))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.write_progress(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.write_progress(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.write_progress(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn limits(idle: Duration) -> Arc<Limits> {
        Arc::new(Limits {
            name: "test",
            header_timeout: Duration::from_secs(10),
            connection_idle: idle,
            max_connections: 16,
            max_per_client: 16,
            exempt: Vec::new(),
        })
    }

    #[test]
    fn per_client_slots_are_capped_mapped_ipv4_counted_as_ipv4_and_removed_at_zero() {
        let mut limits = Limits::metrics();
        limits.max_per_client = 2;
        limits.exempt = vec!["10.0.0.5/32".parse().unwrap()];
        let clients = Clients::default();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let first = clients.enter(v4, &limits).expect("first");
        let second = clients
            .enter(mapped, &limits)
            .expect("second, the same client");
        assert!(clients.enter(v4, &limits).is_none(), "past the cap");
        let other = clients
            .enter("192.0.2.8".parse().unwrap(), &limits)
            .expect("another client");
        let proxy: Vec<_> = (0..5)
            .map(|_| clients.enter("10.0.0.5".parse().unwrap(), &limits))
            .collect();
        assert!(
            proxy.iter().all(Option::is_some),
            "a trusted proxy is exempt"
        );
        assert_eq!(clients.len(), 2);
        drop((first, other, proxy));
        assert_eq!(clients.len(), 1);
        drop(second);
        assert_eq!(clients.len(), 0, "an entry is removed at zero");
    }

    /// Sends `head` on a fresh connection to a listener answering 200 to everything;
    /// returns the answer's status line.
    async fn status_line(head: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().fallback(|| async { "ok" });
        let limits = Limits::metrics();
        tokio::spawn(serve_router(
            listener,
            router,
            limits,
            None,
            std::future::pending(),
        ));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        while !answer.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        text.lines().next().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn a_request_head_past_the_limit_is_refused_and_a_normal_one_served() {
        let normal = "GET / HTTP/1.1\r\nHost: x\r\nCookie: a=b\r\n\r\n".to_string();
        assert!(status_line(normal).await.contains(" 200 "));
        let padding = "a".repeat(100 * 1024);
        let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {padding}\r\n\r\n");
        assert!(status_line(huge).await.contains(" 431 "));
    }

    /// Stopping the listener lets a request in flight finish (its answer arrives, whole,
    /// with the connection closed after it) and then returns; an idle connection is closed.
    #[tokio::test]
    async fn a_stopping_listener_finishes_the_request_in_flight_and_returns() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let entered_tx = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
        let release = Arc::new(tokio::sync::Notify::new());
        let handler_release = Arc::clone(&release);
        let router = Router::new().route(
            "/slow",
            axum::routing::get(move || {
                let entered = entered_tx.lock().unwrap().take();
                let release = Arc::clone(&handler_release);
                async move {
                    if let Some(entered) = entered {
                        let _ = entered.send(());
                    }
                    release.notified().await;
                    "done"
                }
            }),
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve_router(
            listener,
            router,
            Limits::metrics(),
            None,
            async {
                let _ = stop_rx.await;
            },
        ));
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        entered_rx.await.unwrap();
        stop_tx.send(()).unwrap();
        // The idle connection is closed (EOF) while the busy one's request goes on.
        let mut byte = [0u8; 1];
        assert_eq!(idle.read(&mut byte).await.unwrap(), 0);
        release.notify_one();
        let mut answer = Vec::new();
        busy.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
        served.await.unwrap().unwrap();
    }

    /// A client that asks for an answer and never reads it (a slow-read attack) no longer
    /// holds its connection for ever; one that reads, however slowly each time, is served.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped_and_one_that_reads_is_served() {
        let answer = vec![7u8; 64 * 1024];
        // Never read: the write fails with a timeout (a guard keeps a regression from
        // hanging the suite; it is no timed assertion).
        let (server, _client) = tokio::io::duplex(1024);
        let mut watched = Watched::new(server, Arc::default(), limits(Duration::from_millis(100)));
        let written = tokio::time::timeout(Duration::from_secs(60), watched.write_all(&answer))
            .await
            .expect("a stalled write must end");
        assert_eq!(written.unwrap_err().kind(), io::ErrorKind::TimedOut);

        // Read as it comes: the whole answer arrives.
        let (server, mut client) = tokio::io::duplex(1024);
        let mut watched = Watched::new(server, Arc::default(), limits(Duration::from_secs(30)));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.map(|_| got.len())
        });
        watched.write_all(&answer).await.unwrap();
        watched.shutdown().await.unwrap();
        drop(watched);
        assert_eq!(reader.await.unwrap().unwrap(), answer.len());
    }
}
