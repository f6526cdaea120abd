//! Networks on the embedded backend: the host's interfaces, read-only
//! (unmanaged, as Incus lists them), from `/sys/class/net` and `ip -j addr`.
//! Managed bridges are not offered yet; those calls answer 501.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::EmbeddedBackend;
use super::process::run;
use crate::backend::types::{Network, NetworkAddress, NetworkState, NetworkStateCounters};
use crate::backend::{BackendError, Listing};

const SYS_NET: &str = "/sys/class/net";

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
        return Err(BackendError::NotFound("Network not found".into()));
    }
    Ok(Network {
        name: name.to_owned(),
        network_type: kind_of(&dir).await.to_owned(),
        managed: false,
        locations: vec!["none".into()],
        ..Default::default()
    })
}

impl EmbeddedBackend {
    pub(super) async fn list_networks_impl(
        &self,
        project: &str,
        expand: bool,
    ) -> Result<Listing<Network>, BackendError> {
        self.ensure_project(project).await?;
        let mut names = Vec::new();
        let mut rd = tokio::fs::read_dir(SYS_NET)
            .await
            .map_err(|e| BackendError::Internal(anyhow::anyhow!("{SYS_NET}: {e}")))?;
        while let Ok(Some(e)) = rd.next_entry().await {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        if !expand {
            return Ok(Listing::Names(names));
        }
        let mut out = Vec::with_capacity(names.len());
        for n in &names {
            if let Ok(net) = interface(n).await {
                out.push(net);
            }
        }
        Ok(Listing::Full(out))
    }

    pub(super) async fn get_network_impl(
        &self,
        project: &str,
        name: &str,
    ) -> Result<(Network, Option<String>), BackendError> {
        self.ensure_project(project).await?;
        Ok((interface(name).await?, None))
    }

    pub(super) async fn network_state_impl(
        &self,
        project: &str,
        name: &str,
    ) -> Result<NetworkState, BackendError> {
        self.ensure_project(project).await?;
        interface(name).await?;
        let dir = Path::new(SYS_NET).join(name);
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
            ..Default::default()
        })
    }
}
