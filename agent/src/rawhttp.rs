//! A minimal GET over the engine's unix socket, for the libpod endpoints
//! bollard does not cover (pod membership, rootless mode).

use std::path::Path;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Responses larger than this are refused (the engine is trusted, but a
/// bound keeps a bug from eating memory).
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RawHttpError {
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        socket: String,
        source: std::io::Error,
    },
    #[error("GET {path}: {message}")]
    Request { path: String, message: String },
}

pub async fn get_json(socket: &Path, path: &str) -> Result<serde_json::Value, RawHttpError> {
    let fail = |message: String| RawHttpError::Request {
        path: path.to_string(),
        message,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| RawHttpError::Connect {
            socket: socket.display().to_string(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(path)
        .header("Host", "engine")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| fail(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    let limited = http_body_util::Limited::new(response.into_body(), MAX_BODY);
    let body = limited
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(fail(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    serde_json::from_slice(&body).map_err(|e| fail(format!("invalid JSON: {e}")))
}
