//! The command line, as clap sees it. Also the source of the man pages and
//! shell completions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "fleetctl",
    version,
    about = "Operate fleet: audit which containers run as root, and move them off root",
    after_help = "Exit codes: 0 ok; 1 error; 2 usage error (bad flag, unknown host, selector matching nothing); 3 --fail-on gate tripped; 4 --fail-on given but some host could not be audited."
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
