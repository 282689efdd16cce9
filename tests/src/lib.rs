//! Shared support for the integration tests and the benchmark: a fleet CA
//! with every kind of certificate, locally built images, containers that
//! clean up after themselves, and real servers on 127.0.0.1:0.

pub mod agent_client;
pub mod bench;
pub mod cli;
pub mod engine;
pub mod fleet;
pub mod host;
pub mod pki;
pub mod podman;
pub mod process;
pub mod servers;
pub mod tree;

/// The label every container, image, volume and network the tests create
/// carries, so `scripts/test.sh` can remove leftovers even after a crash.
pub const TEST_LABEL: &str = "fleet-test";

/// A short random suffix for names that must not collide between tests
/// running at once.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos & 0xffff)
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with
/// `what` — tests wait on conditions, never on bare sleeps.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
