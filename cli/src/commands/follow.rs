//! Following a run to its end through its server-streamed events, and
//! through a controller that restarts on the way: a broken stream or an
//! unreachable controller is asked again, with capped backoff, for a
//! bounded time, from the last event shown; a refusal is not.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use fleet_core::run::{EventKind, RunEvent, RunPhase, RunView};
use fleet_proto::controller::v1 as pb;

use crate::args::ListFormat;
use crate::client::Controller;
use crate::commands::progress::{Progress, Style};
use crate::commands::run_render::{event_line, parse, phase_code, print_json, render_summary};
use crate::exit::CliError;

/// The pause after the first failure; it doubles up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// Short enough to be back within seconds of a restart.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// Between watches of a run the controller is not driving yet (just
/// restarted, resuming it).
const IDLE_PAUSE: Duration = Duration::from_millis(500);

/// The durable events already shown: every sequence number up to `floor`,
/// and those above it that arrived out of order (parallel hosts number
/// their events before sending them). A reconnect asks for the events
/// after `floor`, so none is lost; those shown already are skipped.
#[derive(Debug, Default)]
pub struct Seen {
    floor: u64,
    above: BTreeSet<u64>,
}

impl Seen {
    /// Nothing shown yet after `after` (`runs watch --after`).
    pub fn after(after: u64) -> Self {
        Seen {
            floor: after,
            above: BTreeSet::new(),
        }
    }

    /// Whether `seq` is new; records it.
    pub fn first_time(&mut self, seq: u64) -> bool {
        if seq <= self.floor || !self.above.insert(seq) {
            return false;
        }
        while self.above.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
        true
    }

    /// What to ask the controller for on reconnecting.
    pub fn floor(&self) -> u64 {
        self.floor
    }
}

/// What to do after a failed call: pause, announcing the outage once.
#[derive(Debug, PartialEq, Eq)]
pub struct Retry {
    pub pause: Duration,
    pub announce: Option<String>,
}

/// How long to keep trying a controller that went away.
#[derive(Debug)]
pub struct Reconnect {
    budget: Duration,
    outage_began: Option<Instant>,
    pause: Duration,
}

impl Reconnect {
    pub fn new(budget: Duration) -> Self {
        Reconnect {
            budget,
            outage_began: None,
            pause: FIRST_PAUSE,
        }
    }

    /// The controller answered: a later outage gets the whole budget.
    pub fn reached(&mut self) {
        self.outage_began = None;
        self.pause = FIRST_PAUSE;
    }

    /// A call failed with `error`; `retryable` says whether asking again
    /// can help. The error back when it cannot, or the budget is spent.
    pub fn failed(
        &mut self,
        error: CliError,
        retryable: bool,
        now: Instant,
    ) -> Result<Retry, CliError> {
        if !retryable {
            return Err(error);
        }
        let began = *self.outage_began.get_or_insert(now);
        let waited = now.duration_since(began);
        if waited >= self.budget {
            return Err(CliError::error(format!(
                "{} (gave up reconnecting after {} s; --reconnect-for SECS waits longer)",
                error.message,
                self.budget.as_secs()
            )));
        }
        let announce = (began == now).then(|| {
            format!(
                "controller unreachable ({}); reconnecting for up to {} s…",
                error.message,
                self.budget.as_secs()
            )
        });
        let pause = self.pause.min(self.budget - waited);
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        Ok(Retry { pause, announce })
    }
}

/// Why a round of following stopped short of the run's end.
enum Interrupted {
    /// A call failed; `streaming` once the watch stream was open.
    Call {
        status: tonic::Status,
        streaming: bool,
    },
    Fatal(CliError),
}

impl From<CliError> for Interrupted {
    fn from(error: CliError) -> Self {
        Interrupted::Fatal(error)
    }
}

struct Follower<'a> {
    controller: &'a mut Controller,
    id: &'a str,
    output: ListFormat,
    seen: Seen,
    progress: Progress<std::io::Stderr>,
    /// The last durable event said the run ended or paused.
    ended: bool,
    /// A watch ran to its end after the run had stopped moving: every
    /// event it will ever have was shown.
    drained: bool,
}

/// Follows a run's events to its end (reconnecting for up to
/// `reconnect_for` if the controller goes away), prints its summary, and
/// returns the exit code of its phase.
pub async fn follow(
    controller: &mut Controller,
    id: &str,
    after: u64,
    output: ListFormat,
    reconnect_for: Duration,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let mut follower = Follower {
        controller,
        id,
        output,
        seen: Seen::after(after),
        progress: Progress::new(Style::for_stderr(), std::io::stderr()),
        ended: false,
        drained: false,
    };
    let mut reconnect = Reconnect::new(reconnect_for);
    loop {
        match follower.round(&mut reconnect, out).await {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => {}
            Err(Interrupted::Fatal(error)) => {
                follower.progress.finish();
                return Err(error);
            }
            Err(Interrupted::Call { status, streaming }) => {
                let retryable = crate::client::worth_retrying(&status, streaming);
                let error = if streaming && retryable {
                    // The chain of a cut connection says little more.
                    CliError::error(format!(
                        "the event stream from the controller at {} broke: {}",
                        follower.controller.address,
                        status.message()
                    ))
                } else {
                    follower.controller.explain(status)
                };
                match reconnect.failed(error, retryable, Instant::now()) {
                    Ok(retry) => {
                        if let Some(line) = retry.announce {
                            follower.progress.note(&line);
                        }
                        tokio::time::sleep(retry.pause).await;
                    }
                    Err(error) => {
                        follower.progress.finish();
                        return Err(error);
                    }
                }
            }
        }
    }
}

impl Follower<'_> {
    /// The run's view; then its summary and exit code if it is over, or
    /// one watch of its events.
    async fn round(
        &mut self,
        reconnect: &mut Reconnect,
        out: &mut dyn Write,
    ) -> Result<Option<u8>, Interrupted> {
        let info = self
            .controller
            .client
            .get_run(pb::RunRef {
                run_id: self.id.into(),
            })
            .await
            .map_err(|status| Interrupted::Call {
                status,
                streaming: false,
            })?
            .into_inner();
        let view: RunView = parse("run", &info.run_json)?;
        let phase = view.run.phase;
        if self.ended || self.drained {
            self.progress.finish();
            match self.output {
                ListFormat::Json => print_json(&view, out),
                ListFormat::Table => render_summary(&view, out),
            }
            return Ok(Some(phase_code(phase)));
        }
        self.progress.plan(&view.containers);
        let settled = phase != RunPhase::Running;
        self.watch(reconnect, out).await?;
        self.drained = settled;
        if !self.ended && !self.drained {
            tokio::time::sleep(IDLE_PAUSE).await;
        }
        Ok(None)
    }

    /// One watch stream, from the first event not shown, to its end.
    async fn watch(
        &mut self,
        reconnect: &mut Reconnect,
        out: &mut dyn Write,
    ) -> Result<(), Interrupted> {
        let broken = |streaming| move |status| Interrupted::Call { status, streaming };
        let mut stream = self
            .controller
            .client
            .watch_run(pb::WatchRunRequest {
                run_id: self.id.into(),
                after_seq: self.seen.floor(),
            })
            .await
            .map_err(broken(false))?
            .into_inner();
        // Only an open stream ends an outage: a controller that answers
        // `get` but never streams must not keep the budget from running out.
        reconnect.reached();
        while let Some(event) = stream.message().await.map_err(broken(true))? {
            // An event that does not read ends the follow with the reason:
            // skipping it could skip the one that says the run ended.
            let value: RunEvent = parse("event", &event.event_json)?;
            if event.seq == 0 {
                self.progress.progress(&value, Instant::now());
                continue;
            }
            if !self.seen.first_time(event.seq) {
                continue;
            }
            self.ended = matches!(value.what, EventKind::RunFinished | EventKind::Paused);
            self.progress.event(&value);
            let table = self.output == ListFormat::Table;
            self.progress.above(|| {
                if table {
                    let line = fleet_core::text::printable(&event_line(&value));
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_replayed_after_a_reconnect_are_shown_once_and_none_is_skipped() {
        let mut seen = Seen::after(2);
        assert!(!seen.first_time(1) && !seen.first_time(2), "before --after");
        // 4 arrives before 3 (two hosts): the floor waits for 3.
        assert!(seen.first_time(4));
        assert_eq!(seen.floor(), 2);
        assert!(seen.first_time(3));
        assert_eq!(seen.floor(), 4);
        assert!(seen.first_time(6));
        // The stream breaks; the replay from the floor repeats 6.
        assert_eq!(seen.floor(), 4);
        let shown: Vec<u64> = [5, 6, 7]
            .into_iter()
            .filter(|&s| seen.first_time(s))
            .collect();
        assert_eq!(shown, [5, 7]);
        assert_eq!(seen.floor(), 7);
    }

    #[test]
    fn reconnecting_backs_off_to_a_cap_within_the_budget_and_never_retries_a_refusal() {
        let t0 = Instant::now();
        let down = || CliError::error("nothing is listening at the controller x");
        let mut r = Reconnect::new(Duration::from_secs(20));
        let first = r.failed(down(), true, t0).unwrap();
        assert_eq!(first.pause, FIRST_PAUSE);
        let line = first.announce.unwrap();
        assert!(
            line.starts_with("controller unreachable (nothing is listening")
                && line.contains("reconnecting for up to 20 s"),
            "{line}"
        );
        let mut pauses = Vec::new();
        for s in 1..6 {
            let retry = r.failed(down(), true, t0 + Duration::from_secs(s)).unwrap();
            assert_eq!(retry.announce, None, "one line per outage");
            pauses.push(retry.pause.as_millis());
        }
        assert_eq!(pauses, [500, 1000, 2000, 4000, 5000]);
        // The last pause ends with the budget.
        assert_eq!(
            r.failed(down(), true, t0 + Duration::from_secs(18))
                .unwrap()
                .pause,
            Duration::from_secs(2)
        );
        let gave_up = r
            .failed(down(), true, t0 + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(gave_up.code, crate::exit::ERROR);
        assert!(gave_up.message.contains("gave up reconnecting after 20 s"));
        // Back: the next outage is announced again with the whole budget.
        r.reached();
        let again = r
            .failed(down(), true, t0 + Duration::from_secs(60))
            .unwrap();
        assert!(again.announce.is_some());
        assert_eq!(again.pause, FIRST_PAUSE);
        // A refusal ends at once, with its own exit code.
        let refused = r
            .failed(
                CliError::usage("no run 'x'"),
                false,
                t0 + Duration::from_secs(61),
            )
            .unwrap_err();
        assert_eq!(refused.code, crate::exit::USAGE);
        // A zero budget never waits.
        let mut never = Reconnect::new(Duration::ZERO);
        assert!(never.failed(down(), true, t0).is_err());
    }
}
