//! Ownership remap (issue 3): a generated tree of N entries, remapped by
//! fleet (manifest included) against GNU `chown -R` on an identical tree,
//! and fleet's undo against `chown -R` back.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_agent::remap::{self, IdMapping, RemapOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Entries in each tree.
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Files per directory.
    #[arg(long, default_value_t = 1000)]
    per_dir: usize,
    /// Where the trees are made (same filesystem for both).
    #[arg(long, default_value = "/var/tmp")]
    dir: std::path::PathBuf,
}

fn make_tree(root: &Path, entries: usize, per_dir: usize) -> anyhow::Result<()> {
    let dirs = entries.div_ceil(per_dir + 1);
    let mut made = 0;
    for d in 0..dirs {
        let dir = root.join(format!("d{d:05}"));
        std::fs::create_dir_all(&dir)?;
        made += 1;
        for f in 0..per_dir {
            if made >= entries {
                return Ok(());
            }
            std::fs::File::create(dir.join(format!("f{f:04}")))?;
            made += 1;
        }
    }
    Ok(())
}

fn chown_r(owner: &str, root: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new("chown")
        .args(["-R", owner])
        .arg(root)
        .status()?;
    if !status.success() {
        bail!("chown -R failed");
    }
    Ok(started.elapsed())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let base = tempfile::Builder::new()
        .prefix("fleet-bench-remap")
        .tempdir_in(&args.dir)?;
    let (theirs, ours) = (base.path().join("chown"), base.path().join("fleet"));
    eprintln!(
        "making two trees of {} entries under {}...",
        args.entries,
        base.path().display()
    );
    make_tree(&theirs, args.entries, args.per_dir)?;
    make_tree(&ours, args.entries, args.per_dir)?;
    Command::new("sync").status().context("sync")?;
    let manifest = base.path().join("manifest.jsonl");
    let options = RemapOptions {
        mapping: IdMapping {
            uids: [(0, 61_234)].into(),
            gids: [(0, 61_234)].into(),
            everything: None,
        },
        allow_protected_hardlinks: false,
        skip_if_root_owned_by: None,
        batch: 8192,
        threads: 0,
        expect_root: None,
    };
    let chown = chown_r("61234:61234", &theirs)?;
    let started = Instant::now();
    let report = remap::remap(&ours, &manifest, &options, &|_| {})?;
    let fleet = started.elapsed();
    let chown_back = chown_r("0:0", &theirs)?;
    let started = Instant::now();
    let undone = remap::undo(&ours, &manifest)?;
    let undo = started.elapsed();
    // The trees' roots count too.
    if report.changed != report.entries
        || undone.restored != report.changed
        || report.entries as usize != args.entries + 1
    {
        bail!(
            "fleet saw {}, changed {} and restored {} of {} entries",
            report.entries,
            report.changed,
            undone.restored,
            args.entries + 1
        );
    }
    println!("## ownership remap, {} entries", args.entries);
    println!(
        "- remap (manifest synced before each batch): fleet {:.2} s / chown -R {:.2} s = **{:.2}**",
        fleet.as_secs_f64(),
        chown.as_secs_f64(),
        fleet.as_secs_f64() / chown.as_secs_f64()
    );
    println!(
        "- undo: fleet {:.2} s / chown -R {:.2} s = **{:.2}** (against the second chown -R, back to root on a warmer cache, {:.2} s: {:.2})",
        undo.as_secs_f64(),
        chown.as_secs_f64(),
        undo.as_secs_f64() / chown.as_secs_f64(),
        chown_back.as_secs_f64(),
        undo.as_secs_f64() / chown_back.as_secs_f64()
    );
    Ok(())
}
