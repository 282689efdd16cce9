//! fleet binaries as separate processes, for the tests that must kill one
//! with `kill -9` (or let an armed fault point abort it) and start it again
//! on the same state. `scripts/test.sh` builds the binaries first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleet_core::tls::TlsFiles;

/// `target/<profile>/NAME`, next to the test executable's `deps/`.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (`cargo build --workspace --bins`; scripts/test.sh does)",
        path.display()
    );
    path
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A fleet binary running as a child process; killed (SIGKILL) on drop.
pub struct Process {
    pub child: Child,
    pub address: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fleet-controller process; killed (SIGKILL) on drop.
pub type ControllerProcess = Process;

/// A fleet-agent process; killed (SIGKILL) on drop.
pub type AgentProcess = Process;

/// Adds `--ca`, `--cert` and `--key`, which every fleet binary takes.
pub fn tls_args<'c>(command: &'c mut Command, tls: &TlsFiles) -> &'c mut Command {
    command
        .arg("--ca")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key)
}

/// `fleetctl --controller ADDRESS` with `tls`, as a process of its own.
pub fn fleetctl_command(address: &str, tls: &TlsFiles) -> Command {
    let mut command = Command::new(workspace_binary("fleetctl"));
    tls_args(command.args(["--controller", address]), tls);
    command
}

/// Adds what both servers take: `--listen address`, the TLS files,
/// `--state-dir state_dir`, and FLEET_FAULT armed with `fault` or cleared.
pub fn server_args<'c>(
    command: &'c mut Command,
    tls: &TlsFiles,
    address: &str,
    state_dir: &Path,
    fault: Option<&str>,
) -> &'c mut Command {
    tls_args(command.arg("--listen").arg(address), tls)
        .arg("--state-dir")
        .arg(state_dir)
        .env_remove(fleet_core::fault::FAULT_ENV);
    if let Some(fault) = fault {
        command.env(fleet_core::fault::FAULT_ENV, fault);
    }
    command
}

/// Spawns `command` (logging warnings to this stderr) and waits until it
/// listens at `address`.
fn launch(command: &mut Command, address: String) -> Process {
    let child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", command.get_program()));
    wait_listening(&address);
    Process { child, address }
}

/// Starts `fleet-controller` on `port` with `state_dir` and the hosts in
/// `hosts` (name, agent address); `fault` arms FLEET_FAULT (a test aid).
pub fn spawn_controller(
    tls: &TlsFiles,
    state_dir: &Path,
    port: u16,
    hosts: &[(&str, &str)],
    fault: Option<&str>,
) -> ControllerProcess {
    let mut config = String::from("agent_deadline_secs = 30\nreconcile_grace_secs = 5\n");
    for (name, address) in hosts {
        config.push_str(&format!(
            "[[hosts]]\nname = \"{name}\"\naddress = \"{address}\"\n"
        ));
    }
    let config_path = state_dir.join("controller.toml");
    std::fs::create_dir_all(state_dir).expect("state dir");
    std::fs::write(&config_path, config).expect("config");
    let address = format!("127.0.0.1:{port}");
    let mut command = Command::new(workspace_binary("fleet-controller"));
    command.arg("--config").arg(&config_path);
    server_args(&mut command, tls, &address, &state_dir.join("store"), fault);
    launch(&mut command, address)
}

/// Waits until something accepts connections at `address`.
pub fn wait_listening(address: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(address).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens at {address} after 10 s");
}

/// Waits for the process to end by itself; returns whether a signal
/// (the fault point's abort) ended it.
pub fn wait_died(child: &mut Child, timeout: Duration) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.signal();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

/// Starts `fleet-agent` on `port` with `state_dir`, answering only for
/// containers labelled `scope` (key=value); `fault` arms FLEET_FAULT.
pub fn spawn_agent(
    tls: &TlsFiles,
    state_dir: &Path,
    port: u16,
    scope: &str,
    fault: Option<&str>,
) -> AgentProcess {
    std::fs::create_dir_all(state_dir).expect("state dir");
    let config_path = state_dir.join("agent.toml");
    // Restarts of this agent share its record of allocated ids, as a host's
    // agents do; it stays out of /etc so test runs never use the range up.
    let ids = state_dir.join("allocated-ids");
    std::fs::write(
        &config_path,
        format!(
            "scope_label = \"{scope}\"\nuser_id_record = \"{}\"\n# crun fails a resource-limit call on these machines (ROOTLESS.md §7)\nrootless_runtime = \"runc\"\n",
            ids.display()
        ),
    )
    .expect("config");
    let address = format!("127.0.0.1:{port}");
    let mut command = Command::new(workspace_binary("fleet-agent"));
    command.arg("serve").arg("--config").arg(&config_path);
    server_args(&mut command, tls, &address, &state_dir.join("state"), fault)
        .arg("--engine-socket")
        .arg(crate::engine::engine_socket());
    launch(&mut command, address)
}
