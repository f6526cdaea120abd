//! `GET /1.0` on Incus: the server, its drivers, and whether it trusts lxgate.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::IncusBackend;
use crate::backend::types::{ResourcesStoragePool, ResourcesUsage, StoragePool, SystemResources};
use crate::backend::{BackendError, DriverInfo, System, SystemInfo};

/// The parts of `GET /1.0` lxgate uses.
#[derive(Debug, Deserialize)]
pub(super) struct Server {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    pub(super) environment: Environment,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Environment {
    #[serde(default)]
    driver: String,
    #[serde(default)]
    driver_version: String,
    #[serde(default)]
    server_version: String,
    #[serde(default)]
    server: String,
    /// The member's name in a cluster, the host name otherwise.
    #[serde(default)]
    pub(super) server_name: String,
    #[serde(default)]
    pub(super) server_clustered: bool,
    #[serde(default)]
    pub(super) architectures: Vec<String>,
}

impl IncusBackend {
    /// `GET /1.0`, refusing to go on when Incus does not trust lxgate.
    pub(super) async fn server(&self) -> Result<Server, BackendError> {
        let (server, _): (Server, _) = self.client.query_struct(&[], &[]).await?;
        if server.auth != "trusted" {
            return Err(BackendError::Forbidden(format!(
                "{} does not trust lxgate's client certificate (auth: {:?}); run `lxgate remote trust`",
                self.client.endpoint(),
                server.auth
            )));
        }
        Ok(server)
    }
}

/// `"lxc | qemu"` and `"5.0.2 | 9.0.4"` -> one entry per driver.
fn drivers(env: &Environment) -> Vec<DriverInfo> {
    let versions: Vec<&str> = env.driver_version.split('|').map(str::trim).collect();
    env.driver
        .split('|')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .enumerate()
        .map(|(i, name)| DriverInfo {
            name: name.to_owned(),
            instance_type: if name == "qemu" {
                "virtual-machine"
            } else {
                "container"
            }
            .to_owned(),
            available: true,
            version: versions.get(i).map(|v| (*v).to_owned()),
            detail: None,
        })
        .collect()
}

/// `GET /1.0/storage-pools/{pool}/resources`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PoolResources {
    space: ResourcesUsage,
    inodes: ResourcesUsage,
}

#[async_trait::async_trait]
impl System for IncusBackend {
    fn kind(&self) -> &'static str {
        "incus"
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.server().await.map(|_| ())
    }

    async fn info(&self) -> Result<SystemInfo, BackendError> {
        let server = self.server().await?;
        let drivers = drivers(&server.environment);
        let has = |name: &str| drivers.iter().any(|d| d.name == name);
        let features: BTreeMap<String, bool> = [
            ("containers", has("lxc")),
            ("virtual_machines", has("qemu")),
            ("instances_api", true),
            // Projects can be restricted to match the instance policy.
            ("project_restrictions", true),
            ("profiles", true),
            ("profile_devices", true),
            // Several members: placement (`?target=`), evacuate and restore.
            ("clustered", server.environment.server_clustered),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Ok(SystemInfo {
            backend: self.kind().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: "v1".to_owned(),
            server_version: Some(format!(
                "{} {}",
                if server.environment.server.is_empty() {
                    "incus"
                } else {
                    &server.environment.server
                },
                server.environment.server_version
            )),
            drivers,
            features,
        })
    }

    /// `/1.0/resources` read into lxgate's subset of it (the same field
    /// names), and each pool's `/1.0/storage-pools/{pool}/resources`.
    async fn resources(&self) -> Result<SystemResources, BackendError> {
        let (mut res, _): (SystemResources, _) =
            self.client.query_struct(&["resources"], &[]).await?;
        let (pools, _): (Vec<StoragePool>, _) = self
            .client
            .query_struct(&["storage-pools"], &[("recursion", "1")])
            .await?;
        res.storage_pools.clear();
        for pool in pools {
            // A pool whose backing store does not answer (a remote Ceph
            // down, say) leaves the others readable; its state is the
            // pool's own business (`GET storage/pools/{pool}`).
            match self
                .client
                .query_struct::<PoolResources>(&["storage-pools", &pool.name, "resources"], &[])
                .await
            {
                Ok((r, _)) => res.storage_pools.push(ResourcesStoragePool {
                    name: pool.name,
                    driver: pool.driver,
                    space: r.space,
                    inodes: r.inodes,
                }),
                Err(e) => {
                    tracing::warn!(pool = %pool.name, error = %e, "cannot read a storage pool's resources");
                }
            }
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_strings_are_split() {
        let d = drivers(&Environment {
            driver: "lxc | qemu".into(),
            driver_version: "6.0.4 | 9.2.0".into(),
            ..Default::default()
        });
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].name, "qemu");
        assert_eq!(d[1].instance_type, "virtual-machine");
        assert_eq!(d[1].version.as_deref(), Some("9.2.0"));
    }
}
