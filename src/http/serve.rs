//! The listener: HTTP/1.1 through hyper-util with a header-read timeout
//! (`axum::serve` sets none), a TLS handshake timeout, a connection limit
//! overall and per source address, and graceful shutdown that lets
//! in-flight requests finish.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::attest::x509::PeerCertificates;

#[derive(Clone)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// Most connections one source address may hold open; 0: no limit but
    /// `max_connections`.
    pub max_connections_per_source: usize,
    pub shutdown_grace: Duration,
    /// Counts the connections closed at once for a limit.
    pub refused: RefusedConnections,
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address already held `max_connections_per_source`.
    PerSource,
    /// The listener already held `max_connections`.
    Total,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerSource => "per_source",
            Self::Total => "total",
        }
    }
}

/// The label of `halflife_connections_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    reason: &'static str,
}

/// `halflife_connections_refused_total{reason}`: connections closed at once
/// because a limit was reached, shared by every listener.
#[derive(Clone)]
pub struct RefusedConnections(Family<ReasonLabel, Counter>);

impl Default for RefusedConnections {
    fn default() -> Self {
        let family = Family::<ReasonLabel, Counter>::default();
        // Both series exist from the start, at 0, for alerts to compare.
        for reason in [Refusal::PerSource, Refusal::Total] {
            drop(family.get_or_create(&ReasonLabel { reason: reason.as_str() }));
        }
        Self(family)
    }
}

impl RefusedConnections {
    fn count(&self, reason: Refusal) {
        self.0.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
    }

    /// The counter family, for the metrics registry.
    pub fn family(&self) -> Family<ReasonLabel, Counter> {
        self.0.clone()
    }
}

/// How often refused connections are logged: one WARN line per interval
/// with the counts, however many there were (a flood of connections would
/// otherwise be a flood of log lines).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Connections refused since they were last logged.
#[derive(Default)]
struct RefusalLog {
    per_source: u64,
    total: u64,
}

impl RefusalLog {
    fn note(&mut self, reason: Refusal) {
        match reason {
            Refusal::PerSource => self.per_source += 1,
            Refusal::Total => self.total += 1,
        }
    }

    /// Logs the counts as one line, if there are any, and starts over.
    fn report(&mut self, listen: SocketAddr) {
        let Self { per_source, total } = std::mem::take(self);
        if per_source + total > 0 {
            tracing::warn!(
                %listen,
                refused = per_source + total,
                per_source,
                total,
                interval_s = REFUSAL_LOG_INTERVAL.as_secs(),
                "connection limits reached; connections were closed at once"
            );
        }
    }
}

/// Connections open per source address, for `max_connections_per_source`.
#[derive(Default)]
struct Sources(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in its source's count, given back when the
/// connection ends.
struct SourceSlot {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Sources {
    /// A place for one more connection from `ip`, unless it holds `limit`.
    fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<SourceSlot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let held = open.entry(ip).or_default();
        if *held >= limit {
            return None;
        }
        *held += 1;
        Some(SourceSlot { sources: Arc::clone(self), ip })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = open.get_mut(&self.ip) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Builds a TLS acceptor (TLS 1.2 and 1.3 only, ring provider) from PEM files.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, String> {
    acceptor(cert_file, key_file, None)
}

/// Like [`tls_acceptor`], but every client must present a certificate that
/// `verifier` accepts (the mTLS listener).
pub fn mtls_acceptor(
    cert_file: &Path,
    key_file: &Path,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<TlsAcceptor, String> {
    acceptor(cert_file, key_file, Some(verifier))
}

fn acceptor(
    cert_file: &Path,
    key_file: &Path,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("{}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificates found", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits up to
/// the grace period for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let sources = Arc::new(Sources::default());
    let listen = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut refusals = RefusalLog::default();
    let mut report = tokio::time::interval(REFUSAL_LOG_INTERVAL);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let options = Arc::new(options);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically out of file descriptors: pause rather than
                    // spin until some close.
                    tracing::warn!(error = %e, "accept failed; pausing");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = report.tick() => {
                refusals.report(listen);
                continue;
            }
            () = &mut shutdown => break,
        };
        // One source may hold its share and no more, so that it cannot
        // keep every other client out until its connections time out.
        let source = match options.max_connections_per_source {
            0 => None,
            limit => match sources.take(peer.ip().to_canonical(), limit) {
                Some(slot) => Some(slot),
                None => {
                    options.refused.count(Refusal::PerSource);
                    refusals.note(Refusal::PerSource);
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            options.refused.count(Refusal::Total);
            refusals.note(Refusal::Total);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let options = Arc::clone(&options);
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _held = (permit, source);
            match tls {
                None => serve_connection(stream, peer, None, router, &options, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(options.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let certs =
                                tls_stream.get_ref().1.peer_certificates().map(|chain| {
                                    PeerCertificates(chain.iter().map(|c| c.clone().into_owned()).collect())
                                });
                            serve_connection(tls_stream, peer, certs, router, &options, watcher).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    refusals.report(listen);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!("shutdown grace period elapsed with connections still open");
        }
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    certs: Option<PeerCertificates>,
    router: Router,
    options: &ServeOptions,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if let Some(certs) = &certs {
            req.extensions_mut().insert(certs.clone());
        }
        router.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log lines written while `f` runs.
    fn logged(f: impl FnOnce()) -> Vec<String> {
        let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn refused_connections_are_logged_as_one_line_per_interval() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 8080));
        let mut log = RefusalLog::default();
        let lines = logged(|| {
            for _ in 0..300 {
                log.note(Refusal::PerSource);
            }
            for _ in 0..6 {
                log.note(Refusal::Total);
            }
            log.report(listen);
            // Nothing refused since: nothing logged.
            log.report(listen);
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(line.contains("WARN") && line.contains("connection limits reached"), "{line}");
        assert!(line.contains("refused=306") && line.contains("per_source=300") && line.contains("total=6"), "{line}");
    }

    #[test]
    fn a_source_holds_at_most_its_share_and_gets_it_back() {
        let sources = Arc::new(Sources::default());
        let a = IpAddr::from([127, 0, 0, 1]);
        let b = IpAddr::from([127, 0, 0, 2]);
        let held: Vec<_> = (0..3).map(|_| sources.take(a, 3).unwrap()).collect();
        assert!(sources.take(a, 3).is_none(), "a fourth from the same source");
        let other = sources.take(b, 3).expect("another source is not held back");
        drop(held);
        assert!(sources.take(a, 3).is_some(), "closed connections give their places back");
        drop(other);
        assert_eq!(sources.0.lock().unwrap().len(), 0, "no entry is left for a source with nothing open");
    }
}
