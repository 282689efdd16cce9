//! fleetctl, driven in-process exactly as its `main` drives it.

use clap::Parser;
use fleet_core::tls::TlsFiles;

#[derive(Debug)]
pub struct CliOutput {
    pub code: u8,
    pub stdout: String,
    /// The one-line error fleetctl would print on stderr.
    pub error: Option<String>,
}

impl CliOutput {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("fleetctl output is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `fleetctl --controller ADDR --ca .. --cert .. --key .. ARGS`.
pub async fn fleetctl(controller: &str, tls: &TlsFiles, args: &[&str]) -> CliOutput {
    let mut argv: Vec<String> = vec![
        "fleetctl".into(),
        "--controller".into(),
        controller.into(),
        "--ca".into(),
        tls.ca.display().to_string(),
        "--cert".into(),
        tls.cert.display().to_string(),
        "--key".into(),
        tls.key.display().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    run_argv(&argv).await
}

/// Starts a run with `fleetctl migrate ARGS --yes --detach -o json` and
/// returns its id; panics if it does not start.
pub async fn start_detached(controller: &str, tls: &TlsFiles, args: &[&str]) -> String {
    let mut argv = args.to_vec();
    argv.extend(["--yes", "--detach", "-o", "json"]);
    let started = fleetctl(controller, tls, &argv).await;
    assert_eq!(started.code, 0, "the run did not start: {started:?}");
    started.json()["run"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run id in {}", started.stdout))
        .to_string()
}

pub async fn run_argv(argv: &[String]) -> CliOutput {
    let cli = match fleetctl::args::Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            return CliOutput {
                code: fleetctl::exit::USAGE,
                stdout: String::new(),
                error: Some(e.to_string()),
            };
        }
    };
    let mut out = Vec::new();
    let result = fleetctl::run(cli, &mut out).await;
    let stdout = String::from_utf8_lossy(&out).into_owned();
    match result {
        Ok(code) => CliOutput {
            code,
            stdout,
            error: None,
        },
        Err(e) => CliOutput {
            code: e.code,
            stdout,
            error: Some(e.message),
        },
    }
}
