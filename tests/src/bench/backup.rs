//! Checkpoint backup (issue 3): N files of mixed content, archived by
//! fleet (tar + zstd + manifest with a sha256 per file) against
//! `tar -cf - DIR | zstd -1 -T0 > file`; throughput ratio.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Total bytes.
    #[arg(long, default_value_t = 2_000_000_000)]
    bytes: u64,
    /// Number of files.
    #[arg(long, default_value_t = 100_000)]
    files: u64,
    #[arg(long, default_value = "/var/tmp")]
    dir: std::path::PathBuf,
    /// Archive this existing tree instead of making one (to profile one
    /// side alone: `--data D --only fleet` under `perf record`).
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Run one side only.
    #[arg(long, value_parser = ["fleet", "reference"])]
    only: Option<String>,
}

/// Files that compress about 3:1, like logs and databases do.
fn make_files(root: &Path, files: u64, bytes: u64) -> anyhow::Result<()> {
    let size = (bytes / files) as usize;
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut buf = vec![0u8; size];
    for i in 0..files {
        let dir = root.join(format!("d{:04}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        for (n, chunk) in buf.chunks_mut(64).enumerate() {
            if n % 3 == 0 {
                for b in chunk.iter_mut() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *b = state as u8;
                }
            } else {
                chunk.fill(b'a' + (n % 26) as u8);
            }
        }
        std::fs::File::create(dir.join(format!("f{i}")))?.write_all(&buf)?;
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let base = tempfile::Builder::new()
        .prefix("fleet-bench-backup")
        .tempdir_in(&args.dir)?;
    let data = match &args.data {
        Some(data) => data.clone(),
        None => {
            let data = base.path().join("data");
            eprintln!("making {} files, {} bytes...", args.files, args.bytes);
            make_files(&data, args.files, args.bytes)?;
            data
        }
    };
    let bytes = tree_bytes(&data)?;
    Command::new("sync").status()?;
    let mb = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    let side = |name: &str| args.only.as_deref().is_none_or(|only| only == name);
    let reference = if side("reference") {
        let out = base.path().join("reference.tar.zst");
        let started = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -cf - -C {} . | zstd -q -1 -T0 > {}",
                data.display(),
                out.display()
            ))
            .status()?;
        if !status.success() {
            bail!("tar | zstd failed (is zstd installed?)");
        }
        let unsynced = started.elapsed();
        // fleet's backup is synced before the step reports it done: the
        // same for the reference, timed apart.
        let status = Command::new("sync").arg(&out).status()?;
        if !status.success() {
            bail!("sync {} failed", out.display());
        }
        Some((unsynced, started.elapsed(), std::fs::metadata(&out)?.len()))
    } else {
        None
    };
    let fleet = if side("fleet") {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let started = Instant::now();
        let outcome = fleet_agent::backup::archive::write_mount(
            &data,
            &base.path().join("fleet.tar.zst"),
            &base.path().join("fleet.manifest.jsonl"),
            threads,
            // As the step runs it: progress metered, reports dropped here.
            &|_| {},
        )?;
        Some((started.elapsed(), outcome.compressed_bytes))
    } else {
        None
    };
    println!(
        "## checkpoint backup, {} files, {:.1} GB",
        count_files(&data)?,
        bytes as f64 / 1e9
    );
    if let Some((took, size)) = fleet {
        println!(
            "- fleet {:.0} MB/s ({:.2} s, {:.0} MB compressed, manifest with sha256 per file, both synced)",
            mb(took),
            took.as_secs_f64(),
            size as f64 / 1e6,
        );
    }
    if let Some((unsynced, synced, size)) = reference {
        println!(
            "- tar | zstd -1 -T0: {:.0} MB/s ({:.2} s, {:.0} MB); with sync: {:.0} MB/s ({:.2} s)",
            mb(unsynced),
            unsynced.as_secs_f64(),
            size as f64 / 1e6,
            mb(synced),
            synced.as_secs_f64(),
        );
    }
    if let (Some((took, _)), Some((unsynced, synced, _))) = (fleet, reference) {
        println!(
            "- throughput ratio: **{:.2}** against tar | zstd, **{:.2}** against tar | zstd && sync",
            unsynced.as_secs_f64() / took.as_secs_f64(),
            synced.as_secs_f64() / took.as_secs_f64(),
        );
    }
    Ok(())
}

fn tree_bytes(root: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in walkdir(root)? {
        total += entry.len();
    }
    Ok(total)
}

fn count_files(root: &Path) -> anyhow::Result<usize> {
    Ok(walkdir(root)?.len())
}

/// The regular files below `root` (the benchmark's own tree: no links).
fn walkdir(root: &Path) -> anyhow::Result<Vec<std::fs::Metadata>> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.is_file() {
                files.push(meta);
            }
        }
    }
    Ok(files)
}
