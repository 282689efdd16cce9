//! Work on several hosts at once, at most `max_parallel` at a time.

use futures::StreamExt;

use crate::error::ControllerError;

/// Runs `tasks` at most `parallel` at a time; the first store error wins.
pub(super) async fn all_bounded<F>(tasks: Vec<F>, parallel: usize) -> Result<(), ControllerError>
where
    F: std::future::Future<Output = Result<(), ControllerError>>,
{
    let results: Vec<Result<(), ControllerError>> = futures::stream::iter(tasks)
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}
