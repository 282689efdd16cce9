//! Per-RPC authorization from the role in the caller's certificate.
//!
//! One tower layer in front of every gRPC service: it reads the verified
//! peer certificate from the connection, asks the service's policy whether
//! that role may call that method, and fails closed (an RPC the policy does
//! not name is refused). The caller's identity is handed to the handler for
//! the audit log.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::role::{PeerIdentity, Role, peer_identity};

/// The authenticated caller of an RPC, available in the request extensions.
pub type Caller = PeerIdentity;

/// Decides whether `role` may call `method` (the bare method name, e.g.
/// "AddHost"). `Err` carries the reason given to the caller.
pub type Decide = fn(method: &str, role: Role) -> Result<(), String>;

#[derive(Clone, Copy)]
pub struct AuthLayer {
    service: &'static str,
    decide: Decide,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("service", &self.service)
            .finish()
    }
}

impl AuthLayer {
    pub fn new(service: &'static str, decide: Decide) -> Self {
        AuthLayer { service, decide }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            layer: *self,
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S> std::fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.layer.fmt(f)
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match authorize(&self.layer, &request) {
            Ok(caller) => {
                tracing::debug!(caller = %caller.name, role = %caller.role, path = %request.uri().path(), "authorized");
                request.extensions_mut().insert(caller);
                // Take the service that was driven to readiness, leave a clone.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(status) => {
                tracing::warn!(path = %request.uri().path(), reason = %status.message(), "refused RPC");
                let response = status.into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

fn authorize<B>(layer: &AuthLayer, request: &http::Request<B>) -> Result<Caller, tonic::Status> {
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .ok_or_else(|| {
            tonic::Status::unauthenticated(
                "no verified client certificate on this connection; fleet accepts only mTLS",
            )
        })?;
    let leaf = certs.first().ok_or_else(|| {
        tonic::Status::unauthenticated("the client presented an empty certificate chain")
    })?;
    let caller = peer_identity(leaf).map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
    let path = request.uri().path();
    let method = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(layer.service))
        .and_then(|p| p.strip_prefix('/'))
        .ok_or_else(|| {
            tonic::Status::permission_denied(format!(
                "{path} is not an RPC of {} and is refused",
                layer.service
            ))
        })?;
    (layer.decide)(method, caller.role).map_err(|reason| {
        tonic::Status::permission_denied(format!(
            "certificate '{}' (role {}) may not call {method}: {reason}",
            caller.name, caller.role
        ))
    })?;
    Ok(caller)
}

/// The caller of a request that went through [`AuthLayer`].
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| tonic::Status::internal("request reached a handler without authorization"))
}
