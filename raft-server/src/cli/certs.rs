//! `raft-server certs`: a CA and certificates for nodes, clients and admins.

use super::error::CliError;
use clap::Args;
use raft_net_quic::CertRole;
use raft_server::dev::{ValidityDays, describe, make_certs_valid};
use std::path::PathBuf;

// No doc comment: the subcommand's help is the `Certs` variant's.
#[derive(Args)]
pub(crate) struct CertsArgs {
    /// Where to write them.
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// Node ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<u64>,
    /// Client names, e.g. app,web: certificates with the client role (keys only).
    #[arg(long, value_delimiter = ',')]
    clients: Vec<String>,
    /// Administrator names, e.g. ops: client certificates with the admin role
    /// (keys and cluster administration).
    #[arg(long, value_delimiter = ',')]
    admins: Vec<String>,
    /// Days the node, client and admin certificates are valid.
    #[arg(long, default_value_t = raft_net_quic::tls::NODE_VALIDITY_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
    days: u32,
    /// Days a new CA is valid (an existing CA in --out is kept as it is).
    #[arg(long, default_value_t = raft_net_quic::tls::CA_VALIDITY_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
    ca_days: u32,
}

pub(crate) fn certs(args: CertsArgs) -> Result<(), CliError> {
    let CertsArgs {
        out,
        nodes,
        clients,
        admins,
        days,
        ca_days,
    } = args;
    let clients: Vec<(String, CertRole)> = clients
        .into_iter()
        .map(|c| (c, CertRole::Client))
        .chain(admins.into_iter().map(|a| (a, CertRole::Admin)))
        .collect();
    let validity = ValidityDays { days, ca_days };
    let files = make_certs_valid(&out, &nodes, &clients, validity)?;
    for f in files {
        match describe(&f) {
            // The fingerprint is what a deny-list names to revoke it.
            Some(info) => println!(
                "wrote {} ({}, role {}, expires in {} days, sha256 {})",
                f.display(),
                info.principal,
                info.role,
                (info.not_after - raft_server::certificates::unix_now()).div_euclid(86_400),
                info.fingerprint()
            ),
            None => println!("wrote {}", f.display()),
        }
    }
    Ok(())
}
