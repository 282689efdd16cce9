//! The agent's step outcomes (the JSON it journaled), read for what a run
//! records and says about a container: its downtime by both definitions,
//! and what the ownership walk left alone. Tolerant of fields added later.

use fleet_core::migration::{LeftAlone, Listed, OwnershipOutcomeView, downtime_text};
use serde::Deserialize;
use serde_json::Value;

use crate::run::model::ContainerRun;

#[derive(Debug, Default, Deserialize)]
struct VerifyOutcomeView {
    #[serde(default)]
    downtime_ms: Option<u64>,
    #[serde(default)]
    downtime_from_stop_ms: Option<u64>,
}

/// (old container exited → verified, stop requested → verified). An
/// outcome without them (an older agent's) has no downtime to report: the
/// documented meaning of the default, which decides nothing.
pub fn downtime(outcome: &Value) -> (Option<u64>, Option<u64>) {
    let view: VerifyOutcomeView = serde_json::from_value(outcome.clone()).unwrap_or_default();
    (view.downtime_ms, view.downtime_from_stop_ms)
}

/// What the ownership step left as it was; an outcome that does not say
/// (an older agent's) left nothing to report.
pub fn left_alone(outcome: &Value) -> LeftAlone {
    serde_json::from_value::<OwnershipOutcomeView>(outcome.clone())
        .map(LeftAlone::from)
        .unwrap_or_default()
}

/// An ownership undo's report per mount, as the agent journals it.
#[derive(Debug, Default, Deserialize)]
struct UndoReportView {
    /// What the reverse walk gave back: entries the workload made while
    /// migrated, owned by the target ids.
    #[serde(default)]
    reverse_mapped: u64,
    #[serde(default)]
    refused_hardlinks: Listed,
    #[serde(default)]
    devices_left: Listed,
    #[serde(default)]
    root: String,
    #[serde(default)]
    restored: u64,
    /// A count and the first names (a plain list in older journals).
    #[serde(default)]
    missing: Listed,
    #[serde(default)]
    impostors: Listed,
}

/// What an undo event says: for the ownership step, what was restored and
/// what the undo left as it found it.
pub fn undone_line(outcome: &Value) -> String {
    let Ok(reports) = serde_json::from_value::<Vec<UndoReportView>>(outcome.clone()) else {
        return "undone".into();
    };
    if reports.is_empty() {
        return "undone".into();
    }
    let restored: u64 = reports.iter().map(|r| r.restored).sum();
    let roots: Vec<&str> = reports.iter().map(|r| r.root.as_str()).collect();
    let mut line = format!(
        "undone: {restored} entries restored under {}",
        roots.join(", ")
    );
    let reverse: u64 = reports.iter().map(|r| r.reverse_mapped).sum();
    if reverse > 0 {
        line.push_str(&format!(
            "; {reverse} made while migrated given back to the pre-run ids"
        ));
    }
    let kept: u64 = reports
        .iter()
        .map(|r| r.refused_hardlinks.count + r.devices_left.count)
        .sum();
    if kept > 0 {
        line.push_str(&format!(
            "; {kept} target-owned hard link(s) or device(s) left as they are"
        ));
    }
    let missing: u64 = reports.iter().map(|r| r.missing.count).sum();
    let impostors: u64 = reports.iter().map(|r| r.impostors.count).sum();
    if missing > 0 {
        line.push_str(&format!("; {missing} recorded entries no longer there"));
    }
    if impostors > 0 {
        line.push_str(&format!(
            "; {impostors} recorded inode(s) now another file's, left as they are"
        ));
    }
    line
}

/// `web on h1`: how notes and messages name a container of the run.
pub fn named(c: &ContainerRun) -> String {
    format!("{} on {}", c.plan.name, c.host)
}

/// `left alone under its mounts: 1 hard link(s) ...`, or None.
pub fn left_alone_line(left: &LeftAlone) -> Option<String> {
    (!left.is_empty()).then(|| {
        format!(
            "left alone under its mounts (still owned as before): {}",
            left.summary()
        )
    })
}

/// What a migrated container's event and audit-log line say: who it runs
/// as, its downtime by both definitions, what was left alone.
pub fn migrated_line(c: &ContainerRun) -> String {
    let mut line = match c.target {
        Some(ids) => format!("runs as {ids}"),
        None => "migrated (its target ids were not recorded)".to_string(),
    };
    if let Some(downtime) = downtime_text(c.downtime_ms, c.downtime_from_stop_ms) {
        line.push_str(&format!(", downtime {downtime}"));
    }
    if let Some(left) = left_alone_line(&c.left_alone) {
        line.push_str(&format!("; {left}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcomes_are_read_with_fields_missing_or_added() {
        assert_eq!(
            downtime(&json!({"downtime_ms": 5300, "downtime_from_stop_ms": 14800, "probe": "x"})),
            (Some(5300), Some(14800))
        );
        assert_eq!(downtime(&json!({"downtime_ms": 900})), (Some(900), None));
        assert_eq!(downtime(&Value::Null), (None, None));
        // The ownership step's outcome: mounts as [OwnedMount, RemapReport].
        let outcome = json!({
            "mounts": [[
                {"root": "/srv/a", "destination": "/data", "manifest": "m", "identity": [1, 2]},
                {"root": "/srv/a", "entries": 10, "changed": 7, "refused_hardlinks": ["x (not all of its names are in the tree; the others could be host files)"],
                 "devices_left": ["dev/null"], "raced": [], "vanished": ["tmp.1"], "other_filesystems": [],
                 "reverse_walk": {"restored": 3}}
            ]],
            "refusals": ["/etc: a sensitive host path"]
        });
        let left = left_alone(&outcome);
        // Named as the container sees them, under their mount.
        assert_eq!(
            left.hard_links.paths,
            ["/data/x (not all of its names are in the tree; the others could be host files)"]
        );
        assert_eq!(left.devices.paths, ["/data/dev/null"]);
        assert_eq!(left.vanished.paths, ["/data/tmp.1"]);
        assert_eq!(left.refused_mounts.paths, ["/etc: a sensitive host path"]);
        assert_eq!((left.hard_links.count, left.raced.count), (1, 0));
        // As the agent reports them now: a count and at most 20 names.
        let capped = left_alone(&json!({
            "mounts": [[
                {"root": "/srv/a", "destination": "/data"},
                {"root": "/srv/a", "devices_left": {"count": 5000, "paths": ["d0", "d1"]},
                 "raced": {"count": 1, "paths": ["r"]}}
            ]]
        }));
        assert_eq!(capped.devices.count, 5000);
        assert_eq!(capped.devices.paths, ["/data/d0", "/data/d1"]);
        assert_eq!(
            capped.summary(),
            "5000 device node(s) (/data/d0, /data/d1, …), 1 entry(ies) that changed while the walk ran (/data/r)"
        );
        assert!(left_alone(&json!({"mounts": []})).is_empty());
        // An undo's reports, with a field added later.
        assert_eq!(
            undone_line(&json!([
                {"root": "/srv/a", "restored": 7, "missing": ["x"], "impostors": [], "millis": 3, "reverse_walk": 9}
            ])),
            "undone: 7 entries restored under /srv/a; 1 recorded entries no longer there"
        );
        assert_eq!(
            undone_line(&json!([
                {"root": "/srv/a", "restored": 7, "missing": [], "reverse_mapped": 12,
                 "refused_hardlinks": {"count": 1, "paths": ["x"]}, "devices_left": {"count": 0, "paths": []}}
            ])),
            "undone: 7 entries restored under /srv/a; 12 made while migrated given back to the pre-run ids; 1 target-owned hard link(s) or device(s) left as they are"
        );
        assert_eq!(
            undone_line(&json!([
                {"root": "/srv/a", "restored": 7, "missing": {"count": 300, "paths": ["x"]},
                 "impostors": {"count": 2, "paths": ["y", "z"]}}
            ])),
            "undone: 7 entries restored under /srv/a; 300 recorded entries no longer there; 2 recorded inode(s) now another file's, left as they are"
        );
        assert_eq!(undone_line(&json!({"stopped": true})), "undone");
    }
}
