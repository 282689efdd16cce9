//! HTTP/1.1 over the engine's unix socket, with a bounded body: the
//! transport of every container call `container.rs` makes on raw documents
//! (create, stop, rename, update, network connect, exec, ...) and of the
//! libpod endpoints bollard does not cover (pod membership, rootless mode).

use std::path::Path;

use http_body_util::{BodyExt, Full};
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
    let (status, body) = request(socket, http::Method::GET, path, None).await?;
    if !(200..300).contains(&status) {
        return Err(RawHttpError::Request {
            path: path.to_string(),
            message: format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()),
        });
    }
    serde_json::from_slice(&body).map_err(|e| RawHttpError::Request {
        path: path.to_string(),
        message: format!("invalid JSON: {e}"),
    })
}

/// One request with an optional JSON body; the status and raw body back.
/// Used where the engine's documents must pass through untouched (a
/// faithful recreate must not lose fields a typed model does not know).
pub async fn request(
    socket: &Path,
    method: http::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, bytes::Bytes), RawHttpError> {
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
    let payload = match body {
        Some(value) => {
            bytes::Bytes::from(serde_json::to_vec(value).map_err(|e| fail(e.to_string()))?)
        }
        None => bytes::Bytes::new(),
    };
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Host", "engine")
        .header("Content-Type", "application/json")
        .body(Full::new(payload))
        .map_err(|e| fail(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status().as_u16();
    let limited = http_body_util::Limited::new(response.into_body(), MAX_BODY);
    let body = limited
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}
