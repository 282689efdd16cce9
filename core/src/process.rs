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
