//! The soak (`make soak`, issue 14 item 6): one lxgate server held at a
//! steady mixed load for a while, its resident memory, open descriptors and
//! threads sampled from `/proc/<pid>` with their slope reported, and every
//! error counted. The load, per server:
//!
//! * `rest` clients each calling, one after the other with a short pause,
//!   the instance list, one instance, `auth/me` and the operations list;
//! * `subscribers` WebSockets on `/api/v1/events/ws`, which must all still
//!   be open at the end;
//! * `execs` loops of recorded exec sessions (`echo`) in the soak's
//!   containers, which also feed the event stream.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

pub struct Load {
    pub rest: usize,
    pub subscribers: usize,
    pub execs: usize,
    pub duration: Duration,
    /// Containers the load reads and runs commands in (started).
    pub instances: Vec<String>,
}

#[derive(Default)]
struct Counts {
    requests: AtomicUsize,
    errors: AtomicUsize,
    execs: AtomicUsize,
    exec_errors: AtomicUsize,
    events: AtomicUsize,
    dropped_sockets: AtomicUsize,
}

/// One sample of the server process.
#[derive(Clone, Copy)]
struct Sample {
    at: f64,
    rss_mib: f64,
    fds: f64,
    threads: f64,
}

fn sample(pid: u32, since: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64;
    Some(Sample {
        at: since.elapsed().as_secs_f64(),
        rss_mib: field("VmRSS:")? / 1024.0,
        fds,
        threads: field("Threads:")?,
    })
}

/// The socket inodes of `pid`'s network namespace in `/proc/<pid>/net/<table>`.
fn socket_inodes(pid: u32, table: &str) -> HashSet<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
    // The inode is the last column of `unix`, the tenth of `tcp`/`tcp6`.
    let column = if table == "unix" { 6 } else { 9 };
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(column).map(str::to_owned))
        .collect()
}

/// `pid`'s open descriptors by what they are: `socket (tcp)`, `socket
/// (unix)`, `pipe`, anonymous inodes by kind (`eventpoll`, `pidfd`...),
/// devices by path, other files by name. Where a descriptor slope comes
/// from is read off the difference between two of these.
fn fd_kinds(pid: u32) -> BTreeMap<String, usize> {
    let unix = socket_inodes(pid, "unix");
    let tcp: HashSet<String> = ["tcp", "tcp6"]
        .iter()
        .flat_map(|t| socket_inodes(pid, t))
        .collect();
    let mut kinds = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return kinds;
    };
    for entry in dir.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let kind = if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
        {
            match (tcp.contains(inode), unix.contains(inode)) {
                (true, _) => "socket (tcp)".to_owned(),
                (_, true) => "socket (unix)".to_owned(),
                _ => "socket (other)".to_owned(),
            }
        } else if target.starts_with("pipe:") {
            "pipe".to_owned()
        } else if let Some(anon) = target.strip_prefix("anon_inode:") {
            anon.trim_matches(['[', ']']).to_owned()
        } else if target.starts_with("/dev/") {
            target.into_owned()
        } else {
            let name = target.rsplit('/').next().unwrap_or_default();
            format!("file {name}")
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

/// What changed between two `fd_kinds`, e.g. `pipe 4 → 60, socket (tcp) 210 → 212`.
fn fd_change(before: &BTreeMap<String, usize>, after: &BTreeMap<String, usize>) -> String {
    let kinds: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let parts: Vec<String> = kinds
        .into_iter()
        .map(|k| {
            let (b, a) = (before.get(k).unwrap_or(&0), after.get(k).unwrap_or(&0));
            format!("{k} {b} → {a}")
        })
        .collect();
    parts.join(", ")
}

/// Least-squares slope of `y` over time, per minute.
fn slope_per_min(samples: &[Sample], y: impl Fn(&Sample) -> f64) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = samples.iter().map(|s| s.at).sum::<f64>() / n;
    let my = samples.iter().map(&y).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in samples {
        num += (s.at - mx) * (y(s) - my);
        den += (s.at - mx) * (s.at - mx);
    }
    if den == 0.0 { 0.0 } else { num / den * 60.0 }
}

/// Runs the soak against `base` (the server's pid `pid`) and returns one
/// Markdown table row.
pub async fn run(
    label: &str,
    http: reqwest::Client,
    base: &str,
    token: &str,
    pid: u32,
    load: &Load,
) -> (String, String) {
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();

    let ws_base = base.replacen("http", "ws", 1);
    let mut sockets = Vec::new();
    for _ in 0..load.subscribers {
        let url = format!("{ws_base}/api/v1/events/ws?token={token}");
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => sockets.push(ws),
            Err(_) => {
                counts.dropped_sockets.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    for mut ws in sockets {
        let (counts, stop) = (counts.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                    Err(_) => {}
                    Ok(Some(Ok(_))) => {
                        counts.events.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        counts.dropped_sockets.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }

    for i in 0..load.rest {
        let (counts, stop, http) = (counts.clone(), stop.clone(), http.clone());
        let (base, token) = (base.to_owned(), token.to_owned());
        let name = load.instances[i % load.instances.len()].clone();
        tasks.push(tokio::spawn(async move {
            let paths = [
                "/api/v1/instances".to_owned(),
                format!("/api/v1/instances/{name}"),
                "/api/v1/auth/me".to_owned(),
                "/api/v1/operations".to_owned(),
            ];
            let mut k = i;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let url = format!("{base}{}", paths[k % paths.len()]);
                let ok = match http.get(&url).bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                counts.requests.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }

    for i in 0..load.execs {
        let (counts, stop, http) = (counts.clone(), stop.clone(), http.clone());
        let (base, token) = (base.to_owned(), token.to_owned());
        let name = load.instances[i % load.instances.len()].clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(format!("{base}/api/v1/instances/{name}/exec?wait=30"))
                    .bearer_auth(&token)
                    .json(&json!({"command": ["echo", "soak"]}))
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) if r.status().is_success() => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["status_code"] == 200 && v["metadata"]["return"] == 0),
                    _ => false,
                };
                counts.execs.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    counts.exec_errors.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }

    let fds_at_start = fd_kinds(pid);
    let mut samples = Vec::new();
    while started.elapsed() < load.duration {
        if let Some(s) = sample(pid, started) {
            samples.push(s);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if let Some(s) = sample(pid, started) {
        samples.push(s);
    }
    let fds_at_end = fd_kinds(pid);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let c = &counts;
    let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    let row = format!(
        "| {label} | {:.0} s | {} | {} | {} | {} | {} / {} | {} | {:.1} → {:.1} MiB ({:+.2}/min) | {:.0} → {:.0} ({:+.2}/min) | {:.0} → {:.0} ({:+.2}/min) |",
        started.elapsed().as_secs_f64(),
        get(&c.requests),
        get(&c.errors),
        get(&c.execs),
        get(&c.exec_errors),
        load.subscribers - get(&c.dropped_sockets),
        load.subscribers,
        get(&c.events),
        first.rss_mib,
        last.rss_mib,
        slope_per_min(&samples, |s| s.rss_mib),
        first.fds,
        last.fds,
        slope_per_min(&samples, |s| s.fds),
        first.threads,
        last.threads,
        slope_per_min(&samples, |s| s.threads),
    );
    let fds = format!(
        "{label}: open descriptors by kind, under load at the start → at the end: {}",
        fd_change(&fds_at_start, &fds_at_end)
    );
    (row, fds)
}

pub const HEADER: &str = "| backend | ran | REST requests | REST errors | exec sessions | exec errors | subscribers open at the end | events received | RSS (slope) | open fds (slope) | threads (slope) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |";
