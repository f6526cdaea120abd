//! DHCP on a managed bridge: one dnsmasq per bridge (DNS off) that hands out
//! only the fixed addresses lxgate assigned, a `static` range plus one
//! `--dhcp-host` per NIC, so a VM's guest (or any DHCP client) gets the
//! address its NIC's `ipv4.address` names. There is no lease database
//! (`--leasefile-ro`): the reservations in lxgate's database are the truth.
//! When they change, dnsmasq is started again with the new list (a few
//! milliseconds without DHCP; clients retry). It keeps running across
//! lxgate restarts and is found again by its pidfile, like a VM's QEMU.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;

use super::process::run;
use crate::backend::BackendError;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One NIC's fixed address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reservation {
    pub hwaddr: String,
    pub address: Ipv4Addr,
    pub hostname: String,
}

pub fn available() -> bool {
    super::process::on_path("dnsmasq")
}

/// dnsmasq's arguments: every value is lxgate's own path or was validated
/// (bridge and instance names, MACs, addresses).
pub fn args(dir: &Path, bridge: &str, subnet: Ipv4Net, hosts: &[Reservation]) -> Vec<String> {
    let mut a = vec![
        "--conf-file=/dev/null".to_owned(),
        "--port=0".to_owned(),
        "--strict-order".to_owned(),
        "--bind-interfaces".to_owned(),
        format!("--interface={bridge}"),
        "--except-interface=lo".to_owned(),
        format!("--listen-address={}", subnet.addr()),
        format!(
            "--dhcp-range={},static,{},1h",
            subnet.network(),
            subnet.netmask()
        ),
        "--dhcp-authoritative".to_owned(),
        "--leasefile-ro".to_owned(),
        format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        format!("--log-facility={}", dir.join("dnsmasq.log").display()),
    ];
    for h in hosts {
        a.push(format!(
            "--dhcp-host={},{},{}",
            h.hwaddr, h.address, h.hostname
        ));
    }
    a
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> BackendError {
    move |e| BackendError::Internal(anyhow::anyhow!("{what}: {e}"))
}

/// The running dnsmasq of this directory: the pidfile's pid, checked
/// against /proc so a recycled pid is never taken for it.
async fn pid(dir: &Path) -> Option<i32> {
    let pid: i32 = tokio::fs::read_to_string(dir.join("dnsmasq.pid"))
        .await
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = tokio::fs::read_to_string(format!("/proc/{pid}/comm"))
        .await
        .ok()?;
    (comm.trim() == "dnsmasq").then_some(pid)
}

fn args_file(dir: &Path) -> PathBuf {
    dir.join("dnsmasq.args")
}

/// Runs dnsmasq with exactly `args` (started again if it runs with others,
/// started if it does not run).
pub async fn ensure(dir: &Path, args: Vec<String>) -> Result<(), BackendError> {
    let wanted = args.join("\n");
    if pid(dir).await.is_some()
        && tokio::fs::read_to_string(args_file(dir)).await.ok() == Some(wanted.clone())
    {
        return Ok(());
    }
    stop(dir).await;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io("making the network's directory"))?;
    // One log per run, so it never grows without bound.
    let _ = tokio::fs::remove_file(dir.join("dnsmasq.log")).await;
    run("dnsmasq", &args, TIMEOUT).await?;
    tokio::fs::write(args_file(dir), wanted)
        .await
        .map_err(io("recording dnsmasq's arguments"))
}

/// Stops this directory's dnsmasq, if one runs.
pub async fn stop(dir: &Path) {
    let Some(pid) = pid(dir).await else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions; the pid was checked
    // to be a dnsmasq just now.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..50 {
        if pid_alive(pid).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            break;
        }
    }
    let _ = tokio::fs::remove_file(dir.join("dnsmasq.pid")).await;
    let _ = tokio::fs::remove_file(args_file(dir)).await;
}

async fn pid_alive(pid: i32) -> bool {
    // A zombie still has /proc/<pid>; its state letter says so.
    tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
        .await
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reserved_addresses_are_served() {
        let a = args(
            Path::new("/d/networks/br0"),
            "br0",
            "10.5.0.1/24".parse().unwrap(),
            &[Reservation {
                hwaddr: "10:66:6a:00:00:02".into(),
                address: "10.5.0.2".parse().unwrap(),
                hostname: "c1".into(),
            }],
        );
        let joined = a.join(" ");
        for want in [
            "--port=0",
            "--interface=br0",
            "--listen-address=10.5.0.1",
            "--dhcp-range=10.5.0.0,static,255.255.255.0,1h",
            "--leasefile-ro",
            "--pid-file=/d/networks/br0/dnsmasq.pid",
            "--dhcp-host=10:66:6a:00:00:02,10.5.0.2,c1",
        ] {
            assert!(joined.contains(want), "{want} in {joined}");
        }
    }
}
