//! Per-host progress of a run, drawn on stderr from the controller's
//! events: on a terminal one bar per host, redrawn in place; otherwise
//! plain lines, throttled so a log stays readable. Never on stdout, so
//! `-o json` stays one document.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use fleet_core::plan::Action;
use fleet_core::run::{ContainerRun, EventKind, RunEvent};

use crate::commands::plan::bytes;

/// Redraws of the bars at most this often (agents report up to ~50 times
/// a second).
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// A plain progress line per host at most this often.
const LINE_EVERY: Duration = Duration::from_secs(5);
const BAR_CELLS: u64 = 20;

/// What the plan expects one container's long steps to go through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Planned {
    /// Entries under its mounts (what the backup archives).
    pub entries: u64,
    /// Entries owned by the ids that move (what the ownership step changes).
    pub changing: u64,
    /// Bytes under its mounts (what the backup archives).
    pub bytes: u64,
}

/// Per (host, container), from the run's containers.
pub fn planned(containers: &[ContainerRun]) -> HashMap<(String, String), Planned> {
    containers
        .iter()
        .map(|c| {
            let key = (c.host.clone(), c.plan.name.clone());
            let planned = match &c.plan.action {
                Action::Migrate(m) => Planned {
                    entries: m.mounts.iter().map(|mount| mount.entries).sum(),
                    changing: m.mounts.iter().map(|mount| mount.changing).sum(),
                    bytes: m.backup_bytes,
                },
                _ => Planned::default(),
            };
            (key, planned)
        })
        .collect()
}

/// Where one host is: its container and step, and the step's counters
/// when it reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostState {
    pub container: String,
    pub step: String,
    pub counters: Option<Counters>,
}

/// A long step's counters, as the agent streams them.
pub type Counters = fleet_core::step::Progress;

/// ` ▕██████░░░░▏  61%`, or nothing without a total to measure against.
fn bar(done: u64, total: u64) -> String {
    let done = done.min(total);
    match (
        (done * BAR_CELLS).checked_div(total),
        (done * 100).checked_div(total),
    ) {
        (Some(filled), Some(percent)) => format!(
            " ▕{}{}▏ {percent:>3}%",
            "█".repeat(filled as usize),
            "░".repeat((BAR_CELLS - filled) as usize)
        ),
        _ => String::new(),
    }
}

/// `[h1] db backup ▕█████░░░░░░░░░░░░░░░▏  25% 1.0 MB of 4.0 MB, 300 of 1200 entries`.
pub fn host_line(host: &str, state: &HostState, planned: Option<Planned>) -> String {
    let head = format!("[{host}] {} {}", state.container, state.step);
    let Some(c) = state.counters else {
        return head;
    };
    let plan = planned.unwrap_or_default();
    let of = |total: u64| {
        if total > 0 {
            format!(" of {total}")
        } else {
            String::new()
        }
    };
    match state.step.as_str() {
        "backup" => {
            let total_bytes = if plan.bytes > 0 {
                format!(" of {}", bytes(plan.bytes))
            } else {
                String::new()
            };
            format!(
                "{head}{} {}{total_bytes}, {}{} entries",
                bar(c.bytes, plan.bytes),
                bytes(c.bytes),
                c.entries,
                of(plan.entries)
            )
        }
        _ => format!(
            "{head}{} {}{} changed, {} entries seen, {}",
            bar(c.changed, plan.changing),
            c.changed,
            of(plan.changing),
            c.entries,
            bytes(c.bytes)
        ),
    }
}

/// The step an event is about, as the bars name it ("" for none).
fn step_name(event: &RunEvent) -> String {
    event.step.map_or("", |kind| kind.as_str()).to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Bars redrawn in place, each cut to the terminal's width.
    Bars { width: usize },
    /// Throttled lines, for logs and pipes.
    Lines,
}

impl Style {
    /// Bars when stderr is a terminal.
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        let stderr = std::io::stderr();
        if !stderr.is_terminal() {
            return Style::Lines;
        }
        let width = rustix::termios::tcgetwinsize(&stderr)
            .map(|w| usize::from(w.ws_col))
            .ok()
            .filter(|&w| w > 0)
            .unwrap_or(80);
        Style::Bars { width }
    }
}

/// The progress of a run as it is followed.
pub struct Progress<W: Write> {
    style: Style,
    sink: W,
    planned: HashMap<(String, String), Planned>,
    hosts: BTreeMap<String, HostState>,
    /// Lines of bars on the screen now.
    drawn: usize,
    last_draw: Option<Instant>,
    last_line: HashMap<String, Instant>,
}

impl<W: Write> Progress<W> {
    pub fn new(style: Style, sink: W) -> Self {
        Progress {
            style,
            sink,
            planned: HashMap::new(),
            hosts: BTreeMap::new(),
            drawn: 0,
            last_draw: None,
            last_line: HashMap::new(),
        }
    }

    /// The totals to measure against, from the run's containers.
    pub fn plan(&mut self, containers: &[ContainerRun]) {
        if self.planned.is_empty() {
            self.planned = planned(containers);
        }
    }

    /// A durable event: a host starts a step, or is done.
    pub fn event(&mut self, event: &RunEvent) {
        let host = event.host.clone().unwrap_or_default();
        match event.what {
            EventKind::StepStarted | EventKind::UndoStarted if !host.is_empty() => {
                self.hosts.insert(
                    host,
                    HostState {
                        container: event.container.clone().unwrap_or_default(),
                        step: step_name(event),
                        counters: None,
                    },
                );
            }
            EventKind::HostDone | EventKind::HostFailed => {
                self.hosts.remove(&host);
            }
            EventKind::RunFinished | EventKind::Paused | EventKind::Halted => self.hosts.clear(),
            _ => {}
        }
    }

    /// A progress event (no sequence number): counters of a long step, or
    /// none (every step reports that it started).
    pub fn progress(&mut self, event: &RunEvent, now: Instant) {
        let host = event.host.clone().unwrap_or_default();
        let counters = Counters {
            entries: event.entries,
            changed: event.changed,
            bytes: event.bytes,
        };
        let state = HostState {
            container: event.container.clone().unwrap_or_default(),
            step: step_name(event),
            counters: (counters != Counters::default()).then_some(counters),
        };
        match self.style {
            Style::Bars { .. } => {
                self.hosts.insert(host, state);
                if self
                    .last_draw
                    .is_none_or(|t| now.duration_since(t) >= REDRAW_EVERY)
                {
                    self.redraw(now);
                }
            }
            Style::Lines => {
                // The event lines already say which step a host is in.
                let due = state.counters.is_some()
                    && self
                        .last_line
                        .get(&host)
                        .is_none_or(|t| now.duration_since(*t) >= LINE_EVERY);
                if due {
                    let line = self.line(&host, &state);
                    let _ = writeln!(self.sink, "{line}");
                    self.last_line.insert(host.clone(), now);
                }
                self.hosts.insert(host, state);
            }
        }
    }

    /// Writes something else to the screen (an event line on stdout) with
    /// the bars out of its way, then draws them again below it.
    pub fn above(&mut self, write: impl FnOnce()) {
        self.clear();
        write();
        self.redraw(Instant::now());
    }

    /// A line of fleetctl's own on stderr, above the bars.
    pub fn note(&mut self, line: &str) {
        self.clear();
        let _ = writeln!(self.sink, "fleetctl: {line}");
        self.redraw(Instant::now());
    }

    /// Takes the bars off the screen for good (the summary follows).
    pub fn finish(&mut self) {
        self.clear();
        self.hosts.clear();
    }

    fn line(&self, host: &str, state: &HostState) -> String {
        let key = (host.to_string(), state.container.clone());
        host_line(host, state, self.planned.get(&key).copied())
    }

    fn clear(&mut self) {
        if self.drawn > 0 {
            // Up to the first bar, then erase to the end of the screen.
            let _ = write!(self.sink, "\x1b[{}A\x1b[J", self.drawn);
            let _ = self.sink.flush();
            self.drawn = 0;
        }
    }

    fn redraw(&mut self, now: Instant) {
        let Style::Bars { width } = self.style else {
            return;
        };
        self.clear();
        let lines: Vec<String> = self
            .hosts
            .iter()
            .map(|(host, state)| self.line(host, state))
            .collect();
        for line in &lines {
            // Cut to the width: a wrapped line would throw off the count
            // of lines to erase next time.
            let cut: String = line.chars().take(width.saturating_sub(1)).collect();
            let _ = writeln!(self.sink, "{cut}");
        }
        let _ = self.sink.flush();
        self.drawn = lines.len();
        self.last_draw = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::step::StepKind;
    use serde_json::json;

    fn event(what: EventKind, host: &str, container: &str, step: Option<StepKind>) -> RunEvent {
        RunEvent {
            seq: 0,
            unix_ms: 0,
            host: Some(host.into()),
            container: (!container.is_empty()).then(|| container.into()),
            step,
            what,
            message: String::new(),
            entries: 0,
            changed: 0,
            bytes: 0,
        }
    }

    fn progress(host: &str, container: &str, step: StepKind, counts: [u64; 3]) -> RunEvent {
        RunEvent {
            entries: counts[0],
            changed: counts[1],
            bytes: counts[2],
            ..event(EventKind::StepProgress, host, container, Some(step))
        }
    }

    /// A run's container as the run view carries it, planned from JSON.
    fn container(
        host: &str,
        name: &str,
        backup_bytes: u64,
        mounts: serde_json::Value,
    ) -> ContainerRun {
        let plan = json!({
            "name": name, "id": "c0ffee", "image": "i", "fingerprint": "f", "current": "root",
            "class": "stateless", "order": 1, "group": [],
            "action": {
                "kind": "migrate",
                "target": {"placement": "in-place", "user": {"kind": "explicit", "ids": {"uid": 1000, "gid": 1000}}},
                "from_ids": [0], "mounts": mounts, "backup_bytes": backup_bytes, "hooks": [], "probe": null,
                "min_healthy_secs": 0, "deadline_secs": 0, "retention_days": 0, "expected_downtime_ms": 0
            }
        });
        let plan = serde_json::from_value(plan).unwrap();
        ContainerRun::new(
            format!("{host}/{name}"),
            host.into(),
            plan,
            fleet_core::run::ContainerState::Pending,
        )
    }

    fn screen(p: &Progress<Vec<u8>>) -> String {
        String::from_utf8_lossy(&p.sink).into_owned()
    }

    #[test]
    fn progress_bars_measure_against_the_plan() {
        let planned = Planned {
            entries: 1200,
            changing: 1000,
            bytes: 2000,
        };
        let state = |step: &str, [entries, changed, bytes]: [u64; 3]| HostState {
            container: "db".into(),
            step: step.into(),
            counters: Some(Counters {
                entries,
                changed,
                bytes,
            }),
        };
        let owning = state("ownership", [700, 500, 0]);
        let line = host_line("h1", &owning, Some(planned));
        assert!(line.contains("██████████░░░░░░░░░░▏  50%"), "{line}");
        assert!(
            line.contains("500 of 1000 changed, 700 entries seen"),
            "{line}"
        );
        let line = host_line("h1", &state("backup", [300, 0, 500]), Some(planned));
        assert!(line.starts_with("[h1] db backup ▕█████░"), "{line}");
        assert!(
            line.contains(" 25% 500 B of 2.0 kB, 300 of 1200 entries"),
            "{line}"
        );
        // Past the plan's estimate (the tree grew): full, never beyond.
        let grown = state("backup", [1300, 0, 2600]);
        assert!(host_line("h1", &grown, Some(planned)).contains("100%"));
        // No plan to measure against: counts, no bar.
        let unknown = host_line("h9", &owning, None);
        assert!(
            !unknown.contains('%') && unknown.contains("500 changed"),
            "{unknown}"
        );
        // A step without counters: where the host is.
        let stopping = HostState {
            container: "db".into(),
            step: "stop".into(),
            counters: None,
        };
        assert_eq!(host_line("h1", &stopping, Some(planned)), "[h1] db stop");
    }

    #[test]
    fn one_bar_per_host_redrawn_in_place_under_the_event_lines() {
        let mount = json!([{"source": "/s", "destination": "/d", "entries": 10, "changing": 8,
                            "bytes": 0, "partial": false, "left_alone": [], "left_alone_count": 0}]);
        let containers = vec![
            container("h1", "db", 4000, mount),
            container("h2", "web", 0, json!([])),
        ];
        let mut p = Progress::new(Style::Bars { width: 60 }, Vec::new());
        p.plan(&containers);
        let t0 = Instant::now();
        p.event(&event(
            EventKind::StepStarted,
            "h2",
            "web",
            Some(StepKind::Stop),
        ));
        p.progress(&progress("h1", "db", StepKind::Backup, [5, 0, 2000]), t0);
        let first = screen(&p);
        assert_eq!(p.drawn, 2, "{first}");
        assert!(first.contains("[h1] db backup ▕██████████░"), "{first}");
        assert!(first.contains("[h2] web stop\n"), "{first}");
        // Too soon after the last draw: counted, not drawn.
        p.progress(&progress("h1", "db", StepKind::Backup, [6, 0, 3000]), t0);
        assert_eq!(screen(&p), first);
        // Later: the two bars are erased and drawn again, each within the width.
        p.progress(
            &progress("h1", "db", StepKind::Backup, [10, 0, 4000]),
            t0 + REDRAW_EVERY,
        );
        let redrawn = &screen(&p)[first.len()..];
        let bars = redrawn.strip_prefix("\x1b[2A\x1b[J").expect(redrawn);
        assert!(bars.contains("100%"), "{bars}");
        assert!(bars.lines().all(|l| l.chars().count() < 60), "{bars}");
        // An event line goes above the bars; a host that is done loses its bar.
        p.event(&event(EventKind::HostDone, "h2", "", None));
        let before = screen(&p).len();
        p.above(|| {});
        let after = &screen(&p)[before..];
        assert!(after.starts_with("\x1b[2A\x1b[J"), "{after:?}");
        assert!(!after.contains("[h2]") && after.contains("[h1]"), "{after}");
        p.finish();
        assert!(screen(&p).ends_with("\x1b[1A\x1b[J"));
        assert_eq!(p.drawn, 0);
    }

    #[test]
    fn without_a_terminal_each_host_gets_a_plain_line_every_few_seconds() {
        let mut p = Progress::new(Style::Lines, Vec::new());
        let t0 = Instant::now();
        p.progress(&progress("h1", "db", StepKind::Stop, [0, 0, 0]), t0);
        for ms in [1, 100, 2000, LINE_EVERY.as_millis() as u64 + 1] {
            let at = t0 + Duration::from_millis(ms);
            p.progress(&progress("h1", "db", StepKind::Ownership, [ms, ms, 0]), at);
            p.progress(&progress("h2", "web", StepKind::Backup, [ms, 0, ms]), at);
        }
        let out = screen(&p);
        assert!(!out.contains('\x1b'), "no escapes in a log: {out:?}");
        assert_eq!(
            out.lines().filter(|l| l.starts_with("[h1]")).count(),
            2,
            "{out}"
        );
        assert_eq!(
            out.lines().filter(|l| l.starts_with("[h2]")).count(),
            2,
            "{out}"
        );
        assert!(out.contains("[h1] db ownership 5001 changed"), "{out}");
    }
}
