//! Amounts in instance, project and volume config as Incus writes them:
//! byte sizes (`limits.memory`, a block volume's `size`) and CPUs
//! (`limits.cpu`).

/// `limits.memory` ("512MiB", "1GB", "268435456") in bytes.
pub fn parse_size(value: &str) -> Option<u64> {
    let v = value.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    let bytes = num * mult as f64;
    (1.0..1e18).contains(&bytes).then_some(bytes as u64)
}

/// `limits.cpu`: a count ("2") or a CPU set ("0-1", "0,2") as a cpuset list.
pub fn parse_cpus(value: &str) -> Option<String> {
    let v = value.trim();
    if let Ok(n) = v.parse::<u32>() {
        return (1..=1024).contains(&n).then(|| format!("0-{}", n - 1));
    }
    let valid = !v.is_empty()
        && v.split(',').all(|part| {
            let mut ends = part.splitn(2, '-');
            ends.all(|e| !e.is_empty() && e.len() <= 4 && e.bytes().all(|b| b.is_ascii_digit()))
        });
    valid.then(|| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cpus() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12XB"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_cpus("2").as_deref(), Some("0-1"));
        assert_eq!(parse_cpus("0,2-3").as_deref(), Some("0,2-3"));
        assert_eq!(parse_cpus("0;rm"), None);
        assert_eq!(parse_cpus("0\nlxc.hook.pre-start = /x"), None);
    }
}
