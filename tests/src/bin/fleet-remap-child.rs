//! fleet-remap-child: runs one remap or undo with a fault point armed
//! (`FLEET_FAULT`), for the crash tests of agent/tests/remap_undo.rs. It
//! aborts at the fault point, with no destructor and no flush, as under
//! `kill -9`; reaching the end means the fault point was never reached.
//! A separate program, so the crash tests need no switched-off test.

use std::path::PathBuf;

use anyhow::{Context, bail};
use fleet_agent::remap::{IdMapping, RemapOptions, UndoOptions, remap, undo_with};

fn var(key: &str) -> anyhow::Result<String> {
    std::env::var(key).with_context(|| format!("{key} is not set"))
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(var("REMAP_ROOT")?);
    let manifest = PathBuf::from(var("REMAP_MANIFEST")?);
    let mapping: IdMapping = serde_json::from_str(&var("REMAP_MAPPING")?)?;
    // Small batches, so a kill lands between commits of a small tree.
    match var("REMAP_CHILD")?.as_str() {
        "remap" => {
            let options = RemapOptions {
                mapping,
                allow_protected_hardlinks: false,
                skip_if_root_owned_by: None,
                batch: 100,
                threads: 0,
                expect_root: None,
            };
            remap(&root, &manifest, &options, &|_| {})?;
        }
        "undo" => {
            undo_with(
                &root,
                &manifest,
                &UndoOptions {
                    batch: 100,
                    threads: 0,
                },
            )?;
        }
        other => bail!("REMAP_CHILD is {other:?}: use remap or undo"),
    }
    bail!("the armed fault point was never reached")
}
