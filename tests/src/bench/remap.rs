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
    /// Walk threads for fleet (0: one per core, at most four).
    #[arg(long, default_value_t = 0)]
    threads: usize,
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

fn chown_r(owner: &str, root: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .args(["-R", owner])
        .arg(root)
        .status()?;
    if !status.success() {
        bail!("chown -R failed");
    }
    Ok(())
}

fn sync() -> anyhow::Result<()> {
    Command::new("sync").status().context("sync")?;
    Ok(())
}

/// CPU seconds (user + system) used so far by this process (all its
/// threads) and by its waited-for children, from /proc/self/stat (in
/// USER_HZ, 100 on Linux).
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<f64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0.0) / 100.0;
    (field(11) + field(12), field(13) + field(14))
}

/// Wall time, and CPU time (this process's for fleet, the child's for
/// chown): on 2 cores shared with other work the wall ratio swings with
/// the load, the CPU ratio much less.
#[derive(Debug, Clone, Copy)]
struct Took {
    wall: Duration,
    cpu: f64,
}

fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Took)> {
    let (own, children) = cpu_seconds();
    let started = Instant::now();
    let value = f()?;
    let wall = started.elapsed();
    let (own_after, children_after) = cpu_seconds();
    let cpu = (own_after - own) + (children_after - children);
    Ok((value, Took { wall, cpu }))
}

/// Times `a` and `b`, `b` first when `swap`.
fn pair<A, B>(
    swap: bool,
    a: impl FnOnce() -> anyhow::Result<A>,
    b: impl FnOnce() -> anyhow::Result<B>,
) -> anyhow::Result<((A, Took), (B, Took))> {
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
        threads: args.threads,
        expect_root: None,
    };
    let undo_options = remap::UndoOptions {
        threads: args.threads,
        ..Default::default()
    };
    let new = args.entries * args.new_per_mille / 1000;
    println!(
        "## ownership remap, {} entries; the workload then writes {} entries ({} per mille, 1 in 10 replacing a file by rename)",
        args.entries, new, args.new_per_mille
    );
    let (mut remaps, mut undos) = (Vec::new(), Vec::new());
    let (mut remap_cpu, mut undo_cpu) = (Vec::new(), Vec::new());
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
            || Ok(remap::undo_with(&ours, &manifest, &undo_options)?),
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
        let wall = |a: Took, b: Took| a.wall.as_secs_f64() / b.wall.as_secs_f64();
        let cpu = |a: Took, b: Took| a.cpu / b.cpu.max(0.01);
        println!(
            "- run {}{}: remap fleet {:.2} s / chown -R {:.2} s = **{:.2}** (CPU {:.1} s / {:.1} s = {:.2}); undo (restore {} + reverse {}) fleet {:.2} s / chown -R {:.2} s = **{:.2}** (CPU {:.1} s / {:.1} s = {:.2})",
            run + 1,
            if swap { " (fleet first)" } else { "" },
            fleet.wall.as_secs_f64(),
            chown.wall.as_secs_f64(),
            wall(fleet, chown),
            fleet.cpu,
            chown.cpu,
            cpu(fleet, chown),
            undone.restored,
            undone.reverse_mapped,
            fleet_undo.wall.as_secs_f64(),
            chown_back.wall.as_secs_f64(),
            wall(fleet_undo, chown_back),
            fleet_undo.cpu,
            chown_back.cpu,
            cpu(fleet_undo, chown_back),
        );
        remaps.push(wall(fleet, chown));
        undos.push(wall(fleet_undo, chown_back));
        remap_cpu.push(cpu(fleet, chown));
        undo_cpu.push(cpu(fleet_undo, chown_back));
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
        "- median of {} runs: remap **{:.2}** × chown -R (CPU {:.2}), undo with the reverse walk **{:.2}** × chown -R (CPU {:.2}); manifests synced before each batch; fleet walks with one thread per core, chown -R with one",
        args.runs,
        median(&mut remaps),
        median(&mut remap_cpu),
        median(&mut undos),
        median(&mut undo_cpu)
    );
    Ok(())
}
