//! Image copy from a simplestreams server (the protocol of
//! images.linuxcontainers.org): read `streams/v1/index.json` and the product
//! catalogue it names, pick the newest version of the product with the
//! alias (or fingerprint) for this architecture and instance type, download
//! its metadata and rootfs (or VM disk) with progress, and verify every hash.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Url;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::image_budget::Budget;
use super::operations::{OpCtx, OpError};
use crate::backend::{BackendError, Missing};
use crate::fetch::{Fetcher, OriginClient, TooLarge};

/// Largest index or product catalogue read (images.linuxcontainers.org's
/// whole catalogue is about 3 MiB); it is held in memory to be parsed.
const MAX_CATALOGUE: usize = 16 << 20;
/// How long reading one index or catalogue may take in all.
const CATALOGUE_TIMEOUT: Duration = Duration::from_secs(120);
const ARCHES: [&str; 2] = ["amd64", "x86_64"];

#[derive(Debug, Clone)]
pub struct Item {
    pub url: Url,
    pub sha256: String,
    pub size: u64,
}

/// The files of one image version.
#[derive(Debug, Clone)]
pub struct Found {
    pub metadata: Item,
    pub rootfs: Item,
    pub vm: bool,
    /// The server's fingerprint (sha256 of metadata then rootfs), if it says.
    pub combined: Option<String>,
}

fn bad(msg: impl Into<String>) -> BackendError {
    BackendError::BadRequest(msg.into())
}

/// A path from the catalogue, resolved against the server and kept on it.
fn resolve(base: &Url, path: &str) -> Result<Url, BackendError> {
    let url = base
        .join(path)
        .map_err(|_| bad(format!("the server lists an invalid path {path:?}")))?;
    if url.origin() != base.origin() {
        return Err(bad("the server's catalogue points to another server"));
    }
    Ok(url)
}

/// The base URL as a directory, and a client for its origin that fetches
/// under `fetch`'s rules (checked and pinned once for the whole copy).
pub async fn connect(fetch: &Fetcher, server: &str) -> Result<(OriginClient, Url), BackendError> {
    let mut base = Url::parse(server).map_err(|_| bad("invalid server URL"))?;
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    let client = fetch
        .client_for(&base)
        .await
        .map_err(|e| bad(e.to_string()))?;
    Ok((client, base))
}

/// A catalogue (index or products) read with a bound while it streams: a
/// server cannot make lxgate hold more than this in memory.
async fn get_json(client: &OriginClient, url: Url) -> Result<Value, BackendError> {
    let read = client.get_bounded(&url, MAX_CATALOGUE);
    // The read timeout alone lets a server drip a byte a minute forever.
    let bytes = match tokio::time::timeout(CATALOGUE_TIMEOUT, read).await {
        Err(_) => {
            return Err(bad(format!(
                "could not fetch {url} (not read within {}s)",
                CATALOGUE_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(TooLarge::Fetch(e))) => return Err(bad(e.to_string())),
        Ok(Err(TooLarge::Over(max))) => {
            return Err(bad(format!(
                "{url} is larger than the {} MiB allowed for a catalogue",
                max >> 20
            )));
        }
        Ok(Ok(bytes)) => bytes,
    };
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("{url} is not JSON: {e}")))
}

/// What is wanted of a server's catalogue: an alias or a fingerprint
/// prefix, for containers or VMs.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub alias: Option<&'a str>,
    pub fingerprint: Option<&'a str>,
    pub vm: bool,
}

/// Finds the newest matching image on the server at `base` (see `connect`).
pub async fn find(
    client: &OriginClient,
    base: &Url,
    wanted: Wanted<'_>,
) -> Result<Found, BackendError> {
    let index = get_json(client, resolve(base, "streams/v1/index.json")?).await?;
    let catalogue = catalogue_path(&index)?;
    let images = get_json(client, resolve(base, catalogue)?).await?;
    pick(&images, base, wanted)
}

/// The path of the image-downloads catalogue an index names.
pub(crate) fn catalogue_path(index: &Value) -> Result<&str, BackendError> {
    index["index"]
        .as_object()
        .and_then(|m| {
            m.values()
                .find(|v| v["datatype"] == "image-downloads")
                .and_then(|v| v["path"].as_str())
        })
        .ok_or_else(|| bad("the server's index lists no image-downloads catalogue"))
}

/// The newest item of `images` (a product catalogue the server at `base`
/// sent) that is `wanted`, its files' URLs kept on that server.
pub(crate) fn pick(images: &Value, base: &Url, wanted: Wanted<'_>) -> Result<Found, BackendError> {
    let Wanted {
        alias,
        fingerprint,
        vm: want_vm,
    } = wanted;
    let products = images["products"]
        .as_object()
        .ok_or_else(|| bad("the catalogue has no products"))?;

    let mut best: Option<(String, Found)> = None;
    for product in products.values() {
        let arch = product["arch"].as_str().unwrap_or_default();
        if !ARCHES.contains(&arch) {
            continue;
        }
        if let Some(a) = alias {
            let aliases = product["aliases"].as_str().unwrap_or_default();
            if !aliases.split(',').any(|x| x.trim() == a) {
                continue;
            }
        }
        let Some(versions) = product["versions"].as_object() else {
            continue;
        };
        for (version, v) in versions {
            let items = &v["items"];
            let item = |ftypes: &[&str]| -> Option<&Value> {
                items
                    .as_object()?
                    .values()
                    .find(|i| ftypes.contains(&i["ftype"].as_str().unwrap_or_default()))
            };
            let Some(meta) = item(&["incus.tar.xz", "lxd.tar.xz"]) else {
                continue;
            };
            let (rootfs, combined_key) = if want_vm {
                match item(&["disk-kvm.img"]) {
                    Some(r) => (r, "combined_disk-kvm-img_sha256"),
                    None => continue,
                }
            } else {
                match item(&["root.tar.xz"]) {
                    Some(r) => (r, "combined_rootxz_sha256"),
                    None => continue,
                }
            };
            let combined = meta[combined_key]
                .as_str()
                .or_else(|| meta["combined_sha256"].as_str())
                .map(str::to_owned);
            if let Some(fp) = fingerprint
                && !combined.as_deref().is_some_and(|c| c.starts_with(fp))
            {
                continue;
            }
            let to_item = |i: &Value| -> Result<Item, BackendError> {
                Ok(Item {
                    url: resolve(base, i["path"].as_str().unwrap_or_default())?,
                    sha256: i["sha256"]
                        .as_str()
                        .unwrap_or_default()
                        .to_ascii_lowercase(),
                    size: i["size"].as_u64().unwrap_or(0),
                })
            };
            let found = Found {
                metadata: to_item(meta)?,
                rootfs: to_item(rootfs)?,
                vm: want_vm,
                combined,
            };
            if best.as_ref().is_none_or(|(v, _)| version > v) {
                best = Some((version.clone(), found));
            }
        }
    }
    best.map(|(_, f)| f).ok_or_else(|| {
        BackendError::NotFound(Missing::Other(format!(
            "the server has no {} image {} for x86_64",
            if want_vm {
                "virtual-machine"
            } else {
                "container"
            },
            alias.or(fingerprint).unwrap_or_default()
        )))
    })
}

/// Downloads `item` to `dest`, feeding `combined` too, reporting progress
/// as `{label}: N% (speed)` in the operation's metadata, and checks its hash.
/// More than `budget` (what is left of `MAX_IMAGE_BYTES`) fails the copy:
/// up front when the catalogue or the response says so, else as soon as
/// that much has come in.
pub async fn download(
    client: &OriginClient,
    item: &Item,
    dest: &Path,
    label: &str,
    combined: &mut Sha256,
    budget: Budget,
    ctx: &OpCtx,
) -> Result<u64, OpError> {
    let too_large = || OpError::from(budget.refuse(&format!("the image's {label} ({})", item.url)));
    if item.size > budget.left {
        return Err(too_large());
    }
    let resp = client
        .get(&item.url)
        .await
        .map_err(|e| OpError::Failed(e.to_string()))?;
    if resp.content_length().is_some_and(|n| n > budget.left) {
        return Err(too_large());
    }
    let total = resp.content_length().unwrap_or(item.size);
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| OpError::Failed(format!("spooling the download: {e}")))?;
    let mut own = Sha256::new();
    let mut got: u64 = 0;
    let started = Instant::now();
    let mut reported = Instant::now();
    let mut body = resp.bytes_stream();
    loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            () = ctx.cancelled() => return Err(OpError::Cancelled),
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|e| {
            tracing::warn!(url = %item.url, error = %e, "image download broke off");
            OpError::Failed(format!("could not fetch {}", item.url))
        })?;
        got += chunk.len() as u64;
        if got > budget.left {
            return Err(too_large());
        }
        if item.size > 0 && got > item.size {
            return Err(OpError::Failed(format!(
                "{} is larger than announced",
                item.url
            )));
        }
        own.update(&chunk);
        combined.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| OpError::Failed(format!("spooling the download: {e}")))?;
        if reported.elapsed() > Duration::from_millis(250) {
            reported = Instant::now();
            let pct = (got * 100).checked_div(total).unwrap_or(0);
            let speed = got as f64 / started.elapsed().as_secs_f64().max(0.001);
            ctx.progress(json!({
                "download_progress": format!("{label}: {pct}% ({:.2}MB/s)", speed / 1e6),
            }));
        }
    }
    file.flush()
        .await
        .map_err(|e| OpError::Failed(format!("spooling the download: {e}")))?;
    let hash = hex::encode(own.finalize());
    if !item.sha256.is_empty() && hash != item.sha256 {
        return Err(OpError::Failed(format!(
            "{label} does not match the server's SHA-256 (got {hash}, expected {})",
            item.sha256
        )));
    }
    ctx.progress(json!({"download_progress": format!("{label}: 100%")}));
    Ok(got)
}

/// A spool file removed when dropped.
pub struct Spooled(pub PathBuf);

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
