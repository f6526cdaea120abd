//! How lxgate runs `tar` on an image file it did not make (measuring it,
//! reading `metadata.yaml`, unpacking a rootfs or a VM's kernel and initrd):
//! always the same way, so that what is measured is what gets unpacked.
//!
//! * The compression is decided once, from the file's first bytes, and tar
//!   reads the file on stdin with that decompressor named. Left to itself,
//!   GNU tar takes a file whose first block is a valid ustar header for a
//!   plain archive even when the same bytes are also a gzip stream (a
//!   gzip "extra field" can hide the tar header), so a listing and a
//!   decompressing unpack could see two different archives.
//! * tar and its decompressor run under a data-size limit (`prlimit`): GNU
//!   tar reads a long-name or pax header whole into memory, so a few KiB of
//!   compressed upload could otherwise ask for gigabytes. Past the limit
//!   tar fails, and the image with it.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::backend::BackendError;

/// The data segment tar and its decompressor may use. Real headers are a
/// few KiB; xz's largest dictionary is 64 MiB and zstd's default window
/// limit 128 MiB.
pub const MEMORY_LIMIT: u64 = 512 << 20;

fn io(what: &'static str) -> impl Fn(std::io::Error) -> BackendError {
    move |e| BackendError::Internal(anyhow::anyhow!("{what}: {e}"))
}

/// tar's decompression option for `path`, from its magic bytes (`None`: a
/// plain tarball, or not a tarball at all).
pub async fn compression(path: &Path) -> Result<Option<&'static str>, BackendError> {
    let mut head = [0u8; 6];
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(io("opening an image file"))?;
    let mut n = 0;
    while n < head.len() {
        match f
            .read(&mut head[n..])
            .await
            .map_err(io("reading an image file"))?
        {
            0 => break,
            k => n += k,
        }
    }
    Ok(compression_of(&head[..n]))
}

fn compression_of(head: &[u8]) -> Option<&'static str> {
    Some(match head {
        [0x1f, 0x8b, ..] => "--gzip",
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => "--xz",
        [b'B', b'Z', b'h', ..] => "--bzip2",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "--zstd",
        [0x5d, 0x00, 0x00, ..] => "--lzma",
        _ => return None,
    })
}

/// `tar --file -` reading the image file `path` on stdin, its decompressor
/// named, under the memory limit; `wrapper` (a program and its arguments,
/// e.g. `lxc-usernsexec ... --`) runs tar if given. The caller adds the
/// operation (`--list`, `--extract`, ...).
pub async fn reading(path: &Path, wrapper: &[&OsStr]) -> Result<Command, BackendError> {
    let flag = compression(path).await?;
    let input = tokio::fs::File::open(path)
        .await
        .map_err(io("opening an image file"))?
        .into_std()
        .await;
    let mut cmd = Command::new("prlimit");
    // The limit is inherited through the wrapper's exec and by the
    // decompressor tar starts.
    cmd.arg(format!("--data={MEMORY_LIMIT}:{MEMORY_LIMIT}"))
        .arg("--")
        .args(wrapper)
        .args(["tar", "--file", "-"])
        .args(flag)
        .stdin(Stdio::from(input));
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_comes_from_the_magic_bytes() {
        assert_eq!(compression_of(&[0x1f, 0x8b, 8, 0]), Some("--gzip"));
        assert_eq!(compression_of(b"\xfd7zXZ\x00"), Some("--xz"));
        assert_eq!(compression_of(b"BZh9"), Some("--bzip2"));
        assert_eq!(compression_of(&[0x28, 0xb5, 0x2f, 0xfd]), Some("--zstd"));
        assert_eq!(compression_of(b"./rootfs"), None);
        assert_eq!(compression_of(&[]), None);
    }
}
