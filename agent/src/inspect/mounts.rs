//! What a container mounts, and who owns what is in it: the bounded
//! ownership summary, walked once per source and cached.

use std::path::PathBuf;

use bollard::models::MountPoint;
use fleet_core::audit::{MountReport, OwnershipSummary};

use crate::cache::Cache;
use crate::ownership::{WalkBounds, summarize};

/// One mount's report; only bind mounts and volumes are walked.
pub(super) async fn mount_report(
    cache: &Cache,
    bounds: WalkBounds,
    mount: &MountPoint,
    skip_ownership: bool,
) -> MountReport {
    let kind = mount.typ.clone().unwrap_or_else(|| "unknown".into());
    let source = mount.source.clone().unwrap_or_default();
    let walkable = matches!(kind.as_str(), "bind" | "volume") && !source.is_empty();
    let ownership = if skip_ownership || !walkable {
        OwnershipSummary {
            skipped: true,
            ..Default::default()
        }
    } else {
        let path = PathBuf::from(&source);
        match cache.summary(&path) {
            Some(summary) => summary,
            None => {
                let walk_path = path.clone();
                let summary = tokio::task::spawn_blocking(move || summarize(&walk_path, bounds))
                    .await
                    .unwrap_or_else(|e| OwnershipSummary {
                        error: Some(format!("ownership walk failed: {e}")),
                        ..Default::default()
                    });
                cache.put_summary(path, summary.clone());
                summary
            }
        }
    };
    MountReport {
        kind,
        source,
        destination: mount.destination.clone().unwrap_or_default(),
        read_only: mount.rw == Some(false),
        volume_name: mount.name.clone().filter(|n| !n.is_empty()),
        ownership,
    }
}
