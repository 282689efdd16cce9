//! The user database (`/etc/passwd`, `/etc/group`) each container needs,
//! found without an archive round trip per container where the answer is
//! already known; and the answers drawn from it (who `Config.User` names,
//! the image's own users).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::models::ContainerInspectResponse;
use futures::StreamExt;

use super::archive::{etc_is_plain, read_user_db, read_user_db_traced};
use crate::cache::Cache;
use crate::engine::Connected;
use crate::identity::{self, Resolved, UserDb};
use crate::user_files::{self, RootRead};

/// How many engine calls run at once (every fan-out of the inspection).
pub(super) const CONCURRENCY: usize = 16;

/// A container's user database, or why it could not be read (worded as the
/// archive read words it).
pub(super) type DbResult = Result<Arc<UserDb>, String>;

/// The container's own non-root users, from its passwd.
pub(super) async fn users_of(
    conn: &Connected,
    cache: &Cache,
    id: &str,
    known: Option<&DbResult>,
) -> Vec<fleet_core::audit::ImageUser> {
    let db = match (known, cache.user_db(id)) {
        (Some(Ok(db)), _) => db.clone(),
        (Some(Err(_)), _) => return Vec::new(),
        (None, Some(db)) => db,
        (None, None) => match read_user_db(conn, id).await {
            Ok(db) => Arc::new(db),
            Err(_) => return Vec::new(),
        },
    };
    db.passwd
        .iter()
        .flatten()
        .filter(|e| e.uid != 0 && e.uid < 65534)
        .map(|e| fleet_core::audit::ImageUser {
            name: e.name.clone(),
            uid: e.uid,
            gid: e.gid,
        })
        .collect()
}

/// Who `user` (the configuration's `User`) is inside the container.
pub(super) async fn resolve_user(
    conn: &Connected,
    cache: &Cache,
    id: &str,
    user: &str,
    known: Option<&DbResult>,
) -> Result<Resolved, String> {
    if !identity::needs_user_db(user) {
        return identity::resolve(user, &UserDb::default());
    }
    let cannot = |e: &dyn std::fmt::Display| {
        format!("cannot read the container's user database to resolve '{user}': {e}")
    };
    let db = match (known, cache.user_db(id)) {
        (Some(Ok(db)), _) => db.clone(),
        (Some(Err(e)), _) => return Err(cannot(e)),
        (None, Some(db)) => db,
        (None, None) => {
            let epoch = cache.epoch(id);
            let db = Arc::new(read_user_db(conn, id).await.map_err(|e| cannot(&e))?);
            cache.put_user_db(id, epoch, db.clone());
            db
        }
    };
    identity::resolve(user, &db)
}

/// The user databases this inspection needs, found without an archive
/// round trip per container where the answer is already known:
///
/// 1. a running container: its own root through /proc (`user_files`),
///    a few system calls instead of two archive calls;
/// 2. a container whose writable layer provably left /etc/passwd and
///    /etc/group alone and that has no mount over them: the image's
///    answer, taken from one such container of that image (read through
///    /proc when one runs, else through the archive once per image);
///    only when that read met no symlink, since a symlink could lead
///    into a mount that other containers of the image do not share;
/// 3. everything else: the archive, concurrently.
///
/// Why not the changes endpoint for step 2: it is one round trip per
/// container (about a third of the two archive calls, measured), and
/// the upper directory the engine reports answers the same question
/// with two or three `stat`s; where that directory is not visible (an
/// agent in another mount namespace) the container is read on its own.
pub(super) async fn user_dbs(
    conn: &Connected,
    cache: &Cache,
    proc_root: &Path,
    docs: &[Arc<ContainerInspectResponse>],
    with_users: bool,
) -> HashMap<String, DbResult> {
    let mut out = HashMap::new();
    let mut wanted = Vec::new();
    for doc in docs {
        let id = doc.id.clone().unwrap_or_default();
        let user = doc
            .config
            .as_ref()
            .and_then(|c| c.user.as_deref())
            .unwrap_or_default();
        if id.is_empty() || !(with_users || identity::needs_user_db(user)) {
            continue;
        }
        if let Some(db) = cache.user_db(&id) {
            out.insert(id, Ok(db));
            continue;
        }
        let epoch = cache.epoch(&id);
        wanted.push(Wanted::of(doc, id, epoch));
    }
    if wanted.is_empty() {
        return out;
    }
    let proc_root = proc_root.to_path_buf();
    let probe = wanted.clone();
    let locals =
        tokio::task::spawn_blocking(move || probe.iter().map(|w| w.local(&proc_root)).collect())
            .await
            .unwrap_or_else(|_| vec![Local::default(); wanted.len()]);
    let Sorted {
        mut found,
        own,
        shared,
    } = sort(wanted, locals);
    found.extend(read_through_archive(conn, own, shared).await);
    for (w, db) in found {
        if let Ok(db) = &db {
            cache.put_user_db(&w.id, w.epoch, db.clone());
        }
        out.insert(w.id, db);
    }
    out
}

/// The wanted containers sorted by how their database is found.
struct Sorted {
    /// Answered already: through /proc, or by a running container of the
    /// same image whose layer also left the files alone.
    found: Vec<(Wanted, DbResult)>,
    /// Read through the archive, each on its own.
    own: Vec<Wanted>,
    /// Groups of containers of one image: one archive read may stand for all.
    shared: Vec<Vec<Wanted>>,
}

/// Steps 1 and 2 of [`user_dbs`]: what /proc answered, and what an image
/// shares.
fn sort(wanted: Vec<Wanted>, locals: Vec<Local>) -> Sorted {
    let mut found: Vec<(Wanted, DbResult)> = Vec::new();
    let mut image_db: HashMap<String, Arc<UserDb>> = HashMap::new();
    let mut rest = Vec::new();
    for (w, local) in wanted.into_iter().zip(locals) {
        match local.proc_read {
            Some(RootRead { db, plain }) => {
                let db = Arc::new(db);
                if plain && local.shares_image {
                    image_db
                        .entry(w.image.clone())
                        .or_insert_with(|| db.clone());
                }
                found.push((w, Ok(db)));
            }
            None => rest.push((w, local.shares_image)),
        }
    }
    let mut own = Vec::new();
    let mut by_image: HashMap<String, Vec<Wanted>> = HashMap::new();
    for (w, shares_image) in rest {
        match (shares_image, image_db.get(&w.image)) {
            (true, Some(db)) => {
                let db = db.clone();
                found.push((w, Ok(db)));
            }
            (true, None) => by_image.entry(w.image.clone()).or_default().push(w),
            (false, _) => own.push(w),
        }
    }
    let mut shared = Vec::new();
    for (_, members) in by_image {
        if members.len() > 1 {
            shared.push(members);
        } else {
            own.extend(members);
        }
    }
    Sorted { found, own, shared }
}

/// Step 3 of [`user_dbs`]: one archive read per image that no running
/// container answered, and the containers that need their own, all at
/// once; then the members of an image whose one read could not stand for
/// them.
async fn read_through_archive(
    conn: &Connected,
    own: Vec<Wanted>,
    shared: Vec<Vec<Wanted>>,
) -> Vec<(Wanted, DbResult)> {
    let mut found = Vec::new();
    let first: Vec<Vec<(Wanted, Option<DbResult>)>> = futures::stream::iter(
        own.into_iter()
            .map(|w| (vec![w], false))
            .chain(shared.into_iter().map(|m| (m, true))),
    )
    .map(|(members, share)| async move {
        if share {
            read_for_image(conn, members).await
        } else {
            let mut done = Vec::new();
            for w in members {
                let db = read_own(conn, &w.id).await;
                done.push((w, Some(db)));
            }
            done
        }
    })
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await;
    let mut again = Vec::new();
    for (w, db) in first.into_iter().flatten() {
        match db {
            Some(db) => found.push((w, db)),
            None => again.push(w),
        }
    }
    // Members of an image whose one read could not stand for them.
    let second: Vec<(Wanted, DbResult)> = futures::stream::iter(again)
        .map(|w| async move {
            let db = read_own(conn, &w.id).await;
            (w, db)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    found.extend(second);
    found
}

/// Reads the first member through the archive; when that read met no
/// symlink (nor does the engine report /etc as one), the answer is the
/// image's and stands for every member. Otherwise only the first has
/// its answer and the others (`None`) are read on their own.
async fn read_for_image(conn: &Connected, members: Vec<Wanted>) -> Vec<(Wanted, Option<DbResult>)> {
    let mut members = members.into_iter();
    let Some(first) = members.next() else {
        return Vec::new();
    };
    let (read, etc_plain) = futures::join!(
        read_user_db_traced(conn, &first.id),
        etc_is_plain(conn, &first.id)
    );
    let mut out = Vec::new();
    match read {
        Ok((db, files_plain)) => {
            let db = Arc::new(db);
            let stands = files_plain && etc_plain;
            for w in members {
                out.push((w, stands.then(|| Ok(db.clone()))));
            }
            out.push((first, Some(Ok(db))));
        }
        Err(e) => {
            out.extend(members.map(|w| (w, None)));
            out.push((first, Some(Err(e.to_string()))));
        }
    }
    out
}

/// A container that needs its user database, and what the engine says
/// about where its files live.
#[derive(Debug, Clone)]
struct Wanted {
    id: String,
    epoch: u64,
    image: String,
    /// The main process, when running.
    pid: i32,
    merged: Option<PathBuf>,
    driver: String,
    upper: Option<PathBuf>,
    /// A mount over /, /etc, /etc/passwd or /etc/group.
    covered: bool,
}

/// What the agent learnt without the engine.
#[derive(Debug, Clone, Default)]
struct Local {
    proc_read: Option<RootRead>,
    /// The layer left the user files alone and nothing is mounted over
    /// them: the container sees its image's /etc/passwd and /etc/group.
    shares_image: bool,
}

impl Wanted {
    fn of(doc: &ContainerInspectResponse, id: String, epoch: u64) -> Self {
        let state = doc.state.as_ref();
        let running = state.and_then(|s| s.running) == Some(true);
        let pid = state.and_then(|s| s.pid).unwrap_or(0);
        let graph = doc.graph_driver.as_ref();
        let data = |key: &str| graph.and_then(|g| g.data.get(key)).map(PathBuf::from);
        let host = doc.host_config.as_ref();
        let mut destinations: Vec<String> = doc
            .mounts
            .iter()
            .flatten()
            .filter_map(|m| m.destination.clone())
            .collect();
        if let Some(host) = host {
            destinations.extend(
                host.binds
                    .iter()
                    .flatten()
                    .filter_map(|b| b.split(':').nth(1).map(String::from)),
            );
            destinations.extend(
                host.mounts
                    .iter()
                    .flatten()
                    .filter_map(|m| m.target.clone()),
            );
            destinations.extend(host.tmpfs.iter().flat_map(|t| t.keys().cloned()));
        }
        Wanted {
            id,
            epoch,
            image: doc.image.clone().unwrap_or_default(),
            pid: if running && pid > 0 { pid as i32 } else { 0 },
            merged: data("MergedDir"),
            driver: graph.map(|g| g.name.clone()).unwrap_or_default(),
            upper: data("UpperDir"),
            covered: destinations
                .iter()
                .any(|d| user_files::covers_user_files(d)),
        }
    }

    fn local(&self, proc_root: &Path) -> Local {
        let proc_read = (self.pid > 0)
            .then(|| {
                user_files::read_via_proc(proc_root, self.pid, &self.id, self.merged.as_deref())
            })
            .flatten();
        let shares_image = !self.image.is_empty()
            && !self.covered
            && self
                .upper
                .as_deref()
                .is_some_and(|upper| user_files::layer_keeps_user_files(&self.driver, upper));
        Local {
            proc_read,
            shares_image,
        }
    }
}

async fn read_own(conn: &Connected, id: &str) -> DbResult {
    read_user_db(conn, id)
        .await
        .map(Arc::new)
        .map_err(|e| e.to_string())
}
