//! Our own accept loop (tokio + optional rustls + hyper-util), so each request carries
//! the connection's facts (`PeerInfo`: address and client certificate chain), slow clients are
//! cut off, and one shutdown future drains every connection.

use super::PeerInfo;
use crate::service::PeerCertificates;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::server::ResolvesServerCert;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// Connection and request limits of one listener (docs/operations.md "Limits").
/// `Default` holds the production values; tests lower them to observe each limit.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// A client must finish its TLS handshake within this time.
    pub tls_handshake_timeout: Duration,
    /// HTTP/1 request headers must arrive completely within this time, counted from the
    /// start of the connection and again for each keep-alive request.
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers): HTTP/1 answers 431 and closes;
    /// HTTP/2 (`max_header_list_size`, RFC 9113 §6.5.2) refuses the stream. At least 8 KiB.
    pub max_header_bytes: usize,
    /// Open connections beyond this are closed on accept, before the TLS handshake.
    pub max_connections: usize,
    /// A request (body read included) not answered within this time gets 503
    /// `temporarily_unavailable`.
    pub request_timeout: Duration,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub drain_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(15),
            max_concurrent_streams: 256,
        }
    }
}

/// hyper refuses (panics on) an HTTP/1 read buffer below 8 KiB.
const MIN_H1_BUFFER: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert {path}: {cause}")]
    Cert { path: String, cause: String },
    #[error("server.tls_key {path}: {cause}")]
    Key { path: String, cause: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// rustls with the ring provider, TLS 1.3 and 1.2, HTTP/2 and HTTP/1.1 via ALPN. With a
/// `client_verifier`, client certificates are requested (not required).
pub fn tls_config(
    cert: &Path,
    key: &Path,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            cause: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            cause: "no CERTIFICATE block found".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        cause: e.to_string(),
    })?;
    let mut cfg = builder(client_verifier)?
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// As `tls_config`, but the server certificate comes from `resolver` per handshake (the
/// Workload API SVID, swapped on rotation: new connections get the new certificate,
/// open ones keep theirs).
pub fn tls_config_with_resolver(
    resolver: Arc<dyn ResolvesServerCert>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = builder(client_verifier)?.with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn builder(
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    })
}

fn connection_builder(limits: &ServerLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_H1_BUFFER))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams);
    builder
}

/// Serves `router` on `listener` with the default limits until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) {
    serve_with_limits(listener, tls, router, shutdown, ServerLimits::default()).await;
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub async fn serve_with_limits(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
    limits: ServerLimits,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Over TLS the protocol is fixed by ALPN, so the HTTP/1 header-read timer runs from
    // the end of the handshake; the auto builder's version sniffing would wait without a
    // deadline for a client that completes the handshake and then sends nothing.
    let auto = connection_builder(&limits);
    let h1_only = Arc::new(connection_builder(&limits).http1_only());
    let h2_only = Arc::new(connection_builder(&limits).http2_only());
    let builder = Arc::new(auto);
    let handshake_timeout = limits.tls_handshake_timeout;
    tokio::pin!(shutdown);
    loop {
        let (stream, remote_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::warn!(%remote_addr, limit = limits.max_connections, "connection limit reached; closing new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let (h1_only, h2_only) = (h1_only.clone(), h2_only.clone());
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Each request carries the connection's facts, read once per connection.
            let with_peer = |certificates: Option<Arc<PeerCertificates>>| {
                let info = PeerInfo {
                    remote_addr,
                    certificates,
                };
                TowerToHyperService::new(router.map_request(
                    move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(info.clone());
                        req
                    },
                ))
            };
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote_addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote_addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let certificates = tls.get_ref().1.peer_certificates().map(|chain| {
                        Arc::new(PeerCertificates::new(
                            chain.iter().map(|c| c.clone().into_owned()).collect(),
                        ))
                    });
                    let builder = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        h2_only
                    } else {
                        h1_only
                    };
                    // `serve_connection` honours the fixed version (no upgrades are served).
                    let conn = builder.serve_connection(TokioIo::new(tls), with_peer(certificates));
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%remote_addr, error = %e, "connection closed with an error");
                    }
                }
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), with_peer(None));
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown drain timed out; closing remaining connections");
    }
}
