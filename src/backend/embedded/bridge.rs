//! Linux bridges behind managed networks, driven through `ip` (iproute2,
//! arguments as arguments), and the address plan NICs are given addresses
//! from: lxgate assigns each NIC a fixed IPv4 address of the bridge's subnet
//! itself, kept in the instance's device (a lease is that assignment; DHCP,
//! in dhcp.rs, only hands these out).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::process::run;
use crate::backend::BackendError;
use crate::backend::types::ConfigMap;

const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest Linux interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// What a bridge network's config asks of the host, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The bridge's own address and prefix (also the NICs' gateway).
    pub ipv4: Option<Ipv4Net>,
    pub ipv6: Option<Ipv6Net>,
    pub mtu: Option<u32>,
    /// `ipv4.dhcp` as given (unset: on where dnsmasq is installed).
    pub dhcp: Option<bool>,
}

fn bad(msg: impl Into<String>) -> BackendError {
    BackendError::BadRequest(msg.into())
}

/// Checks a bridge network's config (`ipv4.address` must already be
/// resolved from `auto`). Keys lxgate cannot honour here are refused with
/// the reason rather than ignored.
pub fn plan(config: &ConfigMap) -> Result<Plan, BackendError> {
    let mut plan = Plan::default();
    for (k, v) in config {
        match k.as_str() {
            "ipv4.address" if v == "none" => {}
            "ipv4.address" => {
                let net: Ipv4Net = v.parse().map_err(|_| {
                    bad(format!(
                        "ipv4.address must be an address with its prefix (e.g. 10.0.3.1/24), `auto` or `none`, not {v:?}"
                    ))
                })?;
                if !(8..=30).contains(&net.prefix_len()) {
                    return Err(bad("ipv4.address: the prefix must be between /8 and /30"));
                }
                let a = net.addr();
                if a.is_loopback()
                    || a.is_multicast()
                    || a.is_unspecified()
                    || a.is_link_local()
                    || a.is_broadcast()
                {
                    return Err(bad(format!(
                        "ipv4.address: {a} is a loopback, link-local, multicast or reserved address; use a private one such as 10.0.3.1/24"
                    )));
                }
                if net.addr() == net.network() || net.addr() == net.broadcast() {
                    return Err(bad(format!(
                        "ipv4.address: {} is the subnet's network or broadcast address; give the bridge's own address (e.g. {}/{})",
                        net.addr(),
                        net.hosts().next().unwrap_or(net.addr()),
                        net.prefix_len()
                    )));
                }
                plan.ipv4 = Some(net);
            }
            "ipv6.address" if v == "none" => {}
            "ipv6.address" => {
                let net: Ipv6Net = v.parse().map_err(|_| {
                    bad(format!(
                        "ipv6.address must be an address with its prefix (e.g. fd42:1::1/64) or `none`, not {v:?}"
                    ))
                })?;
                if !(8..=126).contains(&net.prefix_len()) || net.addr() == net.network() {
                    return Err(bad(
                        "ipv6.address: give the bridge's own address with a prefix between /8 and /126",
                    ));
                }
                let a = net.addr();
                if a.is_loopback()
                    || a.is_multicast()
                    || a.is_unspecified()
                    || a.is_unicast_link_local()
                {
                    return Err(bad(format!(
                        "ipv6.address: {a} is a loopback, link-local or multicast address; use a ULA such as fd42:1::1/64"
                    )));
                }
                plan.ipv6 = Some(net);
            }
            "bridge.mtu" => {
                plan.mtu = Some(
                    v.parse()
                        .ok()
                        .filter(|m| (1280..=9000).contains(m))
                        .ok_or_else(|| bad("bridge.mtu must be a number from 1280 to 9000"))?,
                );
            }
            "ipv4.dhcp" => {
                plan.dhcp = Some(match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("ipv4.dhcp must be true or false")),
                });
            }
            "ipv4.nat" | "ipv6.nat" | "ipv6.dhcp" if v == "false" => {}
            "ipv4.nat" | "ipv6.nat" => {
                return Err(BackendError::NotSupported(format!(
                    "{k}: the embedded backend does not masquerade bridge traffic (it would change the host's firewall and forwarding); route the subnet instead"
                )));
            }
            "ipv6.dhcp" => {
                return Err(BackendError::NotSupported(
                    "ipv6.dhcp: embedded bridges serve IPv4 DHCP only".into(),
                ));
            }
            k if k.starts_with("user.") => {}
            _ => return Err(bad(format!("Invalid network configuration key: {k}"))),
        }
    }
    Ok(plan)
}

/// A free /24 in 10.0.0.0/8 for `ipv4.address=auto`: random, like Incus,
/// and overlapping none of `used` (the host's addresses and routes).
pub fn pick_subnet(used: &[IpNet]) -> Option<Ipv4Net> {
    let mut rng = rand::rng();
    (0..256).find_map(|_| {
        let (b, c) = (rng.random::<u8>(), rng.random::<u8>());
        let net = Ipv4Net::new(Ipv4Addr::new(10, b, c, 0), 24).ok()?;
        let clash = used.iter().any(|u| overlaps(u, &IpNet::V4(net)));
        (!clash).then(|| Ipv4Net::new(Ipv4Addr::new(10, b, c, 1), 24).ok())?
    })
}

/// The first address of the bridge's subnet that is neither the bridge's
/// nor in `taken`.
pub fn allocate(bridge: Ipv4Net, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    bridge
        .hosts()
        .find(|a| *a != bridge.addr() && !taken.contains(a))
}

/// A locally administered unicast MAC under Incus's 10:66:6a prefix.
pub fn random_hwaddr() -> String {
    let b: [u8; 3] = rand::rng().random();
    format!("10:66:6a:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

pub fn check_hwaddr(v: &str) -> Result<(), BackendError> {
    let parts: Vec<&str> = v.split(':').collect();
    let hex_ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    // The low bit of the first octet marks multicast: never a NIC's address.
    let unicast = hex_ok && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0);
    if unicast && v != "00:00:00:00:00:00" {
        Ok(())
    } else {
        Err(bad(format!(
            "hwaddr must be a unicast MAC address like 10:66:6a:01:02:03, not {v:?}"
        )))
    }
}

/// An interface name as the kernel takes it: 1-15 of letters, digits, `-`,
/// `_`, `.`, not `.` or `..`.
pub fn check_ifname(v: &str) -> Result<(), BackendError> {
    let ok = !v.is_empty()
        && v.len() <= IFNAME_MAX
        && v != "."
        && v != ".."
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "interface name {v:?}: 1-{IFNAME_MAX} letters, digits, '-', '_' or '.'"
        )))
    }
}

/// The host-side interface of an instance's NIC (a container's veth end or
/// a VM's tap): stable for the instance and device, and at most 15 bytes.
pub fn host_ifname(host: &str, device: &str) -> String {
    let h = Sha256::digest(format!("{host}/{device}"));
    format!("lxg{}", &hex::encode(h)[..12])
}

pub async fn exists(name: &str) -> bool {
    tokio::fs::try_exists(Path::new("/sys/class/net").join(name))
        .await
        .unwrap_or(false)
}

/// Whether two subnets share addresses.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Only root (CAP_NET_ADMIN) with iproute2 changes the host's interfaces.
pub fn can_manage() -> Result<(), BackendError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(BackendError::NotSupported(format!(
            "managing bridges needs root (CAP_NET_ADMIN); lxgate runs as uid {euid}"
        )));
    }
    if !super::process::on_path("ip") {
        return Err(BackendError::NotSupported(
            "managing bridges needs iproute2's `ip`, which is not installed".into(),
        ));
    }
    Ok(())
}

async fn ip<I, S>(args: I) -> Result<(), BackendError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run("ip", args, IP_TIMEOUT).await.map(|_| ())
}

/// Creates the bridge with its addresses and brings it up; on any failure
/// the half-made bridge is removed again.
pub async fn create(name: &str, plan: &Plan) -> Result<(), BackendError> {
    ip(["link", "add", "name", name, "type", "bridge"]).await?;
    if let Err(e) = configure(name, plan).await {
        let _ = delete(name).await;
        return Err(e);
    }
    Ok(())
}

/// Sets the bridge's MTU and addresses (replacing the ones it had) and
/// brings it up.
pub async fn configure(name: &str, plan: &Plan) -> Result<(), BackendError> {
    // Without bridge.mtu: the usual 1500 (also when the key was removed).
    let mtu = plan.mtu.unwrap_or(1500).to_string();
    ip(["link", "set", "dev", name, "mtu", &mtu]).await?;
    ip(["addr", "flush", "dev", name, "scope", "global"]).await?;
    if let Some(v4) = plan.ipv4 {
        ip(["-4", "addr", "add", &v4.to_string(), "dev", name]).await?;
    }
    if let Some(v6) = plan.ipv6 {
        // nodad: the address is usable at once (no duplicate-detection wait).
        ip(["-6", "addr", "add", &v6.to_string(), "dev", name, "nodad"]).await?;
    }
    ip(["link", "set", "dev", name, "up"]).await
}

pub async fn delete(name: &str) -> Result<(), BackendError> {
    if !exists(name).await {
        return Ok(());
    }
    ip(["link", "delete", "dev", name, "type", "bridge"]).await
}

/// Puts an interface (a VM's tap) into the bridge and brings it up.
pub async fn enslave(ifname: &str, bridge: &str) -> Result<(), BackendError> {
    ip(["link", "set", "dev", ifname, "master", bridge, "up"]).await
}

/// Runs `ip` inside the network namespace of process `pid` (the host's
/// `ip`: only the network namespace is entered).
async fn ip_in(pid: i64, args: &[&str]) -> Result<(), BackendError> {
    let netns = format!("--net=/proc/{pid}/ns/net");
    let mut all = vec![netns.as_str(), "--", "ip"];
    all.extend_from_slice(args);
    run("nsenter", all, IP_TIMEOUT).await.map(|_| ())
}

/// Hot-plugs a NIC into a running container (init `pid`): a veth pair, the
/// host end into the bridge, the other moved into the container, renamed,
/// given its MAC and address, and the default route if it has none yet. On
/// failure the pair is removed again (deleting one end deletes both).
pub async fn plug_veth(
    host_if: &str,
    bridge: &str,
    name: &str,
    hwaddr: &str,
    ipv4: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
    pid: i64,
) -> Result<(), BackendError> {
    // The same hash as the host end, so names never collide.
    let peer = format!("lxt{}", &host_if[3..]);
    ip([
        "link", "add", host_if, "type", "veth", "peer", "name", &peer,
    ])
    .await?;
    let plugged = async {
        ip(["link", "set", "dev", host_if, "master", bridge, "up"]).await?;
        ip(["link", "set", "dev", &peer, "netns", &pid.to_string()]).await?;
        ip_in(
            pid,
            &["link", "set", "dev", &peer, "name", name, "address", hwaddr],
        )
        .await?;
        if let Some(a) = ipv4 {
            ip_in(pid, &["addr", "add", &a.to_string(), "dev", name]).await?;
        }
        ip_in(pid, &["link", "set", "dev", name, "up"]).await?;
        if let Some(gw) = gateway {
            // Refused when the container has a default route already: kept.
            let _ = ip_in(pid, &["route", "add", "default", "via", &gw.to_string()]).await;
        }
        Ok(())
    }
    .await;
    if plugged.is_err() {
        let _ = unplug(host_if).await;
    }
    plugged
}

/// Removes a NIC's veth pair (or a tap) by its host end, if it exists.
pub async fn unplug(host_if: &str) -> Result<(), BackendError> {
    if !exists(host_if).await {
        return Ok(());
    }
    ip(["link", "delete", "dev", host_if]).await
}

/// The IPv4 networks the host already uses (its interfaces' subnets and its
/// routes), for picking a subnet that clashes with none.
pub async fn host_ipv4_nets() -> Vec<IpNet> {
    let mut out = Vec::new();
    let json = |args: &'static [&'static str]| async move {
        run("ip", args, IP_TIMEOUT)
            .await
            .ok()
            .and_then(|o| serde_json::from_str::<Value>(&o.stdout).ok())
    };
    if let Some(Value::Array(links)) = json(&["-j", "-4", "addr"]).await {
        for a in links
            .iter()
            .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
        {
            if let (Some(local), Some(p)) = (a["local"].as_str(), a["prefixlen"].as_u64())
                && let Ok(ip) = local.parse::<IpAddr>()
                && let Ok(net) = IpNet::new(ip, p as u8)
            {
                out.push(net.trunc());
            }
        }
    }
    if let Some(Value::Array(routes)) = json(&["-j", "-4", "route", "show", "table", "all"]).await {
        for r in &routes {
            if let Some(dst) = r["dst"].as_str()
                && dst != "default"
            {
                let net = dst
                    .parse::<IpNet>()
                    .or_else(|_| dst.parse::<IpAddr>().map(IpNet::from));
                if let Ok(net) = net {
                    out.push(net);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> ConfigMap {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn plans_are_checked() {
        let p = plan(&cfg(&[
            ("ipv4.address", "10.1.2.1/24"),
            ("ipv6.address", "fd42::1/64"),
            ("bridge.mtu", "1400"),
            ("ipv4.nat", "false"),
            ("user.team", "x"),
        ]))
        .unwrap();
        assert_eq!(p.ipv4.unwrap().to_string(), "10.1.2.1/24");
        assert_eq!(p.mtu, Some(1400));
        assert_eq!(
            plan(&cfg(&[("ipv4.address", "none")])).unwrap(),
            Plan::default()
        );
        for bad in [
            ("ipv4.address", "10.1.2.0/24"),
            ("ipv4.address", "10.1.2.255/24"),
            ("ipv4.address", "10.1.2.1"),
            ("ipv4.address", "10.1.2.300/24"),
            ("ipv4.address", "10.1.2.1/31"),
            ("ipv4.address", "127.0.0.1/8"),
            ("ipv4.address", "169.254.0.1/16"),
            ("ipv4.address", "224.0.0.1/24"),
            ("ipv6.address", "ff02::1/64"),
            ("ipv6.address", "::1/64"),
            ("ipv6.address", "fe80::1/64"),
            ("ipv6.address", "fd42::/64"),
            ("bridge.mtu", "70000"),
            ("dns.domain", "lxd"),
        ] {
            assert!(
                matches!(plan(&cfg(&[bad])), Err(BackendError::BadRequest(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            plan(&cfg(&[("ipv4.dhcp", "false")])).unwrap().dhcp,
            Some(false)
        );
        assert!(plan(&cfg(&[("ipv4.dhcp", "yes")])).is_err());
        for unsupported in [("ipv4.nat", "true"), ("ipv6.dhcp", "true")] {
            assert!(matches!(
                plan(&cfg(&[unsupported])),
                Err(BackendError::NotSupported(_))
            ));
        }
    }

    #[test]
    fn addresses_are_allocated_around_the_gateway() {
        let net: Ipv4Net = "10.9.0.1/29".parse().unwrap();
        let mut taken = BTreeSet::new();
        let mut got = Vec::new();
        while let Some(a) = allocate(net, &taken) {
            taken.insert(a);
            got.push(a.to_string());
        }
        // .0 is the network, .1 the bridge, .7 the broadcast.
        assert_eq!(
            got,
            ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
        );
    }

    #[test]
    fn auto_subnets_avoid_the_hosts_networks() {
        let used: Vec<IpNet> = vec!["10.0.0.0/9".parse().unwrap()];
        for _ in 0..50 {
            let n = pick_subnet(&used).unwrap();
            assert_eq!(n.prefix_len(), 24);
            assert_eq!(n.addr().octets()[3], 1);
            assert!(n.addr().octets()[1] >= 128, "{n}");
        }
        let all: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(pick_subnet(&all), None);
    }

    #[test]
    fn names_and_macs() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("a-very-long-name0").is_err());
        assert!(check_ifname("eth 0").is_err());
        assert!(check_ifname("..").is_err());
        let h = host_ifname("default_c1", "eth0");
        assert_eq!(h.len(), 15);
        assert_ne!(h, host_ifname("default_c1", "eth1"));
        assert!(check_hwaddr(&random_hwaddr()).is_ok());
        assert!(check_hwaddr("11:00:00:00:00:01").is_err(), "multicast");
        assert!(check_hwaddr("10:66:6a:00:00").is_err());
        assert!(check_hwaddr("10:66:6a:00:00:zz").is_err());
    }
}
