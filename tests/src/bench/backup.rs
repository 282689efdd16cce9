//! Checkpoint backup (issue 3): N files of mixed content, archived by
//! fleet (tar + zstd + manifest with a sha256 per file) against
//! `tar -cf - DIR | zstd -1 -T0 > file`; throughput ratio.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

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
    let data = base.path().join("data");
    eprintln!("making {} files, {} bytes...", args.files, args.bytes);
    make_files(&data, args.files, args.bytes)?;
    Command::new("sync").status()?;
    let reference_out = base.path().join("reference.tar.zst");
    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -cf - -C {} . | zstd -q -1 -T0 > {}",
            data.display(),
            reference_out.display()
        ))
        .status()?;
    if !status.success() {
        bail!("tar | zstd failed (is zstd installed?)");
    }
    let reference = started.elapsed();
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
    let fleet = started.elapsed();
    let mb = |d: std::time::Duration| args.bytes as f64 / 1e6 / d.as_secs_f64();
    println!(
        "## checkpoint backup, {} files, {:.1} GB",
        args.files,
        args.bytes as f64 / 1e9
    );
    println!(
        "- fleet {:.0} MB/s ({:.1} s, {:.0} MB compressed, manifest with sha256 per file) / tar | zstd -1 -T0 {:.0} MB/s ({:.1} s, {:.0} MB) = **{:.2}**",
        mb(fleet),
        fleet.as_secs_f64(),
        outcome.compressed_bytes as f64 / 1e6,
        mb(reference),
        reference.as_secs_f64(),
        std::fs::metadata(&reference_out)?.len() as f64 / 1e6,
        reference.as_secs_f64() / fleet.as_secs_f64()
    );
    Ok(())
}
