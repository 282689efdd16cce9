//! The host's process table, read from /proc: who each process of a
//! container really runs as (all four uids and gids), mapped through the
//! container's user namespace.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub name: String,
    /// real, effective, saved, filesystem — as seen on the host.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
}

/// One snapshot of /proc, taken once per inspection.
#[derive(Debug, Default)]
pub struct ProcessTable {
    root: PathBuf,
    procs: HashMap<i32, ProcInfo>,
    children: HashMap<i32, Vec<i32>>,
}

impl ProcessTable {
    /// Every process on the host: one `status` read per process.
    pub fn scan(root: &Path) -> Self {
        let mut table = ProcessTable {
            root: root.to_path_buf(),
            ..Default::default()
        };
        let Ok(entries) = std::fs::read_dir(root) else {
            return table;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // A process may exit between readdir and read: skip it.
            if let Some(info) = read_status(root, pid) {
                table.children.entry(info.ppid).or_default().push(pid);
                table.procs.insert(pid, info);
            }
        }
        for kids in table.children.values_mut() {
            kids.sort_unstable();
        }
        table
    }

    /// Only the trees under `pids` (the containers' main processes), found
    /// through `/proc/PID/task/TID/children`: reading the `status` of every
    /// host process costs more than the rest of an inspection. Falls back
    /// to a full scan on kernels without CONFIG_PROC_CHILDREN.
    pub fn of_trees(root: &Path, pids: &[i32]) -> Self {
        let self_task = root.join("thread-self/children");
        if !self_task.exists() {
            return Self::scan(root);
        }
        let mut table = ProcessTable {
            root: root.to_path_buf(),
            ..Default::default()
        };
        let mut pending: Vec<i32> = pids.to_vec();
        while let Some(pid) = pending.pop() {
            if table.procs.contains_key(&pid) {
                continue;
            }
            let Some(info) = read_status(root, pid) else {
                continue;
            };
            let kids = read_children(root, pid);
            pending.extend(kids.iter().copied());
            table.children.insert(pid, kids);
            table.procs.insert(pid, info);
        }
        table
    }

    pub fn get(&self, pid: i32) -> Option<&ProcInfo> {
        self.procs.get(&pid)
    }

    /// `pid` and all its descendants, parents before children.
    pub fn tree(&self, pid: i32) -> Vec<&ProcInfo> {
        let mut out = Vec::new();
        let mut stack = vec![pid];
        while let Some(p) = stack.pop() {
            if let Some(info) = self.procs.get(&p) {
                out.push(info);
                if let Some(kids) = self.children.get(&p) {
                    stack.extend(kids.iter().rev());
                }
            }
        }
        out
    }

    /// The uid map of `pid`'s user namespace, as seen from the host.
    pub fn uid_map(&self, pid: i32) -> IdMap {
        IdMap::read(&self.root.join(pid.to_string()).join("uid_map"))
    }

    pub fn gid_map(&self, pid: i32) -> IdMap {
        IdMap::read(&self.root.join(pid.to_string()).join("gid_map"))
    }
}

/// Reads a small /proc file in one read(2): procfs regenerates the text on
/// every read, and std's growing reads would ask several times.
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; 8192];
    let n = file.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn read_status(root: &Path, pid: i32) -> Option<ProcInfo> {
    parse_status(
        pid,
        &read_small(&root.join(pid.to_string()).join("status"))?,
    )
}

/// The children of every thread of `pid`.
fn read_children(root: &Path, pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(root.join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    let mut kids: Vec<i32> = tasks
        .flatten()
        .filter_map(|task| read_small(&task.path().join("children")))
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    kids.sort_unstable();
    kids.dedup();
    kids
}

fn parse_ids(value: &str) -> Option<[u32; 4]> {
    let mut ids = [0u32; 4];
    let mut fields = value.split_whitespace();
    for slot in ids.iter_mut() {
        *slot = fields.next()?.parse().ok()?;
    }
    Some(ids)
}

pub fn parse_status(pid: i32, status: &str) -> Option<ProcInfo> {
    let mut name = String::new();
    let mut ppid = None;
    let mut uids = None;
    let mut gids = None;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "Name" => name = value.trim().to_string(),
            "PPid" => ppid = value.trim().parse().ok(),
            "Uid" => uids = parse_ids(value),
            "Gid" => gids = parse_ids(value),
            _ => {}
        }
    }
    Some(ProcInfo {
        pid,
        ppid: ppid?,
        name,
        uids: uids?,
        gids: gids?,
    })
}

/// A user-namespace id map: lines of "inside outside count".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<(u32, u32, u32)>,
}

impl IdMap {
    pub fn identity() -> Self {
        IdMap {
            ranges: vec![(0, 0, u32::MAX)],
        }
    }

    pub fn parse(text: &str) -> Self {
        let ranges = text
            .lines()
            .filter_map(|line| {
                let mut f = line.split_whitespace().map(|x| x.parse::<u32>().ok());
                Some((f.next()??, f.next()??, f.next()??))
            })
            .collect();
        IdMap { ranges }
    }

    /// Reads a map; an unreadable map (process gone) counts as identity,
    /// which is what a process without its own user namespace has.
    fn read(path: &Path) -> Self {
        read_small(path)
            .map(|t| IdMap::parse(&t))
            .unwrap_or_else(IdMap::identity)
    }

    /// Host id → id inside the namespace. Unmapped ids show as the overflow
    /// id 65534, as the kernel does.
    pub fn to_inside(&self, host: u32) -> u32 {
        self.ranges
            .iter()
            .find(|(_, outside, count)| host >= *outside && host - outside < *count)
            .map(|(inside, outside, _)| inside + (host - outside))
            .unwrap_or(65534)
    }

    /// Id inside the namespace → host id.
    pub fn to_host(&self, inside: u32) -> Option<u32> {
        self.ranges
            .iter()
            .find(|(start, _, count)| inside >= *start && inside - start < *count)
            .map(|(start, outside, _)| outside + (inside - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_with_all_four_ids() {
        let status = "Name:\tpostgres\nUmask:\t0077\nState:\tS (sleeping)\nPPid:\t1\nUid:\t999\t999\t0\t999\nGid:\t999\t999\t999\t999\n";
        let info = parse_status(42, status).unwrap();
        assert_eq!(info.name, "postgres");
        assert_eq!(info.ppid, 1);
        assert_eq!(info.uids, [999, 999, 0, 999]);
    }

    #[test]
    fn maps_rootless_ids_like_podman_troubleshooting_34() {
        // Rootless: container 0 -> host 1000, container 1.. -> 100000..
        let map =
            IdMap::parse("         0       1000          1\n         1     100000      65536\n");
        assert_eq!(map.to_inside(1000), 0);
        assert_eq!(map.to_host(0), Some(1000));
        assert_eq!(map.to_host(2003), Some(102002));
        assert_eq!(map.to_inside(102002), 2003);
        assert_eq!(
            map.to_inside(0),
            65534,
            "host root is unmapped in a rootless container"
        );
        let identity = IdMap::parse("0 0 4294967295\n");
        assert_eq!(identity.to_inside(0), 0);
        assert_eq!(identity.to_inside(1000), 1000);
    }

    #[test]
    fn scans_this_process_tree_both_ways() {
        let full = ProcessTable::scan(Path::new("/proc"));
        let me = std::process::id() as i32;
        let info = full.get(me).expect("own process in table");
        assert!(full.tree(info.ppid).iter().any(|p| p.pid == me));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let trees = ProcessTable::of_trees(Path::new("/proc"), &[me]);
        let tree: Vec<i32> = trees.tree(me).iter().map(|p| p.pid).collect();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            tree.contains(&me) && tree.contains(&(child.id() as i32)),
            "{tree:?}"
        );
        assert!(
            trees.get(1).is_none() || me == 1,
            "only the trees asked for"
        );
    }
}
