//! How big an image is once unpacked, measured before lxgate keeps it:
//! `MAX_IMAGE_BYTES` bounds the sum of its tarballs' member sizes and a VM
//! disk's virtual size. A few hundred KiB of `.tar.xz` can hold gigabytes
//! of zeros (or a sparse file of any size), so the compressed size says
//! nothing about what an instance create would write to the host.
//!
//! Tarballs are measured by GNU tar itself (`tar --list --verbose`), run
//! exactly as the unpack runs it (`tarball::reading`: same decompressor,
//! same memory limit), so whatever would be unpacked is measured and
//! anything tar cannot read is refused now rather than at the first
//! instance create. The listing streams: tar prints a member's header
//! line before it reads past the member's data, and is killed (with the
//! decompressor it runs) as soon as the running sum passes the bound, so a
//! bomb costs a few KiB of decompression. Nothing is unpacked; lxgate holds
//! nothing but the running sum, and tar no more than `tarball::MEMORY_LIMIT`.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::image_budget::Budget;
use super::process::ProcessGroup;
use super::qcow;
use super::tarball;
use crate::backend::BackendError;

/// How long measuring one tarball may take: decompressing 8 GiB of xz takes
/// about a minute on a small host, bzip2 several.
const LIST_TIMEOUT: Duration = Duration::from_secs(600);

/// What a member costs on top of its data: its 512-byte header, so that a
/// million empty files count too.
const HEADER: u64 = 512;

/// Refuses an image that unpacks to more than `budget`: the members of its
/// metadata tarball, then those of its rootfs tarball (a container's tree,
/// or a VM's kernel and initrd) or a VM disk's virtual size, all from one
/// budget. A VM disk is also held to `qcow::check_disk_image`'s rules.
pub async fn check(
    metadata: &Path,
    rootfs: &Path,
    vm: bool,
    budget: Budget,
) -> Result<(), BackendError> {
    let meta = tarball(metadata, "the metadata tarball", budget).await?;
    let budget = budget.after(meta);
    if vm && qcow::is_qcow2(rootfs).await? {
        qcow::check_disk_image(rootfs, budget).await?;
    } else {
        let what = if vm {
            "the VM image's rootfs.img (a qcow2 disk, or a tarball with the kernel and initrd)"
        } else {
            "the rootfs"
        };
        tarball(rootfs, what, budget).await?;
    }
    Ok(())
}

/// The unpacked size of the tarball at `path` (see `Listing`); over `budget`
/// it is refused. `what` names the file in other errors.
async fn tarball(path: &Path, what: &str, budget: Budget) -> Result<u64, BackendError> {
    // Read exactly as the unpack will read it (`tarball::reading`). Numeric
    // owners and escaped names keep every line `mode uid/gid size date time
    // name`.
    let mut cmd = tarball::reading(path, &[]).await?;
    cmd.args([
        "--list",
        "--verbose",
        "--numeric-owner",
        "--quoting-style=escape",
    ]);
    let (mut child, mut group) = ProcessGroup::spawn_reading(&mut cmd)
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("running tar: {e}")))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let measured = async {
        let mut listing = Listing::default();
        let mut buf = [0u8; 8192];
        loop {
            let n = stdout.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            listing.feed(&buf[..n]);
            if listing.total > budget.left {
                return Ok(None);
            }
        }
        listing.finish();
        let (status, _) = group.finish(&mut child).await?;
        Ok::<_, std::io::Error>(Some((status, listing.total)))
    };
    // Over the budget or out of time, `group` is dropped on the way out,
    // which kills tar and its decompressor.
    match tokio::time::timeout(LIST_TIMEOUT, measured).await {
        Err(_) => Err(BackendError::BadRequest(format!(
            "{what} could not be read within {}s",
            LIST_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(BackendError::Internal(anyhow::anyhow!("running tar: {e}"))),
        Ok(Ok(None)) => Err(budget.refuse("the image once unpacked")),
        Ok(Ok(Some((status, _)))) if !status.success() => Err(BackendError::BadRequest(format!(
            "{what} is not a tarball lxgate can unpack (plain, gzip, bzip2, xz, lzma or zstd)"
        ))),
        Ok(Ok(Some((_, total)))) if total > budget.left => {
            Err(budget.refuse("the image once unpacked"))
        }
        Ok(Ok(Some((_, total)))) => Ok(total),
    }
}

/// What `Listing` sums from `chunks`, as they come out of the pipe.
pub(crate) fn listing_total<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut listing = Listing::default();
    for c in chunks {
        listing.feed(c);
    }
    listing.finish();
    listing.total
}

/// Sums what `tar --list --verbose --numeric-owner --quoting-style=escape`
/// prints as it streams in: one line per member, `mode uid/gid size date
/// time name`. Only the third field is read; the name, which the archive's
/// author chose, comes last (escaped, so never across lines) and is never
/// looked at. A device's `major,minor` counts as no data; a size too long
/// for a u64 counts as the largest.
#[derive(Debug, Default)]
struct Listing {
    /// Member data plus `HEADER` per member, saturating.
    total: u64,
    /// The field of the current line the next byte belongs to (0-based).
    field: u8,
    in_field: bool,
    /// Whether the current line has anything in it.
    started: bool,
    size: u64,
    size_is_number: bool,
}

impl Listing {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\n' => self.end_line(),
                b' ' | b'\t' => {
                    if self.in_field {
                        self.in_field = false;
                        self.field = self.field.saturating_add(1);
                    }
                }
                _ => {
                    if !self.in_field {
                        self.in_field = true;
                        self.started = true;
                        if self.field == 2 {
                            self.size = 0;
                            self.size_is_number = true;
                        }
                    }
                    if self.field == 2 && self.size_is_number {
                        if b.is_ascii_digit() {
                            self.size = self
                                .size
                                .saturating_mul(10)
                                .saturating_add(u64::from(b - b'0'));
                        } else {
                            self.size_is_number = false;
                        }
                    }
                }
            }
        }
    }

    /// The last line may lack its newline.
    fn finish(&mut self) {
        self.end_line();
    }

    fn end_line(&mut self) {
        if self.started {
            let data = if self.size_is_number { self.size } else { 0 };
            self.total = self.total.saturating_add(data).saturating_add(HEADER);
        }
        *self = Self {
            total: self.total,
            ..Self::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(text: &str, chunk: usize) -> u64 {
        listing_total(text.as_bytes().chunks(chunk))
    }

    #[test]
    fn a_listing_sums_sizes_and_headers_whatever_the_names_say() {
        let text = "\
-rw-r--r-- 0/0      2147483648 2026-11-30 04:21 big
-rw-r--r-- 0/0               2 2026-11-30 04:21 a b\\nc 99999999 x
drwxr-xr-x 0/0               0 2026-11-30 04:21 d/
lrwxrwxrwx 0/0               0 2026-11-30 04:21 d/l -> 12345
crw-rw-rw- 0/0             1,3 2026-11-30 04:21 dev/null
hrw-r--r-- 0/0               0 2026-11-30 04:21 hl link to big";
        let want = 2147483648 + 2 + 6 * HEADER;
        // However the pipe cuts it.
        for chunk in [1, 3, 7, 64, 4096] {
            assert_eq!(sum(text, chunk), want, "chunk {chunk}");
        }
        assert_eq!(sum("", 1), 0);
        assert_eq!(sum("\n\n", 1), 0);
    }

    #[test]
    fn a_size_past_u64_counts_as_the_largest() {
        assert_eq!(
            sum("-rw-r--r-- 0/0 99999999999999999999999 d t x\n", 5),
            u64::MAX
        );
    }

    fn tar(dir: &Path, args: &[&str]) {
        let ok = std::process::Command::new("tar")
            .current_dir(dir)
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "tar {args:?}");
    }

    #[tokio::test]
    async fn a_sparse_bomb_is_refused_and_a_small_tarball_measured() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("small"), vec![7u8; 1000]).unwrap();
        std::fs::File::create(d.join("huge"))
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        tar(d, &["-czf", "small.tar.gz", "small"]);
        // A terabyte, sparse: a few hundred bytes on the wire.
        tar(d, &["-cSJf", "bomb.tar.xz", "huge"]);
        assert!(std::fs::metadata(d.join("bomb.tar.xz")).unwrap().len() < 4096);

        let size = tarball(&d.join("small.tar.gz"), "x", Budget::new(1 << 20))
            .await
            .unwrap();
        assert_eq!(size, 1000 + HEADER);
        let e = tarball(&d.join("bomb.tar.xz"), "x", Budget::new(64 << 20))
            .await
            .unwrap_err();
        assert!(matches!(e, BackendError::ImageTooLarge(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the image once unpacked is larger than MAX_IMAGE_BYTES allows (64 MiB)"
        );
        let e = tarball(&d.join("small"), "the rootfs", Budget::new(1 << 20))
            .await
            .unwrap_err();
        assert!(
            e.to_string().starts_with("the rootfs is not a tarball"),
            "{e}"
        );
    }
}
