//! Disk images that users bring (uploads, simplestreams copies) are checked
//! before lxgate keeps them. A qcow2 names its backing file and its external
//! data file by host path, and QEMU opens whatever it names: an image whose
//! backing file is `/dev/sda` or another tenant's disk would hand that data
//! to the guest (or let it write there). Only a self-contained qcow2 is
//! accepted. lxgate's own overlays (qemu.rs) have the stored image as
//! backing file; lxgate makes those itself and they never pass through here.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::image_budget::Budget;
use super::process::run;
use crate::backend::{BackendError, human_bytes};

pub const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// qcow2 v3 incompatible feature bit 2: the guest data lives in an external file.
const INCOMPAT_EXTERNAL_DATA_FILE: u64 = 1 << 2;

/// The fields of a qcow2 header that name other files (big-endian, see
/// QEMU's docs/interop/qcow2.txt).
struct Header {
    magic: [u8; 4],
    version: u32,
    backing_file_offset: u64,
    /// The disk's size as the guest sees it, what its overlay can grow to.
    size: u64,
    incompatible_features: u64,
}

fn parse_header(b: &[u8]) -> Option<Header> {
    let u32_at = |o: usize| Some(u32::from_be_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_be_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let version = u32_at(4)?;
    Some(Header {
        magic: b.get(..4)?.try_into().ok()?,
        version,
        backing_file_offset: u64_at(8)?,
        size: u64_at(24)?,
        // Version 2 headers end before this field and have no such features.
        incompatible_features: if version >= 3 { u64_at(72)? } else { 0 },
    })
}

async fn read_head(path: &Path) -> Result<Vec<u8>, BackendError> {
    let mut head = Vec::with_capacity(104);
    tokio::fs::File::open(path)
        .await
        .map(|f| f.take(104))
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("reading the disk image: {e}")))?
        .read_to_end(&mut head)
        .await
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("reading the disk image: {e}")))?;
    Ok(head)
}

/// Whether the file starts like a qcow2 image (a VM image's `rootfs.img` is
/// such a disk, or else a tarball with a kernel and an initrd).
pub async fn is_qcow2(path: &Path) -> Result<bool, BackendError> {
    Ok(read_head(path).await?.starts_with(QCOW2_MAGIC))
}

fn refuse(why: &str) -> BackendError {
    BackendError::BadRequest(format!(
        "the VM disk image is refused: {why}; only a self-contained qcow2 image (no backing file, no external data file) is accepted"
    ))
}

fn too_large(virtual_size: u64, budget: Budget) -> BackendError {
    budget.refuse(&format!(
        "the VM disk's virtual size ({})",
        human_bytes(virtual_size)
    ))
}

/// Refuses a qcow2 that is not self-contained, or whose virtual size (what
/// an instance's disk grows to as the guest writes) is over `budget` (what
/// the image's metadata left of `MAX_IMAGE_BYTES`). The header is
/// read first, so qemu-img never opens a file a refused image names; then
/// `qemu-img info` (forced to qcow2, no format probing) must agree.
/// The disk's virtual size, from its qcow2 header.
pub async fn virtual_size(path: &Path) -> Result<u64, BackendError> {
    let head = read_head(path).await?;
    parse_header(&head)
        .filter(|h| &h.magic == QCOW2_MAGIC)
        .map(|h| h.size)
        .ok_or_else(|| refuse("it is not a qcow2 image"))
}

/// `qemu-img info --output=json` of a qcow2 disk (forced to qcow2: no
/// format probing), as it printed it.
pub async fn info_json(disk: &Path, timeout: Duration) -> Result<String, BackendError> {
    let out = run(
        "qemu-img",
        [
            "info".as_ref(),
            "--output=json".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            disk.as_os_str(),
        ],
        timeout,
    )
    .await?;
    Ok(out.stdout)
}

pub async fn check_disk_image(path: &Path, budget: Budget) -> Result<(), BackendError> {
    check_head(&read_head(path).await?, budget)?;
    let out = info_json(path, Duration::from_secs(30))
        .await
        .map_err(|e| match e {
            BackendError::Internal(e) => refuse(&format!("qemu-img cannot read it ({e})")),
            e => e,
        })?;
    let info: Value = serde_json::from_str(&out)
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("qemu-img info output: {e}")))?;
    check_info(&info, budget)
}

/// The header's part of `check_disk_image`: `head` is the file's first 104
/// bytes (or all of it, when shorter). Ok gives the virtual size.
pub(crate) fn check_head(head: &[u8], budget: Budget) -> Result<u64, BackendError> {
    let h = parse_header(head)
        .filter(|h| &h.magic == QCOW2_MAGIC)
        .ok_or_else(|| refuse("it is not a qcow2 image"))?;
    if !matches!(h.version, 2 | 3) {
        return Err(refuse(&format!("qcow2 version {} is unknown", h.version)));
    }
    if h.backing_file_offset != 0 {
        return Err(refuse("it has a backing file"));
    }
    if h.incompatible_features & INCOMPAT_EXTERNAL_DATA_FILE != 0 {
        return Err(refuse("it has an external data file"));
    }
    if h.size > budget.left {
        return Err(too_large(h.size, budget));
    }
    Ok(h.size)
}

/// What `qemu-img info --output=json` says about the image.
fn check_info(info: &Value, budget: Budget) -> Result<(), BackendError> {
    if info["format"] != "qcow2" {
        return Err(refuse("it is not a qcow2 image"));
    }
    if info.get("backing-filename").is_some() || info.get("full-backing-filename").is_some() {
        return Err(refuse("it has a backing file"));
    }
    if info["format-specific"]["data"].get("data-file").is_some() {
        return Err(refuse("it has an external data file"));
    }
    if info["encrypted"] == true {
        return Err(refuse("it is encrypted"));
    }
    match info["virtual-size"].as_u64() {
        Some(size) if size > budget.left => Err(too_large(size, budget)),
        Some(_) => Ok(()),
        None => Err(refuse("qemu-img does not say its virtual size")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_fields_that_name_other_files() {
        let mut b = vec![0u8; 104];
        b[..4].copy_from_slice(QCOW2_MAGIC);
        b[7] = 3;
        b[27] = 0x01;
        let h = parse_header(&b).unwrap();
        assert_eq!(
            (h.version, h.backing_file_offset, h.incompatible_features),
            (3, 0, 0)
        );
        assert_eq!(h.size, 1 << 32);
        b[15] = 0x70;
        b[79] = 0x04;
        let h = parse_header(&b).unwrap();
        assert_eq!(h.backing_file_offset, 0x70);
        assert_ne!(h.incompatible_features & INCOMPAT_EXTERNAL_DATA_FILE, 0);
        // A version 2 header is shorter and has no feature bits.
        b[7] = 2;
        assert_eq!(parse_header(&b[..72]).unwrap().incompatible_features, 0);
        assert!(parse_header(&b[..10]).is_none());
    }

    #[test]
    fn qemu_img_info_is_read_strictly() {
        let fine =
            json!({"format": "qcow2", "virtual-size": 1024, "format-specific": {"data": {}}});
        assert!(check_info(&fine, Budget::new(1024)).is_ok());
        let e = check_info(&fine, Budget::new(1 << 20).after((1 << 20) - 1000)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the VM disk's virtual size (1 KiB) is larger than MAX_IMAGE_BYTES allows (1 MiB)"
        );
        for bad in [
            json!({"format": "raw"}),
            json!({"format": "qcow2", "backing-filename": "/etc/shadow"}),
            json!({"format": "qcow2", "full-backing-filename": "/dev/sda"}),
            json!({"format": "qcow2", "format-specific": {"data": {"data-file": "/x.raw"}}}),
            json!({"format": "qcow2", "encrypted": true}),
            json!({"format": "qcow2"}),
        ] {
            assert!(check_info(&bad, Budget::new(u64::MAX)).is_err(), "{bad}");
        }
    }
}
