//! The command line, as clap sees it. Also the source of the man pages and
//! shell completions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use fleet_core::run::OnFailure;

#[derive(Debug, Parser)]
#[command(
    name = "fleetctl",
    version,
    about = "Operate fleet: audit which containers run as root, and move them off root",
    after_help = "Exit codes: 0 ok (a run: every container migrated); 1 error; 2 usage error (bad flag, unknown host or run, selector matching nothing, invalid policy); 3 --fail-on gate tripped; 4 --fail-on given but some host could not be audited; 5 a run finished with failed hosts rolled back (or on-failure=rollback-run undid it); 6 a run halted (failure budget exceeded, on-failure=halt) or was aborted; 7 a run is paused (after the canary, or asked)."
)]
pub struct Cli {
    #[command(flatten)]
    pub connect: ConnectFlags,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the controller: flags > FLEETCTL_* env > config file.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectFlags {
    /// The controller's address, host:port.
    #[arg(long, global = true, env = "FLEETCTL_CONTROLLER")]
    pub controller: Option<String>,
    /// The fleet CA certificate (PEM).
    #[arg(long, global = true, env = "FLEETCTL_CA")]
    pub ca: Option<PathBuf>,
    /// Your certificate (PEM, role operator or viewer).
    #[arg(long, global = true, env = "FLEETCTL_CERT")]
    pub cert: Option<PathBuf>,
    /// Your private key (PEM).
    #[arg(long, global = true, env = "FLEETCTL_KEY")]
    pub key: Option<PathBuf>,
    /// Config file [default: ~/.config/fleetctl/config.toml].
    #[arg(long, global = true, env = "FLEETCTL_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the fleet CA and issue certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The inventory of hosts (agents) the controller knows.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Which containers, on which hosts, really run as root.
    Audit(AuditArgs),
    /// Show the name and role the controller sees in your certificate.
    Whoami,
    /// Policy → plan: what each container becomes, in what order (changes nothing).
    Plan(PlanArgs),
    /// Start a migration run and follow it to its end.
    Migrate(MigrateArgs),
    /// List, show, watch, pause, resume or abort runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Roll back what a finished run did, from its retained checkpoints.
    Rollback(RollbackArgs),
    /// Release a finished run's checkpoints (old containers, backups).
    Prune {
        run: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// The append-only audit log: who did what, when, with what result.
    Log {
        /// The newest N entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (to DIR, or the main page to stdout).
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a new fleet CA (ca.pem, ca.key with mode 0600).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate signed by the fleet CA.
    Issue {
        /// The directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The certificate's common name (the name shown in the audit log).
        #[arg(long)]
        name: String,
        /// Extra DNS name or IP address the certificate is valid for (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Where to write NAME.pem and NAME.key [default: --dir].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite an existing certificate of that name.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Controller,
    Agent,
    Operator,
    Viewer,
}

impl From<RoleArg> for fleet_core::role::Role {
    fn from(r: RoleArg) -> Self {
        use fleet_core::role::Role;
        match r {
            RoleArg::Controller => Role::Controller,
            RoleArg::Agent => Role::Agent,
            RoleArg::Operator => Role::Operator,
            RoleArg::Viewer => Role::Viewer,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// List the hosts.
    List {
        /// Only hosts whose label key=value (repeatable; all must match).
        #[arg(long = "selector", short = 'l')]
        selectors: Vec<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// Add a host: its name and its agent's address.
    Add {
        name: String,
        /// host:port of the agent.
        address: String,
        /// A label key=value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Replace an existing host of that name.
        #[arg(long)]
        replace: bool,
    },
    /// Remove a host from the inventory.
    Remove { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    Table,
    Wide,
    Json,
    Csv,
    Markdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    /// Any container whose verdict is root.
    Root,
    /// Any finding of high or critical severity.
    High,
    /// Any finding at all.
    Any,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this host (repeatable).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Only hosts whose label key=value (repeatable; all must match).
    #[arg(long = "selector", short = 'l')]
    pub selectors: Vec<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = AuditFormat::Table)]
    pub output: AuditFormat,
    /// Exit 3 when the fleet has what is named (a CI/compliance gate);
    /// exit 4 when some host could not be audited.
    #[arg(long, value_enum)]
    pub fail_on: Option<FailOn>,
    /// Per-host deadline in seconds [default: the controller's].
    #[arg(long)]
    pub timeout: Option<u32>,
    /// Do not walk mount sources for their ownership summary.
    #[arg(long)]
    pub skip_ownership: bool,
}

/// What a plan or a run is about.
#[derive(Debug, Clone, Args)]
pub struct ScopeArgs {
    /// Only this host (repeatable).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Only hosts whose label key=value (repeatable; all must match).
    #[arg(long = "selector", short = 'l')]
    pub selectors: Vec<String>,
    /// Only containers whose name matches this glob (repeatable).
    #[arg(long = "container")]
    pub containers: Vec<String>,
    /// The migration policy (TOML) [default: image user, else dedicated].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Plan pod members too (refused otherwise: pods move as a whole).
    #[arg(long)]
    pub include_pods: bool,
    /// Where containers go when their policy rule names no `target`: in
    /// place (`User` set on the same engine) or under their own account's
    /// rootless Podman.
    #[arg(long, value_enum, default_value_t = TargetArg::InPlace)]
    pub target: TargetArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetArg {
    InPlace,
    Rootless,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
    /// Save the plan (JSON) for `fleetctl migrate --plan FILE`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `--on-failure`: the run model's own choices, with their help.
fn on_failure_parser() -> impl clap::builder::TypedValueParser<Value = OnFailure> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(
        OnFailure::ALL.map(|(_, name, help)| PossibleValue::new(name).help(help)),
    )
    .try_map(|text| {
        OnFailure::parse(&text)
            .ok_or_else(|| std::io::Error::other(format!("'{text}' is not a choice")))
    })
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Apply a saved plan: made again from its own policy and today's audit,
    /// refused if stale or edited; alone (no --host, --selector,
    /// --container, --include-pods; --policy only if it is the plan's own).
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Hosts in the first wave.
    #[arg(long, default_value_t = 1)]
    pub canary: u32,
    /// Wave sizes after the canary, e.g. 1,5,20% (the last repeats)
    /// [default: everything else in one wave].
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<String>,
    /// Hosts migrated at once.
    #[arg(long, default_value_t = 4)]
    pub max_parallel: u32,
    /// Failed hosts allowed (N or P%); one more halts the run.
    #[arg(long, default_value = "0")]
    pub max_failures: String,
    #[arg(long, value_parser = on_failure_parser(), default_value = "rollback-host")]
    pub on_failure: OnFailure,
    /// Pause after the canary wave until `fleetctl runs resume RUN`.
    #[arg(long)]
    pub pause_after_canary: bool,
    /// Seconds an agent may stay unreachable mid-step before the step fails
    /// [default: the controller's].
    #[arg(long)]
    pub agent_deadline: Option<u32>,
    /// Show the run that would start (waves, order), change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Start the run and return its id; follow it with `fleetctl runs watch`.
    #[arg(long)]
    pub detach: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
    #[command(flatten)]
    pub follow: FollowFlags,
}

/// How long following a run rides out a controller that went away.
#[derive(Debug, Clone, Copy, Args)]
pub struct FollowFlags {
    /// Seconds to keep reconnecting to a controller that is unreachable or
    /// restarting, per outage (0: do not) — the run itself goes on either way.
    #[arg(
        long,
        value_name = "SECS",
        env = "FLEETCTL_RECONNECT_FOR",
        default_value_t = 300
    )]
    pub reconnect_for: u64,
}

impl FollowFlags {
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.reconnect_for)
    }
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// The newest runs.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// One run: hosts, containers, steps.
    Show {
        run: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// Follow a run from where it is (or from its start) to its end.
    Watch {
        run: String,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
        #[command(flatten)]
        follow: FollowFlags,
    },
    /// Stop starting new containers at the next boundary.
    Pause { run: String },
    /// Continue a paused run.
    Resume { run: String },
    /// Stop the run at the next container boundary (migrated containers stay;
    /// roll them back with `fleetctl rollback RUN`).
    Abort { run: String },
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    pub run: String,
    /// Only this host (repeatable).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Only containers whose name matches this glob (repeatable).
    #[arg(long = "container")]
    pub containers: Vec<String>,
    /// Hosts rolled back at once [default: the run's].
    #[arg(long, default_value_t = 0)]
    pub max_parallel: u32,
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[arg(long)]
    pub detach: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
    #[command(flatten)]
    pub follow: FollowFlags,
}
