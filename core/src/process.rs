//! What every binary's `main` does the same way: logging to stderr, the
//! crypto provider, a runtime, and cancellation on SIGTERM or Ctrl-C.

use crate::CancellationToken;

/// Logs to stderr; `FLEET_LOG` (an EnvFilter) overrides `default_level`.
pub fn init_tracing(default_level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    crate::tls::install_crypto_provider();
    raise_descriptor_limit();
}

/// Raises the soft limit of open descriptors to the hard limit: an
/// ownership walk holds a descriptor per pending change, and a fleet-wide
/// audit one per agent connection.
pub fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "cannot raise RLIMIT_NOFILE");
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT (graceful shutdown).
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
