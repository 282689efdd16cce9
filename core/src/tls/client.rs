//! The client side: the configuration that presents our certificate and
//! insists on the server's role, and the connector that makes a TLS 1.3
//! refusal surface as the connect error.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::material::{TlsError, TlsMaterial, crypto_provider};
use super::server::HANDSHAKE_TIMEOUT;
use crate::role::{Role, peer_identity};

impl TlsMaterial {
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

#[cfg(test)]
mod tests {
    use super::*;

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
