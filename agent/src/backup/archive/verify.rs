//! Verification: the archive re-read against its manifest.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::io::{ArchiveError, archive_reader, entry_path, io_err};
use super::manifest::{Item, read_manifest};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyOutcome {
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<String>,
}

/// Re-reads an archive against its manifest: every file's sha256 and size,
/// and every manifest entry present.
pub fn verify_mount(archive: &Path, manifest: &Path) -> Result<VerifyOutcome, ArchiveError> {
    let items = read_manifest(manifest)?;
    let mut expected: HashMap<Vec<u8>, &Item> = items.iter().map(|i| (i.path(), i)).collect();
    let mut outcome = VerifyOutcome::default();
    let mut tar = archive_reader(archive)?;
    for entry in tar.entries().map_err(io_err("read", archive))? {
        let mut entry = entry.map_err(io_err("read", archive))?;
        let path = entry_path(&entry);
        let shown = String::from_utf8_lossy(&path).into_owned();
        let Some(item) = expected.remove(&path) else {
            outcome
                .problems
                .push(format!("{shown}: in the archive but not in the manifest"));
            continue;
        };
        if item.kind == 'f' {
            let mut hasher = Sha256::new();
            let n = std::io::copy(&mut entry, &mut hasher).map_err(io_err("read", archive))?;
            outcome.files_checked += 1;
            outcome.bytes_checked += n;
            let sha = hex::encode(hasher.finalize());
            if Some(&sha) != item.sha256.as_ref() || n != item.size {
                outcome.problems.push(format!(
                    "{shown}: content differs from the manifest (sha256 {sha})"
                ));
            }
        }
    }
    let mut missing: Vec<String> = expected
        .into_iter()
        .filter(|(_, item)| item.kind != 's')
        .map(|(p, _)| {
            format!(
                "{}: in the manifest but not in the archive",
                String::from_utf8_lossy(&p)
            )
        })
        .collect();
    missing.sort();
    outcome.problems.extend(missing);
    Ok(outcome)
}
