//! What this host can run: LXC and QEMU versions, and an honest choice of VM
//! accelerator (KVM only when the CPU and /dev/kvm really allow it).

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::backend::DriverInfo;
use crate::config::VmAccel;

/// First line of `program args`, if it runs within two seconds.
async fn first_line(program: &str, args: &[&str]) -> Result<String, String> {
    let run = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(2), run).await {
        Err(_) => Err(format!("`{program}` did not answer in time")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("`{program}` is not installed"))
        }
        Ok(Err(e)) => Err(format!("`{program}` could not run: {e}")),
        Ok(Ok(out)) if !out.status.success() => Err(format!("`{program}` failed: {}", out.status)),
        Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()),
    }
}

pub async fn lxc() -> DriverInfo {
    let version = first_line("lxc-start", &["--version"]).await;
    DriverInfo {
        name: "lxc".into(),
        instance_type: "container".into(),
        available: version.is_ok(),
        detail: version.as_ref().err().cloned(),
        version: version.ok(),
    }
}

/// `QEMU emulator version 10.0.2 (Debian ...)` -> `10.0.2`.
fn qemu_version(line: &str) -> Option<String> {
    line.split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .map(str::to_owned)
}

/// Whether KVM can really run guests: the CPU must expose vmx or svm and
/// /dev/kvm must open read-write. A /dev/kvm alone is not enough (nested
/// virtualisation without the flags hangs guests at boot).
pub async fn kvm_usable() -> Result<(), String> {
    let cpuinfo = tokio::fs::read_to_string("/proc/cpuinfo")
        .await
        .map_err(|e| format!("cannot read /proc/cpuinfo: {e}"))?;
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !has_flag {
        return Err("the CPU exposes no vmx/svm flag".into());
    }
    tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .await
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm is not usable: {e}"))
}

/// The accelerator VMs will use under `pref`, and why.
pub async fn choose_accel(pref: VmAccel) -> (&'static str, String) {
    match pref {
        VmAccel::Tcg => ("tcg", "EMBEDDED_VM_ACCEL=tcg".into()),
        VmAccel::Kvm => ("kvm", "EMBEDDED_VM_ACCEL=kvm".into()),
        VmAccel::Auto => match kvm_usable().await {
            Ok(()) => ("kvm", "hardware virtualisation available".into()),
            Err(why) => ("tcg", format!("software emulation: {why}")),
        },
    }
}

pub async fn qemu(pref: VmAccel) -> DriverInfo {
    let line = first_line("qemu-system-x86_64", &["--version"]).await;
    let (accel, why) = choose_accel(pref).await;
    let user = match qemu_user().await {
        Some(u) => format!("runs as {u}"),
        None => format!("runs as root: no {QEMU_USER} user, or lxgate is not root"),
    };
    DriverInfo {
        name: "qemu".into(),
        instance_type: "virtual-machine".into(),
        available: line.is_ok(),
        version: line.as_deref().ok().and_then(qemu_version),
        detail: Some(match line {
            Ok(_) => format!("accelerator {accel} ({why}); seccomp sandbox, {user}"),
            Err(e) => e,
        }),
    }
}

/// The unprivileged user QEMU switches to once it has opened its disks,
/// sockets and taps (scripts/host-setup.sh creates it).
pub const QEMU_USER: &str = "lxgate-qemu";

/// `QEMU_USER` when QEMU can switch to it here: lxgate runs as root (QEMU
/// inherits the right to change users) and the user exists. A local user in
/// /etc/passwd, as host-setup.sh makes it.
pub async fn qemu_user() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = tokio::fs::read_to_string("/etc/passwd").await.ok()?;
    passwd
        .lines()
        .any(|l| l.split(':').next() == Some(QEMU_USER))
        .then_some(QEMU_USER)
}

pub async fn kernel_release() -> Option<String> {
    tokio::fs::read_to_string("/proc/sys/kernel/osrelease")
        .await
        .ok()
        .map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_version_is_parsed() {
        assert_eq!(
            qemu_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)")
                .as_deref(),
            Some("10.0.2")
        );
        assert_eq!(qemu_version("garbage"), None);
    }
}
