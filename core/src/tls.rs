//! mTLS for every fleet connection. There is no plaintext mode.
//!
//! Servers require a client certificate signed by the fleet CA (chain and
//! expiry checked in the handshake); which role may call what is decided per
//! RPC by [`crate::auth`]. Clients check the server's chain, name, and that
//! its certificate carries the role they expect to talk to (a controller only
//! talks to agents, the CLI only to a controller).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::role::{Role, peer_identity};

/// How long a peer may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} holds no {what} in PEM form")]
    Empty { what: &'static str, path: PathBuf },
    #[error("{path}: not a valid PEM {what}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("certificate {path} {reason}")]
    OwnCertificate { path: PathBuf, reason: String },
    #[error("invalid address '{address}': {reason}")]
    Address { address: String, reason: String },
}

/// The certificate files one component uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The loaded trust anchor and own identity.
#[derive(Debug)]
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl TlsMaterial {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let ca = read_certs(&files.ca, "CA certificate")?;
        let chain = read_certs(&files.cert, "certificate")?;
        let key = read_key(&files.key)?;
        Self::from_parts(ca, chain, key, &files.ca)
    }

    /// From PEM text held in memory (tests, benchmarks).
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let mem = PathBuf::from("(memory)");
        let ca = parse_certs(ca_pem.as_bytes(), "CA certificate", &mem)?;
        let chain = parse_certs(cert_pem.as_bytes(), "certificate", &mem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "private key",
            path: mem.clone(),
            reason: e.to_string(),
        })?;
        Self::from_parts(ca, chain, key, &mem)
    }

    fn from_parts(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca_path: &Path,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| TlsError::Pem {
                what: "CA certificate",
                path: ca_path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        Ok(TlsMaterial {
            roots: Arc::new(roots),
            chain,
            key,
        })
    }

    /// Checks our own certificate the way a peer will: chains to the CA we
    /// were given, and is valid now. Catches the common mistakes (an expired
    /// certificate, a certificate from another CA) before a handshake turns
    /// them into an opaque refusal.
    pub fn check_own_certificate(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let Some((leaf, intermediates)) = self.chain.split_first() else {
            return Err(TlsError::Empty {
                what: "certificate",
                path: files.cert.clone(),
            });
        };
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), crypto_provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let now = UnixTime::now();
        match verifier.verify_client_cert(leaf, intermediates, now) {
            Ok(_) => Ok(()),
            Err(rustls::Error::InvalidCertificate(e)) => {
                let until = not_after(leaf).unwrap_or_default();
                let reason = match e {
                    rustls::CertificateError::Expired
                    | rustls::CertificateError::ExpiredContext { .. } => {
                        format!(
                            "has expired (valid until {until}); issue a new one with `fleetctl certs issue`"
                        )
                    }
                    rustls::CertificateError::NotValidYet
                    | rustls::CertificateError::NotValidYetContext { .. } => {
                        "is not valid yet (check the clock)".to_string()
                    }
                    rustls::CertificateError::UnknownIssuer => {
                        format!("is not signed by the fleet CA in {}", files.ca.display())
                    }
                    other => format!("is not acceptable: {other}"),
                };
                Err(TlsError::OwnCertificate {
                    path: files.cert.clone(),
                    reason,
                })
            }
            Err(other) => Err(TlsError::OwnCertificate {
                path: files.cert.clone(),
                reason: other.to_string(),
            }),
        }
    }

    /// The role and name in our own certificate.
    pub fn own_identity(&self) -> Option<crate::role::PeerIdentity> {
        self.chain.first().and_then(|c| peer_identity(c).ok())
    }

    /// A server configuration that requires a client certificate from the fleet CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = crypto_provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration that presents our certificate and only accepts
    /// a server whose certificate carries `server_role`.
    pub fn client_config(&self, server_role: Role) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = crypto_provider();
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let verifier = Arc::new(RoleCheckingVerifier {
            inner,
            expected: server_role,
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The one crypto provider of the project.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs [`crypto_provider`] as the process default (for libraries that ask
/// for it). Called once from each `main`; a second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn not_after(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.to_string())
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    parse_certs(&bytes, what, path)
}

fn parse_certs(
    bytes: &[u8],
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what: "private key",
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Verifies the server's chain and name like any TLS client, then insists
/// on the fleet role the caller expects on the other side.
#[derive(Debug)]
struct RoleCheckingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: Role,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RoleMismatch(String);

impl ServerCertVerifier for RoleCheckingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let mismatch = |msg: String| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(RoleMismatch(msg)),
            )))
        };
        match peer_identity(end_entity) {
            Ok(identity) if identity.role == self.expected => Ok(verified),
            Ok(identity) => Err(mismatch(format!(
                "server certificate '{}' has role {}, expected {}",
                identity.name, identity.role, self.expected
            ))),
            Err(e) => Err(mismatch(e.to_string())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow
/// or hostile peer cannot hold up others), yielding only verified streams.
/// Refused handshakes are logged with the peer's address and the reason.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = acceptor.accept(tcp).into_fallible();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err((e, tcp))) => {
                        tracing::warn!(%peer, error = %e, "refused TLS connection");
                        linger(tcp).await;
                    }
                    Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Closes a refused connection so the peer can read why. rustls has
/// written its alert; dropping the socket now, with the client's first
/// request still unread, would send a reset that destroys the alert before
/// the client reads it. Half-close and drain briefly instead.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Splits `host:port` (or `[v6]:port`) into its parts.
pub fn split_address(address: &str) -> Result<(String, u16), TlsError> {
    let bad = |reason: &str| TlsError::Address {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    Ok((host.to_string(), port))
}

/// A lazily connecting gRPC channel to `address` over mTLS. The TLS server
/// name is the address's host.
pub fn channel(
    address: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    let (host, port) = split_address(address)?;
    let server_name = ServerName::try_from(host.clone()).map_err(|e| TlsError::Address {
        address: address.to_string(),
        reason: e.to_string(),
    })?;
    let uri_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let endpoint = Endpoint::from_shared(format!("http://{uri_host}:{port}"))
        .map_err(|e| TlsError::Address {
            address: address.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    let connector = TlsConnector::from(config);
    let target = (host, port);
    let connect = tower::service_fn(move |_uri: http::Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = TcpStream::connect((target.0.as_str(), target.1)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            let primed = await_acceptance(tls).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(primed))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// In TLS 1.3 the client's handshake is over before the server has judged
/// the client's certificate; a refusal then arrives as an alert that the
/// HTTP/2 machinery would swallow ("connection closed"). So wait for the
/// server's first bytes (its HTTP/2 SETTINGS, sent unprompted): an alert
/// here becomes the connect error, with its reason. The bytes read are
/// replayed to HTTP/2.
async fn await_acceptance(
    mut tls: tokio_rustls::client::TlsStream<TcpStream>,
) -> io::Result<Primed<tokio_rustls::client::TlsStream<TcpStream>>> {
    use tokio::io::AsyncReadExt;
    let mut first = vec![0u8; 1024];
    let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.read(&mut first))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the server said nothing after the TLS handshake",
            )
        })??;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the server closed the connection right after the TLS handshake (it refused our certificate; its log says why)",
        ));
    }
    first.truncate(n);
    Ok(Primed {
        prefix: first,
        read: 0,
        io: tls,
    })
}

/// A stream that first yields bytes already read from it.
struct Primed<IO> {
    prefix: Vec<u8>,
    read: usize,
    io: IO,
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Primed<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.read < self.prefix.len() {
            let rest = &self.prefix[self.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.read += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Primed<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Why a connection failed, as far as its error chain tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Expired,
    /// The server refused our certificate: not from its CA.
    UnknownCa,
    /// We refused the server's certificate: not signed by our CA (another
    /// CA of another name, or of the same name, as a second `certs init`
    /// makes, whose signature does not verify).
    PeerNotFromOurCa,
    NoClientCertificate,
    WrongRole,
    CertificateRefused,
    WrongName,
    /// Reset during the handshake: most likely a refusal by a server that
    /// sends no alert, but a server going away looks the same.
    ClosedInHandshake,
    /// Closed right after the handshake without a word: the server read
    /// our certificate and hung up.
    RefusedAfterHandshake,
    NothingListening,
    TimedOut,
    Other,
}

impl ConnectFailure {
    /// Reads an error chain (see `error_chain`); TLS refusals are recognised
    /// by their alerts.
    pub fn of(chain: &str) -> Self {
        let has = |needle: &str| chain.contains(needle);
        let peer_refused = has("invalid peer certificate");
        if has("CertificateExpired") || has("certificate expired") || has("Expired") {
            ConnectFailure::Expired
        } else if peer_refused && (has("UnknownIssuer") || has("BadSignature")) {
            ConnectFailure::PeerNotFromOurCa
        } else if has("UnknownCA") || has("UnknownIssuer") {
            ConnectFailure::UnknownCa
        } else if has("CertificateRequired") {
            ConnectFailure::NoClientCertificate
        } else if has("has role") {
            ConnectFailure::WrongRole
        } else if has("BadCertificate") || has("invalid peer certificate") {
            ConnectFailure::CertificateRefused
        } else if has("NotValidForName") || has("CertNotValidForName") {
            ConnectFailure::WrongName
        } else if has("refused our certificate") {
            ConnectFailure::RefusedAfterHandshake
        } else if has("broken pipe") || has("Connection reset") || has("connection reset") {
            ConnectFailure::ClosedInHandshake
        } else if has("Connection refused") || has("ConnectionRefused") {
            ConnectFailure::NothingListening
        } else if has("timed out") || has("deadline has elapsed") {
            ConnectFailure::TimedOut
        } else {
            ConnectFailure::Other
        }
    }

    /// A certificate (ours or the server's) was certainly refused: asking
    /// again cannot help, unlike a server that is down or restarting.
    pub fn is_refusal(self) -> bool {
        !matches!(
            self,
            ConnectFailure::ClosedInHandshake
                | ConnectFailure::NothingListening
                | ConnectFailure::TimedOut
                | ConnectFailure::Other
        )
    }
}

/// Turns a failed call's error chain into one sentence an operator can act
/// on, naming the peer.
pub fn explain_connect_error(peer: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let chain = error_chain(error);
    match ConnectFailure::of(&chain) {
        ConnectFailure::Expired => format!(
            "{peer} refused the TLS handshake: a certificate has expired (ours, or the server's); issue a new one with `fleetctl certs issue` ({chain})"
        ),
        ConnectFailure::UnknownCa => format!(
            "{peer} refused the TLS handshake: the certificates are not signed by the same fleet CA; check --ca and --cert ({chain})"
        ),
        ConnectFailure::PeerNotFromOurCa => format!(
            // The sentence says it all; rustls's `BadSignature` says less.
            "{peer} presented a certificate not signed by the fleet CA given with --ca: it belongs to another fleet (or the CA was made again); point --ca at the CA that issued its certificate, or issue it a new one from this CA"
        ),
        ConnectFailure::NoClientCertificate => {
            format!("{peer} requires a client certificate and none was presented ({chain})")
        }
        ConnectFailure::WrongRole => format!("{peer} is not the kind of server expected: {chain}"),
        ConnectFailure::CertificateRefused => {
            format!("{peer} refused the TLS handshake: certificate not accepted ({chain})")
        }
        ConnectFailure::WrongName => format!(
            "{peer} presented a certificate that does not name this address; issue it with --san for the address used ({chain})"
        ),
        ConnectFailure::ClosedInHandshake => format!(
            "{peer} closed the connection during the TLS handshake: it most likely refused our certificate (expired, or not from its CA); its log says why ({chain})"
        ),
        ConnectFailure::NothingListening => {
            format!("nothing is listening at {peer} (connection refused)")
        }
        ConnectFailure::TimedOut => format!("{peer} did not answer in time ({chain})"),
        ConnectFailure::RefusedAfterHandshake | ConnectFailure::Other => {
            format!("{peer}: {chain}")
        }
    }
}

/// Every message of an error chain, including errors hidden inside
/// `io::Error` (whose `source()` skips its own inner error).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
        {
            let text = format!("{inner:?}");
            if !parts.iter().any(|p| p.contains(&text)) {
                parts.push(text);
            }
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_refused_whom_is_told_apart() {
        let theirs = "transport error: invalid peer certificate: BadSignature";
        assert_eq!(ConnectFailure::of(theirs), ConnectFailure::PeerNotFromOurCa);
        assert_eq!(
            ConnectFailure::of("invalid peer certificate: UnknownIssuer"),
            ConnectFailure::PeerNotFromOurCa
        );
        assert_eq!(
            ConnectFailure::of("received fatal alert: UnknownCA"),
            ConnectFailure::UnknownCa
        );
        assert!(ConnectFailure::PeerNotFromOurCa.is_refusal());
    }

    #[test]
    fn splits_addresses() {
        assert_eq!(
            split_address("127.0.0.1:7001").unwrap(),
            ("127.0.0.1".into(), 7001)
        );
        assert_eq!(split_address("[::1]:80").unwrap(), ("::1".into(), 80));
        assert!(split_address("db1").is_err());
        assert!(split_address("db1:x").is_err());
        assert!(split_address(":80").is_err());
    }
}
