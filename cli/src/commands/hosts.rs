//! `fleetctl hosts list|add|remove` and `fleetctl whoami`.

use std::io::Write;

use fleet_proto::controller::v1 as pb;

use crate::args::{HostsCommand, ListFormat};
use crate::client::Controller;
use crate::commands::run_render::print_json;
use crate::exit::CliError;
use crate::render::Table;

pub async fn run(
    controller: &mut Controller,
    command: HostsCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        HostsCommand::List { selectors, output } => {
            let hosts = controller
                .client
                .list_hosts(pb::ListHostsRequest { selectors })
                .await
                .map_err(|s| controller.explain(s))?
                .into_inner()
                .hosts;
            match output {
                ListFormat::Json => {
                    let hosts: Vec<HostEntry<'_>> = hosts
                        .iter()
                        .map(|h| HostEntry {
                            name: &h.name,
                            address: &h.address,
                            labels: h
                                .labels
                                .iter()
                                .map(|(k, v)| (k.as_str(), v.as_str()))
                                .collect(),
                            source: &h.source,
                        })
                        .collect();
                    print_json(&hosts, out);
                }
                ListFormat::Table => {
                    let mut table = Table::new(&["NAME", "ADDRESS", "LABELS", "SOURCE"]);
                    let mut hosts = hosts;
                    hosts.sort_by(|a, b| a.name.cmp(&b.name));
                    for h in hosts {
                        let mut labels: Vec<String> =
                            h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        labels.sort();
                        table.row(vec![h.name, h.address, labels.join(","), h.source]);
                    }
                    if table.is_empty() {
                        let _ = writeln!(
                            out,
                            "no hosts; add one with `fleetctl hosts add NAME ADDRESS`"
                        );
                    } else {
                        let _ = table.write_text(out);
                    }
                }
            }
        }
        HostsCommand::Add {
            name,
            address,
            labels,
            replace,
        } => {
            let mut parsed = std::collections::HashMap::new();
            for label in labels {
                let (k, v) = label
                    .split_once('=')
                    .ok_or_else(|| CliError::usage(format!("label '{label}' is not key=value")))?;
                parsed.insert(k.to_string(), v.to_string());
            }
            let host = controller
                .client
                .add_host(pb::AddHostRequest {
                    host: Some(pb::Host {
                        name,
                        address,
                        labels: parsed,
                        source: String::new(),
                    }),
                    replace,
                })
                .await
                .map_err(|s| controller.explain(s))?
                .into_inner();
            let _ = writeln!(out, "added host {} ({})", host.name, host.address);
        }
        HostsCommand::Remove { name } => {
            controller
                .client
                .remove_host(pb::RemoveHostRequest { name: name.clone() })
                .await
                .map_err(|s| controller.explain(s))?;
            let _ = writeln!(out, "removed host {name}");
        }
    }
    Ok(())
}

pub async fn whoami(controller: &mut Controller, out: &mut dyn Write) -> Result<(), CliError> {
    let me = controller
        .client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(|s| controller.explain(s))?
        .into_inner();
    let _ = writeln!(out, "{} ({}) at {}", me.name, me.role, controller.address);
    Ok(())
}

/// One host as `fleetctl hosts list -o json` prints it.
#[derive(serde::Serialize)]
struct HostEntry<'a> {
    name: &'a str,
    address: &'a str,
    labels: std::collections::BTreeMap<&'a str, &'a str>,
    source: &'a str,
}
