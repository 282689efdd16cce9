//! Ownership remap (issue 3) and its undo with the reverse walk (issue 8):
//! a generated tree of N entries, remapped by fleet (manifest included)
//! against GNU `chown -R` on an identical tree; then, as a migrated
//! workload would, new entries owned by the target id are added to both
//! trees (a share of them replacing files by rename), and fleet's undo
//! (restore + reverse walk, one pass) runs against `chown -R` back.
//! Several runs on the same trees; the order of the two tools alternates.

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
    /// Entries the workload writes while migrated, per thousand of the
    /// tree (new files in new directories, plus 1 in 10 of them replacing
    /// an existing file by rename).
    #[arg(long, default_value_t = 50)]
    new_per_mille: usize,
    /// Runs (remap, workload, undo) on the same trees.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the trees are made (same filesystem for both).
    #[arg(long, default_value = "/var/tmp")]
    dir: std::path::PathBuf,
}

const TARGET: u32 = 61_234;

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

/// What a migrated service writes: `new` entries owned by the target id,
/// in new directories of `per_dir`, and every tenth one a new file put in
/// place of an existing one by rename (a dump rewritten, a log rotated).
/// Returns the entries made, and how many of them replaced a file.
fn workload(root: &Path, run: usize, new: usize, per_dir: usize) -> anyhow::Result<(u64, u64)> {
    let own = |p: &Path| std::os::unix::fs::lchown(p, Some(TARGET), Some(TARGET));
    let mut made = 0u64;
    let to_replace = new / 10;
    for i in 0..to_replace {
        let victim = root.join(format!("d{:05}/f{:04}", i % 1000, i / 1000));
        if !victim.exists() {
            continue;
        }
        let tmp = root.join(format!("d{:05}/.tmp-{run}", i % 1000));
        std::fs::write(&tmp, b"rewritten")?;
        own(&tmp)?;
        std::fs::rename(&tmp, &victim)?;
        made += 1;
    }
    let replaced = made;
    let mut left = new - to_replace;
    let mut d = 0;
    while left > 0 {
        let dir = root.join(format!("w{run}-{d:04}"));
        std::fs::create_dir(&dir)?;
        own(&dir)?;
        made += 1;
        left -= 1;
        for f in 0..per_dir.min(left) {
            let file = dir.join(format!("n{f:04}"));
            std::fs::File::create(&file)?;
            own(&file)?;
            made += 1;
            left -= 1;
        }
        d += 1;
    }
    Ok((made, replaced))
}

fn remove_workload_dirs(root: &Path, run: usize) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("w{run}-"))
        {
            std::fs::remove_dir_all(entry.path())?;
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

fn sync() -> anyhow::Result<()> {
    Command::new("sync").status().context("sync")?;
    Ok(())
}

fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let started = Instant::now();
    f().map(|v| (v, started.elapsed()))
}

/// Times `a` and `b`, `b` first when `swap`.
fn pair<A, B>(
    swap: bool,
    a: impl FnOnce() -> anyhow::Result<A>,
    b: impl FnOnce() -> anyhow::Result<B>,
) -> anyhow::Result<((A, Duration), (B, Duration))> {
    if swap {
        let b = timed(b)?;
        Ok((timed(a)?, b))
    } else {
        let a = timed(a)?;
        Ok((a, timed(b)?))
    }
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
    sync()?;
    let options = RemapOptions {
        mapping: IdMapping {
            uids: [(0, TARGET)].into(),
            gids: [(0, TARGET)].into(),
            everything: None,
        },
        allow_protected_hardlinks: false,
        skip_if_root_owned_by: None,
        batch: 8192,
        threads: 0,
        expect_root: None,
    };
    let new = args.entries * args.new_per_mille / 1000;
    println!(
        "## ownership remap, {} entries; the workload then writes {} entries ({} per mille, 1 in 10 replacing a file by rename)",
        args.entries, new, args.new_per_mille
    );
    let (mut remaps, mut undos) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let manifest = base.path().join(format!("manifest-{run}.jsonl"));
        let swap = run % 2 == 1;
        let ((report, fleet), (_, chown)) = pair(
            swap,
            || Ok(remap::remap(&ours, &manifest, &options, &|_| {})?),
            || chown_r(&format!("{TARGET}:{TARGET}"), &theirs),
        )?;
        // The trees' roots count too.
        if report.changed != report.entries || report.entries as usize != args.entries + 1 {
            bail!(
                "fleet saw {} and changed {} of {} entries",
                report.entries,
                report.changed,
                args.entries + 1
            );
        }
        let (made, replaced) = workload(&ours, run, new, args.per_dir)?;
        workload(&theirs, run, new, args.per_dir)?;
        sync()?;
        let ((undone, fleet_undo), (_, chown_back)) = pair(
            swap,
            || Ok(remap::undo(&ours, &manifest)?),
            || chown_r("0:0", &theirs),
        )?;
        if undone.reverse_mapped != made || undone.restored + replaced != report.changed {
            bail!(
                "fleet restored {} of {} and reverse-mapped {} of {} entries: {undone:?}",
                undone.restored,
                report.changed,
                undone.reverse_mapped,
                made
            );
        }
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "- run {}{}: remap fleet {:.2} s / chown -R {:.2} s = **{:.2}**; undo (restore {} + reverse {}) fleet {:.2} s / chown -R {:.2} s = **{:.2}**",
            run + 1,
            if swap { " (fleet first)" } else { "" },
            fleet.as_secs_f64(),
            chown.as_secs_f64(),
            ratio(fleet, chown),
            undone.restored,
            undone.reverse_mapped,
            fleet_undo.as_secs_f64(),
            chown_back.as_secs_f64(),
            ratio(fleet_undo, chown_back),
        );
        remaps.push(ratio(fleet, chown));
        undos.push(ratio(fleet_undo, chown_back));
        remove_workload_dirs(&ours, run)?;
        remove_workload_dirs(&theirs, run)?;
        std::fs::remove_file(&manifest).ok();
        std::fs::remove_file(remap::manifest::reverse_path(&manifest)).ok();
        sync()?;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "- median of {} runs: remap **{:.2}** × chown -R, undo with the reverse walk **{:.2}** × chown -R (manifests synced before each batch, 2 shared cores: noisy)",
        args.runs,
        median(&mut remaps),
        median(&mut undos)
    );
    Ok(())
}
