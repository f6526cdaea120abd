//! Networks on the embedded backend: managed bridges (a row each, the Linux
//! bridge made by `bridge.rs`), shared by every project as in an Incus
//! project without `features.networks`; the host's other interfaces are
//! listed read-only (unmanaged), from `/sys/class/net` and `ip -j addr`.
//!
//! NICs are `nic` devices of an instance naming a managed network. When one is
//! attached lxgate fixes its MAC (`hwaddr`) and IPv4 address (`ipv4.address`,
//! the first free one of the subnet) in the device itself, under one lock for
//! all networks, so two attaches never get the same address. A container's
//! NIC is a veth pair configured by LXC; a VM's is a tap QEMU opens, put into
//! the bridge before the guest runs.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::EmbeddedBackend;
use super::bridge::{self, Plan};
use super::dhcp;
use super::inventory::db;
use super::operations::{lifecycle, now, resource_url};
use super::process::run;
use crate::backend::types::{
    ConfigMap, DevicesMap, InstanceStateNetwork, Network, NetworkAddress, NetworkCounters,
    NetworkCreate, NetworkLease, NetworkState, NetworkStateBridge, NetworkStateCounters,
    NetworkUpdate,
};
use crate::backend::{BackendError, Listing, Missing, Networks, ReportMissing};
use crate::db::embedded::{self as inv, InstanceRow, NetworkRow};
use crate::names::{NetworkName, ProjectName};

const SYS_NET: &str = "/sys/class/net";

/// Keys a `nic` device may have on this backend.
const NIC_KEYS: [&str; 5] = ["type", "network", "name", "hwaddr", "ipv4.address"];

/// An instance's NIC as the drivers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub device: String,
    pub bridge: String,
    /// The interface name inside the instance.
    pub name: String,
    pub hwaddr: String,
    /// The host end: a container's veth peer or a VM's tap.
    pub host_if: String,
    /// The NIC's address with the subnet's prefix.
    pub ipv4: Option<Ipv4Net>,
    /// The bridge's address: the instance's default route.
    pub gateway: Option<Ipv4Addr>,
}

/// The network a `nic` device names, if it is one.
pub fn nic_network(d: &std::collections::BTreeMap<String, String>) -> Option<&str> {
    (d.get("type").map(String::as_str) == Some("nic"))
        .then(|| d.get("network").map_or("", String::as_str))
}

async fn read(path: impl AsRef<Path>) -> String {
    tokio::fs::read_to_string(path)
        .await
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

async fn kind_of(dir: &Path) -> &'static str {
    if read(dir.join("type")).await == "772" {
        "loopback"
    } else if tokio::fs::try_exists(dir.join("bridge"))
        .await
        .unwrap_or(false)
    {
        "bridge"
    } else if tokio::fs::try_exists(dir.join("device"))
        .await
        .unwrap_or(false)
    {
        "physical"
    } else {
        "unknown"
    }
}

async fn interface(name: &str) -> Result<Network, BackendError> {
    let dir = Path::new(SYS_NET).join(name);
    if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
        return Err(BackendError::NotFound(Missing::network(name)));
    }
    Ok(Network {
        name: name.to_owned(),
        network_type: kind_of(&dir).await.to_owned(),
        managed: false,
        locations: vec![super::host::member_name().into()],
        project: "default".into(),
        ..Default::default()
    })
}

/// The version of what a PUT/PATCH changes: description and config.
fn network_etag(description: &str, config: &ConfigMap) -> String {
    hex::encode(Sha256::digest(json!([description, config]).to_string()))
}

/// Whether the instance has a NIC on `network`.
fn uses(r: &InstanceRow, network: &str) -> bool {
    let devices: DevicesMap = serde_json::from_str(&r.devices).unwrap_or_default();
    devices.values().any(|d| nic_network(d) == Some(network))
}

fn config_of(row: &NetworkRow) -> ConfigMap {
    serde_json::from_str(&row.config).unwrap_or_default()
}

/// A random ULA /64 (RFC 4193) for `ipv6.address=auto`: the bridge is ::1.
fn random_ula() -> Ipv6Net {
    let r: [u8; 5] = rand::rng().random();
    let addr = std::net::Ipv6Addr::new(
        0xfd00 | u16::from(r[0]),
        u16::from_be_bytes([r[1], r[2]]),
        u16::from_be_bytes([r[3], r[4]]),
        0,
        0,
        0,
        0,
        1,
    );
    Ipv6Net::new(addr, 64).expect("a /64")
}

impl EmbeddedBackend {
    async fn network_row(&self, name: &str) -> Result<NetworkRow, BackendError> {
        inv::get_network(&self.pool, name)
            .await
            .map_err(db)?
            .ok_or_else(|| BackendError::NotFound(Missing::network(name)))
    }

    /// Instances (of every project) with a NIC on `network`.
    async fn instances_on(&self, network: &str) -> Result<Vec<InstanceRow>, BackendError> {
        Ok(inv::list_instances(&self.pool, None)
            .await
            .map_err(db)?
            .into_iter()
            .filter(|r| uses(r, network))
            .collect())
    }

    /// `instances`: the asking project's, read once per call; `used_by`
    /// shows those only (other projects' names are not its business).
    async fn to_network(row: &NetworkRow, instances: &[InstanceRow]) -> Network {
        let used_by = instances
            .iter()
            .filter(|r| uses(r, &row.name))
            .map(|r| resource_url(&r.project, &format!("instances/{}", r.name)))
            .collect();
        Network {
            name: row.name.clone(),
            description: row.description.clone(),
            network_type: row.network_type.clone(),
            managed: true,
            // A bridge the host lost (a reboot) until lxgate makes it again.
            status: if bridge::exists(&row.name).await {
                "Created"
            } else {
                "Unavailable"
            }
            .into(),
            config: config_of(row),
            used_by,
            locations: vec![super::host::member_name().into()],
            project: "default".into(),
        }
    }

    /// The IPv4 subnets network `name` must not overlap: the host's
    /// addresses and routes (less its own, `current`) and the other managed
    /// networks'. Asked only when a subnet is picked or changed (it runs ip).
    async fn used_subnets(
        &self,
        name: &str,
        current: Option<Option<Ipv4Net>>,
    ) -> Result<Vec<IpNet>, BackendError> {
        let own: Option<IpNet> = current.flatten().map(|n| IpNet::V4(n.trunc()));
        let mut used: Vec<IpNet> = bridge::host_ipv4_nets()
            .await
            .into_iter()
            // The network's own address and routes are not a clash.
            .filter(|n| !own.is_some_and(|o| o.contains(n)))
            .collect();
        for r in inv::list_networks(&self.pool).await.map_err(db)? {
            if r.name != name
                && let Some(n) = bridge::plan(&config_of(&r)).ok().and_then(|p| p.ipv4)
            {
                used.push(n.trunc().into());
            }
        }
        Ok(used)
    }

    /// Resolves `auto` addresses (the stored config then holds the real
    /// ones, as Incus does) and checks the rest. `current`: the network's
    /// subnet when it is updated (None: it is being created). A left-out
    /// `ipv4.address` is `auto` on create, as in Incus, and `none` when a PUT
    /// drops it. A new subnet must not overlap one the host or another
    /// managed network uses.
    async fn resolve_config(
        &self,
        name: &str,
        mut config: ConfigMap,
        current: Option<Option<Ipv4Net>>,
    ) -> Result<(ConfigMap, Plan), BackendError> {
        let v4 = config
            .entry("ipv4.address".into())
            .or_insert_with(|| if current.is_none() { "auto" } else { "none" }.into());
        // A picked subnet clashes with nothing by construction.
        let picked = v4 == "auto";
        if picked {
            *v4 = bridge::pick_subnet(&self.used_subnets(name, current).await?)
                .ok_or_else(|| {
                    BackendError::Conflict(
                        "no free /24 left in 10.0.0.0/8 for ipv4.address=auto".into(),
                    )
                })?
                .to_string();
        }
        let v6 = config
            .entry("ipv6.address".into())
            .or_insert_with(|| "none".into());
        if v6 == "auto" {
            *v6 = random_ula().to_string();
        }
        let plan = bridge::plan(&config)?;
        if let Some(net) = plan.ipv4
            && !picked
            && Some(net) != current.flatten()
            && let Some(clash) = self
                .used_subnets(name, current)
                .await?
                .into_iter()
                .find(|u| bridge::overlaps(u, &IpNet::V4(net.trunc())))
        {
            return Err(BackendError::Conflict(format!(
                "ipv4.address {net} overlaps {clash}, which the host or another managed network uses"
            )));
        }
        if plan.dhcp == Some(true) && !dhcp::available() {
            return Err(BackendError::NotSupported(
                "ipv4.dhcp: DHCP on embedded bridges needs dnsmasq (apt-get install dnsmasq-base)"
                    .into(),
            ));
        }
        Ok((config, plan))
    }
}

#[async_trait::async_trait]
impl Networks for EmbeddedBackend {
    async fn list_networks(
        &self,
        project: &ProjectName,
        expand: bool,
    ) -> Result<Listing<Network>, BackendError> {
        self.ensure_project(project).await?;
        let managed = inv::list_networks(&self.pool).await.map_err(db)?;
        let mut host = Vec::new();
        let mut rd = tokio::fs::read_dir(SYS_NET)
            .await
            .map_err(|e| BackendError::Internal(anyhow::anyhow!("{SYS_NET}: {e}")))?;
        while let Ok(Some(e)) = rd.next_entry().await {
            let n = e.file_name().to_string_lossy().into_owned();
            if !managed.iter().any(|m| m.name == n) {
                host.push(n);
            }
        }
        host.sort();
        if !expand {
            let mut names: Vec<String> = managed.into_iter().map(|r| r.name).collect();
            names.extend(host);
            return Ok(Listing::Names(names));
        }
        let mut out = Vec::with_capacity(managed.len() + host.len());
        let instances = inv::list_instances(&self.pool, Some(project))
            .await
            .map_err(db)?;
        for r in &managed {
            out.push(Self::to_network(r, &instances).await);
        }
        for n in &host {
            if let Ok(net) = interface(n).await {
                out.push(net);
            }
        }
        Ok(Listing::Full(out))
    }

    async fn get_network(
        &self,
        project: &ProjectName,
        name: &NetworkName,
    ) -> Result<(Network, Option<String>), BackendError> {
        self.ensure_project(project).await?;
        match inv::get_network(&self.pool, name).await.map_err(db)? {
            Some(row) => {
                let instances = inv::list_instances(&self.pool, Some(project))
                    .await
                    .map_err(db)?;
                let n = Self::to_network(&row, &instances).await;
                let tag = network_etag(&n.description, &n.config);
                Ok((n, Some(tag)))
            }
            None => Ok((interface(name).await?, None)),
        }
    }

    async fn create_network(
        &self,
        project: &ProjectName,
        req: &NetworkCreate,
    ) -> Result<(), BackendError> {
        self.ensure_project(project).await?;
        let kind = req.network_type.as_deref().unwrap_or("bridge");
        if kind != "bridge" {
            return Err(BackendError::NotSupported(format!(
                "the embedded backend manages bridge networks only, not {kind}"
            )));
        }
        if req.name.len() > bridge::IFNAME_MAX {
            return Err(BackendError::BadRequest(format!(
                "a bridge's name is its interface name on the host: at most {} characters",
                bridge::IFNAME_MAX
            )));
        }
        bridge::check_ifname(&req.name)?;
        bridge::can_manage()?;
        let _net = self.net_lock.lock().await;
        if inv::get_network(&self.pool, &req.name)
            .await
            .map_err(db)?
            .is_some()
        {
            return Err(BackendError::Conflict("The network already exists".into()));
        }
        if bridge::exists(&req.name).await {
            return Err(BackendError::Conflict(format!(
                "the host already has an interface named {}",
                req.name
            )));
        }
        let (config, plan) = self
            .resolve_config(&req.name, req.config.clone(), None)
            .await?;
        let row = NetworkRow {
            name: req.name.clone(),
            network_type: kind.into(),
            description: req.description.clone(),
            config: serde_json::to_string(&config).unwrap_or_else(|_| "{}".into()),
            created_at: now(),
        };
        inv::insert_network(&self.pool, &row)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    BackendError::Conflict("The network already exists".into())
                }
                e => db(e),
            })?;
        let made = match bridge::create(&req.name, &plan).await {
            Ok(()) => match self.sync_dhcp(&req.name).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = bridge::delete(&req.name).await;
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        if let Err(e) = made {
            let _ = inv::delete_network(&self.pool, &req.name).await;
            return Err(e);
        }
        lifecycle(
            &self.bus,
            project,
            "network-created",
            &format!("/1.0/networks/{}", req.name),
            json!({}),
        );
        Ok(())
    }

    async fn update_network(
        &self,
        project: &ProjectName,
        name: &NetworkName,
        update: &NetworkUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError> {
        self.ensure_project(project).await?;
        // Read under the lock, so two updates never merge into one old config.
        let _net = self.net_lock.lock().await;
        let mut row = match inv::get_network(&self.pool, name).await.map_err(db)? {
            Some(r) => r,
            None if bridge::exists(name).await => {
                // There, but not lxgate's to change: a conflict with what it is.
                return Err(BackendError::Conflict(format!(
                    "{name} is a host interface, not a managed network"
                )));
            }
            None => return Err(BackendError::NotFound(Missing::network(name))),
        };
        if let Some(tag) = if_match
            && tag.trim_matches('"') != network_etag(&row.description, &config_of(&row))
        {
            return Err(BackendError::PreconditionFailed(
                "ETag doesn't match".into(),
            ));
        }
        let old = config_of(&row);
        let mut config = if replace {
            ConfigMap::new()
        } else {
            old.clone()
        };
        if let Some(c) = &update.config {
            config.extend(c.clone());
        }
        let old_plan = bridge::plan(&old)?;
        let (config, plan) = self
            .resolve_config(name, config, Some(old_plan.ipv4))
            .await?;
        if plan.ipv4 != old_plan.ipv4 && !self.instances_on(name).await?.is_empty() {
            return Err(BackendError::BadRequest(
                "ipv4.address cannot change while instances have NICs on the network (their addresses are in its subnet); detach them first".into(),
            ));
        }
        if plan != old_plan {
            bridge::can_manage()?;
            if bridge::exists(name).await {
                if let Err(e) = bridge::configure(name, &plan).await {
                    // Back to what the database still says.
                    let _ = bridge::configure(name, &old_plan).await;
                    return Err(e);
                }
            } else {
                bridge::create(name, &plan).await?;
            }
        }
        row.config = serde_json::to_string(&config).unwrap_or_else(|_| "{}".into());
        if let Some(d) = &update.description {
            row.description = d.clone();
        } else if replace {
            row.description = String::new();
        }
        inv::update_network(&self.pool, &row).await.map_err(db)?;
        self.sync_dhcp(name).await?;
        lifecycle(
            &self.bus,
            project,
            "network-updated",
            &format!("/1.0/networks/{name}"),
            json!({}),
        );
        Ok(())
    }

    async fn delete_network(
        &self,
        project: &ProjectName,
        name: &NetworkName,
    ) -> Result<(), BackendError> {
        self.ensure_project(project).await?;
        if inv::get_network(&self.pool, name)
            .await
            .map_err(db)?
            .is_none()
        {
            return Err(if bridge::exists(name).await {
                BackendError::Conflict(format!("{name} is a host interface, not a managed network"))
            } else {
                BackendError::NotFound(Missing::network(name))
            });
        }
        let _net = self.net_lock.lock().await;
        if !self.instances_on(name).await?.is_empty() {
            return Err(BackendError::Conflict(
                "The network is currently in use (instances have NICs on it)".into(),
            ));
        }
        bridge::can_manage()?;
        dhcp::stop(&self.network_dir(name)).await;
        bridge::delete(name).await?;
        inv::delete_network(&self.pool, name).await.map_err(db)?;
        let _ = tokio::fs::remove_dir_all(self.network_dir(name)).await;
        lifecycle(
            &self.bus,
            project,
            "network-deleted",
            &format!("/1.0/networks/{name}"),
            json!({}),
        );
        Ok(())
    }

    async fn network_state(
        &self,
        project: &ProjectName,
        name: &NetworkName,
    ) -> Result<NetworkState, BackendError> {
        self.ensure_project(project).await?;
        let managed = inv::get_network(&self.pool, name)
            .await
            .map_err(db)?
            .is_some();
        if managed && !bridge::exists(name).await {
            return Ok(NetworkState {
                state: "down".into(),
                kind: "broadcast".into(),
                ..Default::default()
            });
        }
        interface(name).await?;
        let dir = Path::new(SYS_NET).join(name.as_str());
        let stat = |f: &str| {
            let p = dir.join("statistics").join(f);
            async move { read(p).await.parse::<i64>().unwrap_or(0) }
        };
        let mut addresses = Vec::new();
        // The name was validated by the API and found in /sys; it is one argument.
        if let Ok(out) = run(
            "ip",
            ["-j", "addr", "show", "dev", name],
            Duration::from_secs(10),
        )
        .await
            && let Ok(v) = serde_json::from_str::<Value>(&out.stdout)
        {
            for a in v[0]["addr_info"].as_array().into_iter().flatten() {
                addresses.push(NetworkAddress {
                    family: a["family"].as_str().unwrap_or_default().to_owned(),
                    address: a["local"].as_str().unwrap_or_default().to_owned(),
                    netmask: a["prefixlen"]
                        .as_i64()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    scope: a["scope"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
        let kind = if read(dir.join("type")).await == "772" {
            "loopback"
        } else {
            "broadcast"
        };
        let bridge = if tokio::fs::try_exists(dir.join("bridge"))
            .await
            .unwrap_or(false)
        {
            let b = dir.join("bridge");
            let mut upper_devices = Vec::new();
            if let Ok(mut rd) = tokio::fs::read_dir(dir.join("brif")).await {
                while let Ok(Some(e)) = rd.next_entry().await {
                    upper_devices.push(e.file_name().to_string_lossy().into_owned());
                }
            }
            upper_devices.sort();
            Some(NetworkStateBridge {
                id: read(b.join("bridge_id")).await,
                stp: read(b.join("stp_state")).await != "0",
                // The kernel counts in hundredths of a second.
                forward_delay: read(b.join("forward_delay"))
                    .await
                    .parse::<i64>()
                    .unwrap_or(0)
                    * 10,
                vlan_default: read(b.join("default_pvid")).await.parse().unwrap_or(0),
                vlan_filtering: read(b.join("vlan_filtering")).await == "1",
                upper_devices,
            })
        } else {
            None
        };
        Ok(NetworkState {
            addresses,
            counters: NetworkStateCounters {
                bytes_received: stat("rx_bytes").await,
                bytes_sent: stat("tx_bytes").await,
                packets_received: stat("rx_packets").await,
                packets_sent: stat("tx_packets").await,
            },
            hwaddr: read(dir.join("address")).await,
            mtu: read(dir.join("mtu")).await.parse().unwrap_or(0),
            state: read(dir.join("operstate")).await,
            kind: kind.into(),
            bridge,
            ..Default::default()
        })
    }

    /// The fixed addresses of the asking project's NICs on the network, and
    /// the bridge's own (`gateway`).
    async fn network_leases(
        &self,
        project: &ProjectName,
        name: &NetworkName,
    ) -> Result<Vec<NetworkLease>, BackendError> {
        self.ensure_project(project).await?;
        let row = self
            .network_row(name)
            .await
            .missing(|| Missing::ManagedNetwork {
                name: name.to_string(),
            })?;
        let mut out = Vec::new();
        if let Some(gw) = bridge::plan(&config_of(&row))?.ipv4 {
            out.push(NetworkLease {
                hostname: format!("{name}.gw"),
                hwaddr: read(Path::new(SYS_NET).join(name.as_str()).join("address")).await,
                address: gw.addr().to_string(),
                lease_type: "gateway".into(),
                location: super::host::member_name().into(),
                project: project.as_str().to_owned(),
            });
        }
        for r in self.instances_on(name).await? {
            if r.project != project.as_str() {
                continue;
            }
            let devices: DevicesMap = serde_json::from_str(&r.devices).unwrap_or_default();
            for d in devices.values().filter(|d| nic_network(d) == Some(name)) {
                out.push(NetworkLease {
                    hostname: r.name.clone(),
                    hwaddr: d.get("hwaddr").cloned().unwrap_or_default(),
                    address: d.get("ipv4.address").cloned().unwrap_or_default(),
                    lease_type: "static".into(),
                    location: super::host::member_name().into(),
                    project: r.project.clone(),
                });
            }
        }
        Ok(out)
    }
}

impl EmbeddedBackend {
    /// Checks the instance's `nic` devices and fixes what lxgate assigns:
    /// the MAC and the IPv4 address. The caller holds `net_lock` until the
    /// devices are stored.
    pub(super) async fn assign_nics(
        &self,
        project: &str,
        name: &str,
        devices: &mut DevicesMap,
    ) -> Result<(), BackendError> {
        let others: Vec<InstanceRow> = inv::list_instances(&self.pool, None)
            .await
            .map_err(db)?
            .into_iter()
            .filter(|r| !(r.project == project && r.name == name))
            .collect();
        // This instance's addresses, so two of its NICs never share one.
        let mut mine: Vec<(String, String, Ipv4Addr)> = devices
            .iter()
            .filter_map(|(dev, d)| {
                let a = d.get("ipv4.address")?.parse().ok()?;
                Some((dev.clone(), nic_network(d)?.to_owned(), a))
            })
            .collect();
        let mut names = BTreeSet::new();
        for (dev, d) in devices.iter_mut() {
            let Some(network) = nic_network(d).map(str::to_owned) else {
                continue;
            };
            if let Some(k) = d.keys().find(|k| !NIC_KEYS.contains(&k.as_str())) {
                return Err(BackendError::BadRequest(format!(
                    "device {dev}: the embedded backend's NICs take {} only, not {k}",
                    NIC_KEYS.join(", ")
                )));
            }
            let row = inv::get_network(&self.pool, &network)
                .await
                .map_err(db)?
                .ok_or_else(|| {
                    BackendError::BadRequest(format!(
                        "device {dev}: {network:?} is not a managed network"
                    ))
                })?;
            let ifname = d
                .entry("name".into())
                .or_insert_with(|| dev.clone())
                .clone();
            bridge::check_ifname(&ifname)
                .map_err(|e| BackendError::BadRequest(format!("device {dev}: {e}")))?;
            if !names.insert(ifname.clone()) {
                return Err(BackendError::BadRequest(format!(
                    "device {dev}: another NIC is already named {ifname} in the instance"
                )));
            }
            let hwaddr = d
                .entry("hwaddr".into())
                .or_insert_with(bridge::random_hwaddr);
            bridge::check_hwaddr(hwaddr)
                .map_err(|e| BackendError::BadRequest(format!("device {dev}: {e}")))?;
            let subnet = bridge::plan(&config_of(&row))?.ipv4;
            let requested = d.get("ipv4.address").cloned();
            let Some(subnet) = subnet else {
                if requested.is_some() {
                    return Err(BackendError::BadRequest(format!(
                        "device {dev}: network {network} has no IPv4 subnet (ipv4.address=none)"
                    )));
                }
                continue;
            };
            // Taken: the bridge's, other instances' and this one's other NICs'.
            let mut taken: BTreeSet<Ipv4Addr> = BTreeSet::from([subnet.addr()]);
            let all_devices = others
                .iter()
                .flat_map(|r| serde_json::from_str::<DevicesMap>(&r.devices).unwrap_or_default())
                .map(|(_, d)| d);
            for other in all_devices {
                if nic_network(&other) == Some(network.as_str())
                    && let Some(a) = other.get("ipv4.address").and_then(|a| a.parse().ok())
                {
                    taken.insert(a);
                }
            }
            for (other, net, a) in &mine {
                if other != dev && *net == network {
                    taken.insert(*a);
                }
            }
            let address = match requested {
                Some(a) => {
                    let addr: Ipv4Addr = a.parse().map_err(|_| {
                        BackendError::BadRequest(format!(
                            "device {dev}: ipv4.address must be a plain IPv4 address, not {a:?}"
                        ))
                    })?;
                    if !subnet.contains(&addr)
                        || addr == subnet.network()
                        || addr == subnet.broadcast()
                    {
                        return Err(BackendError::BadRequest(format!(
                            "device {dev}: {addr} is not a host address of {network}'s subnet {}",
                            subnet.trunc()
                        )));
                    }
                    if taken.contains(&addr) {
                        return Err(BackendError::Conflict(format!(
                            "device {dev}: {addr} is already in use on {network}"
                        )));
                    }
                    addr
                }
                None => bridge::allocate(subnet, &taken).ok_or_else(|| {
                    BackendError::Conflict(format!(
                        "device {dev}: no free address left in {network}'s subnet {}",
                        subnet.trunc()
                    ))
                })?,
            };
            d.insert("ipv4.address".into(), address.to_string());
            mine.retain(|(o, _, _)| o != dev);
            mine.push((dev.clone(), network, address));
        }
        Ok(())
    }
}

impl EmbeddedBackend {
    /// The NICs of an instance (`host`: its host name) as its driver sets
    /// them up, from devices `assign_nics` has checked.
    pub(super) async fn nics(
        &self,
        host: &str,
        devices: &DevicesMap,
    ) -> Result<Vec<Nic>, BackendError> {
        let mut out = Vec::new();
        for (dev, d) in devices {
            let Some(network) = nic_network(d) else {
                continue;
            };
            let row = inv::get_network(&self.pool, network)
                .await
                .map_err(db)?
                .ok_or_else(|| {
                    BackendError::BadRequest(format!(
                        "device {dev}: network {network:?} does not exist any more; detach the NIC"
                    ))
                })?;
            let subnet = bridge::plan(&config_of(&row))?.ipv4;
            let ipv4 = match (subnet, d.get("ipv4.address").and_then(|a| a.parse().ok())) {
                (Some(s), Some(a)) => Ipv4Net::new(a, s.prefix_len()).ok(),
                _ => None,
            };
            out.push(Nic {
                device: dev.clone(),
                bridge: network.to_owned(),
                name: d.get("name").unwrap_or(dev).clone(),
                hwaddr: d
                    .get("hwaddr")
                    .cloned()
                    .unwrap_or_else(bridge::random_hwaddr),
                host_if: bridge::host_ifname(host, dev),
                ipv4,
                gateway: subnet.map(|s| s.addr()),
            });
        }
        Ok(out)
    }

    /// The `network` part of a running instance's state: per NIC, its
    /// address as lxgate assigned it and the host end's link and counters
    /// (seen from the instance, so received and sent swap).
    pub(super) async fn nic_states(
        &self,
        host: &str,
        devices: &DevicesMap,
    ) -> std::collections::BTreeMap<String, InstanceStateNetwork> {
        let mut out = std::collections::BTreeMap::new();
        for nic in self.nics(host, devices).await.unwrap_or_default() {
            let dir = Path::new(SYS_NET).join(&nic.host_if);
            let stat = |f: &str| {
                let p = dir.join("statistics").join(f);
                async move { read(p).await.parse::<i64>().unwrap_or(0) }
            };
            let addresses = nic
                .ipv4
                .map(|a| NetworkAddress {
                    family: "inet".into(),
                    address: a.addr().to_string(),
                    netmask: a.prefix_len().to_string(),
                    scope: "global".into(),
                })
                .into_iter()
                .collect();
            out.insert(
                nic.name.clone(),
                InstanceStateNetwork {
                    addresses,
                    counters: NetworkCounters {
                        bytes_received: stat("tx_bytes").await,
                        bytes_sent: stat("rx_bytes").await,
                        packets_received: stat("tx_packets").await,
                        packets_sent: stat("rx_packets").await,
                        errors_received: stat("tx_errors").await,
                        errors_sent: stat("rx_errors").await,
                        packets_dropped_inbound: stat("tx_dropped").await,
                        packets_dropped_outbound: stat("rx_dropped").await,
                    },
                    hwaddr: nic.hwaddr.clone(),
                    mtu: read(dir.join("mtu")).await.parse().unwrap_or(0),
                    state: if read(dir.join("operstate")).await == "down" {
                        "down"
                    } else {
                        "up"
                    }
                    .into(),
                    kind: "broadcast".into(),
                    host_name: nic.host_if,
                },
            );
        }
        out
    }

    /// Makes a running container's NICs `after` where they were `before`:
    /// new ones are hot-plugged first (undone if one fails, so nothing
    /// changes), then the ones gone are unplugged.
    pub(super) async fn hotplug(
        before: &[Nic],
        after: &[Nic],
        pid: i64,
    ) -> Result<(), BackendError> {
        let added: Vec<&Nic> = after.iter().filter(|n| !before.contains(n)).collect();
        let removed: Vec<&Nic> = before.iter().filter(|n| !after.contains(n)).collect();
        // A changed NIC is unplugged before its new self is plugged.
        for n in removed
            .iter()
            .filter(|r| added.iter().any(|a| a.host_if == r.host_if))
        {
            bridge::unplug(&n.host_if).await?;
        }
        for (i, n) in added.iter().enumerate() {
            let plugged = bridge::plug_veth(
                &n.host_if, &n.bridge, &n.name, &n.hwaddr, n.ipv4, n.gateway, pid,
            )
            .await;
            if let Err(e) = plugged {
                for done in &added[..i] {
                    let _ = bridge::unplug(&done.host_if).await;
                }
                return Err(e);
            }
        }
        for n in &removed {
            bridge::unplug(&n.host_if).await?;
        }
        Ok(())
    }

    /// Makes the bridges these NICs need (and their DHCP) again where the
    /// host lost them.
    pub(super) async fn ensure_bridges(&self, nics: &[Nic]) -> Result<(), BackendError> {
        let wanted: BTreeSet<&str> = nics.iter().map(|n| n.bridge.as_str()).collect();
        for name in wanted {
            let _net = self.net_lock.lock().await;
            if !bridge::exists(name).await {
                self.recreate_bridge(&self.network_row(name).await?).await?;
            }
            self.sync_dhcp(name).await?;
        }
        Ok(())
    }

    /// Makes a bridge the host lost again from its row; its old dnsmasq
    /// listens on nothing any more, so it goes too (`sync_dhcp` starts one).
    async fn recreate_bridge(&self, row: &NetworkRow) -> Result<(), BackendError> {
        bridge::can_manage()?;
        bridge::create(&row.name, &bridge::plan(&config_of(row))?).await?;
        dhcp::stop(&self.network_dir(&row.name)).await;
        Ok(())
    }

    fn network_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("networks").join(name)
    }

    /// Runs the network's dnsmasq with today's reservations, or none when
    /// the network has no DHCP. The caller holds `net_lock`.
    pub(super) async fn sync_dhcp(&self, name: &str) -> Result<(), BackendError> {
        let dir = self.network_dir(name);
        let Some(row) = inv::get_network(&self.pool, name).await.map_err(db)? else {
            dhcp::stop(&dir).await;
            return Ok(());
        };
        let plan = bridge::plan(&config_of(&row))?;
        let subnet = match plan.ipv4 {
            Some(s) if plan.dhcp.unwrap_or_else(dhcp::available) => s,
            _ => {
                dhcp::stop(&dir).await;
                return Ok(());
            }
        };
        let mut hosts = Vec::new();
        for r in self.instances_on(name).await? {
            let devices: DevicesMap = serde_json::from_str(&r.devices).unwrap_or_default();
            for d in devices.values().filter(|d| nic_network(d) == Some(name)) {
                if let (Some(hwaddr), Some(address)) = (
                    d.get("hwaddr"),
                    d.get("ipv4.address").and_then(|a| a.parse().ok()),
                ) {
                    hosts.push(dhcp::Reservation {
                        hwaddr: hwaddr.clone(),
                        address,
                        hostname: r.name.clone(),
                    });
                }
            }
        }
        hosts.sort();
        dhcp::ensure(&dir, dhcp::args(&dir, name, subnet, &hosts)).await
    }

    /// At startup: the managed bridges the host lost (a reboot) are made
    /// again, with their DHCP, so running and starting instances find them.
    pub async fn restore_networks(&self) {
        let Ok(rows) = inv::list_networks(&self.pool).await else {
            return;
        };
        let _net = self.net_lock.lock().await;
        for row in &rows {
            let made = if bridge::exists(&row.name).await {
                Ok(())
            } else {
                let made = self.recreate_bridge(row).await;
                if made.is_ok() {
                    tracing::info!(network = %row.name, "re-created the managed bridge");
                }
                made
            };
            let restored = match made {
                Ok(()) => self.sync_dhcp(&row.name).await,
                Err(e) => Err(e),
            };
            if let Err(e) = restored {
                tracing::warn!(network = %row.name, error = %e, "cannot restore the managed network");
            }
        }
    }
}
