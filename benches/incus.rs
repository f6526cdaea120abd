//! Load generator for the Incus-backend benchmark (issue 3, DESIGN §9), run by
//! `scripts/bench-incus.sh` against a running lxgate and the incusd behind it.
//! Every measurement has a reference taken in the same run, straight to
//! incusd's unix socket with the same client code:
//!
//! * `list`: `GET /api/v1/instances` through lxgate (its list cache on, as
//!   deployed, and a second lxgate with it off) vs `GET /1.0/instances` on
//!   the socket and through a plain nginx proxy of it (recursion 0 and 1,
//!   same concurrency and duration, alternating rounds); then `auth/me` vs
//!   `/health` on lxgate.
//! * `events`: N WebSocket subscribers on lxgate's relay plus one direct
//!   `/1.0/events` subscriber while generators PATCH instances on incusd;
//!   delivery rate and latency from the event's own timestamp.
//! * `exec`: bytes pushed through `cat` in an interactive exec, relayed by
//!   lxgate vs Incus's own exec websocket.
//!
//! Configuration comes from the environment (cargo bench passes its own
//! flags); see the script. Output: Markdown table rows on stdout.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{load, ms, pct};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Cfg {
    lxgate: String,
    token: String,
    socket: PathBuf,
    duration: Duration,
    conns: usize,
    subscribers: usize,
    generators: Vec<String>,
    exec_instance: String,
    exec_mib: usize,
}

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} must be set (run scripts/bench-incus.sh)"))
}

fn num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number")))
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Res<()> {
    // `cargo test --all-targets` runs this too (without `--bench`): nothing to do.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("the Incus benchmark runs through scripts/bench-incus.sh");
        return Ok(());
    }
    let cfg = Arc::new(Cfg {
        lxgate: var("BENCH_LXGATE_URL"),
        token: var("BENCH_TOKEN"),
        socket: var("BENCH_INCUS_SOCKET").into(),
        duration: Duration::from_secs(num("BENCH_DURATION", 10) as u64),
        conns: num("BENCH_CONNECTIONS", 16),
        subscribers: num("BENCH_SUBSCRIBERS", 200),
        generators: var("BENCH_EVENT_INSTANCES")
            .split(',')
            .map(str::to_owned)
            .collect(),
        exec_instance: var("BENCH_EXEC_INSTANCE"),
        exec_mib: num("BENCH_EXEC_MIB", 64),
    });
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wants = |what: &str| only.is_empty() || only.split(',').any(|o| o == what);
    if wants("list") {
        list(&cfg).await?;
    }
    if wants("events") {
        events(&cfg).await?;
    }
    if wants("exec") {
        exec(&cfg).await?;
    }
    Ok(())
}

// ------------------------------------------------------------------ list ---

/// One side of a comparison: what the same client calls, and how.
struct Target {
    name: String,
    /// Through incusd's unix socket rather than TCP.
    socket: Option<PathBuf>,
    url: String,
    token: Option<String>,
}

impl Target {
    /// A client of its own for each run, dropped with its idle connections
    /// when the run ends: incusd peeks at the first bytes of each new
    /// connection in its accept loop, so a pooled connection opened in a
    /// connect race and never written to stalls it for every later client
    /// (see `IncusClient::new`) until it is closed.
    fn client(&self) -> reqwest::Client {
        match &self.socket {
            Some(p) => reqwest::Client::builder().unix_socket(p.clone()).build(),
            None => reqwest::Client::builder().build(),
        }
        .expect("an HTTP client")
    }
}

/// The loads of `targets` (the first is the reference) over `rounds`
/// rounds, each round starting with the next target so that none always
/// runs on a machine warmed (or tired) by the others; prints one row per
/// target with the medians over the rounds.
async fn compare(cfg: &Cfg, what: &str, targets: &[Target]) {
    let rounds = num("BENCH_ROUNDS", 3).max(1);
    let warm = Duration::from_secs(2);
    for t in targets {
        load(t.client(), t.url.clone(), t.token.clone(), cfg.conns, warm).await;
    }
    let mut runs: Vec<Vec<common::Load>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            let t = &targets[i];
            eprintln!("[bench] {what}: round {}/{rounds}, {}", round + 1, t.name);
            let l = load(
                t.client(),
                t.url.clone(),
                t.token.clone(),
                cfg.conns,
                cfg.duration,
            )
            .await;
            runs[i].push(l);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rps = |i: usize| median(runs[i].iter().map(common::Load::rps).collect());
    let p = |i: usize, q: f64| {
        Duration::from_secs_f64(median(
            runs[i]
                .iter()
                .map(|l| pct(&l.latencies, q).as_secs_f64())
                .collect(),
        ))
    };
    println!(
        "| {what} | concurrency | req/s (median of {rounds}) | p50 | p99 | req/s vs {} | per round | errors |",
        targets[0].name
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |");
    for (i, t) in targets.iter().enumerate() {
        let per_round: Vec<f64> = runs[i]
            .iter()
            .zip(&runs[0])
            .map(|(l, r)| l.rps() / r.rps())
            .collect();
        let (lo, hi) = per_round
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        println!(
            "| {} | {} | {:.0} | {} | {} | {:.2}× | {lo:.2}-{hi:.2} | {} |",
            t.name,
            cfg.conns,
            rps(i),
            ms(p(i, 0.5)),
            ms(p(i, 0.99)),
            rps(i) / rps(0),
            runs[i].iter().map(|l| l.errors).sum::<usize>()
        );
    }
    println!();
}

async fn list(cfg: &Cfg) -> Res<()> {
    let direct = reqwest::Client::builder()
        .unix_socket(cfg.socket.clone())
        .build()?;
    let http = reqwest::Client::builder().build()?;
    let nginx = var("BENCH_NGINX_URL");
    // Counted with a client dropped right after (see `Target::client`).
    // Same number of instances on every side, checked rather than assumed.
    let n_direct = direct
        .get("http://incus/1.0/instances")
        .send()
        .await?
        .json::<Value>()
        .await?["metadata"]
        .as_array()
        .map_or(0, Vec::len);
    drop(direct);
    let n_lxgate = http
        .get(format!(
            "{}/api/v1/instances?expand=false&limit=1000",
            cfg.lxgate
        ))
        .bearer_auth(&cfg.token)
        .send()
        .await?
        .json::<Value>()
        .await?["total"]
        .as_u64()
        .unwrap_or(0) as usize;
    assert_eq!(
        n_direct, n_lxgate,
        "both sides must list the same instances"
    );
    eprintln!("[bench] list: {n_direct} instances");
    for (recursion, expand, label) in [(0, "false", "names"), (1, "true", "objects")] {
        let side = |name: &str, socket: bool, url: String, token: Option<String>| Target {
            name: name.to_owned(),
            socket: socket.then(|| cfg.socket.clone()),
            url,
            token,
        };
        let targets = [
            side(
                "incusd's socket",
                true,
                format!("http://incus/1.0/instances?recursion={recursion}"),
                None,
            ),
            side(
                "nginx → socket",
                false,
                format!("{nginx}/1.0/instances?recursion={recursion}"),
                // The key nginx wants (it serves root's Incus API).
                Some(var("BENCH_NGINX_KEY")),
            ),
            side(
                "lxgate, list cache off",
                false,
                format!(
                    "{}/api/v1/instances?expand={expand}&limit=1000",
                    var("BENCH_UNCACHED_URL")
                ),
                Some(var("BENCH_UNCACHED_TOKEN")),
            ),
            side(
                "lxgate",
                false,
                format!("{}/api/v1/instances?expand={expand}&limit=1000", cfg.lxgate),
                Some(cfg.token.clone()),
            ),
        ];
        let what = format!(
            "`GET instances`, {n_direct} as {label} (recursion {recursion}, `expand={expand}`)"
        );
        compare(cfg, &what, &targets).await;
    }
    // An authenticated call that needs no backend, against lxgate's floor.
    let targets = [
        Target {
            name: "`GET /health`".into(),
            socket: None,
            url: format!("{}/health", cfg.lxgate),
            token: None,
        },
        Target {
            name: "`GET /api/v1/auth/me`".into(),
            socket: None,
            url: format!("{}/api/v1/auth/me", cfg.lxgate),
            token: Some(cfg.token.clone()),
        },
    ];
    compare(cfg, "lxgate without a backend call", &targets).await;
    Ok(())
}

// ---------------------------------------------------------------- events ---

type Ws<S> = tokio_tungstenite::WebSocketStream<S>;

async fn unix_ws(socket: &PathBuf, path: &str) -> Res<Ws<UnixStream>> {
    let stream = UnixStream::connect(socket).await?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://incus{path}"), stream).await?;
    Ok(ws)
}

/// The fields of a lifecycle event a subscriber reads; the rest is skipped.
#[derive(serde::Deserialize)]
struct Lifecycle<'a> {
    #[serde(borrow)]
    timestamp: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    metadata: LifecycleMeta<'a>,
}

#[derive(serde::Deserialize, Default)]
struct LifecycleMeta<'a> {
    #[serde(borrow, default)]
    action: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    source: std::borrow::Cow<'a, str>,
}

/// What one subscriber saw of the generated events.
#[derive(Default)]
struct Seen {
    count: u64,
    latencies: Vec<Duration>,
}

/// Reads events until `done`, keeping the latency of each generated one.
async fn subscribe<S>(mut ws: Ws<S>, done: Arc<AtomicBool>, prefix: String) -> Seen
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut seen = Seen::default();
    while !done.load(Ordering::Relaxed) {
        let msg = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(m))) => m,
            Ok(_) => break,
        };
        let Message::Text(text) = msg else { continue };
        let now = OffsetDateTime::now_utc();
        // Only the three fields read, borrowed: a thousand subscribers
        // building a whole `Value` per event would be the load generator
        // competing with lxgate for the same two cores.
        let Ok(event) = serde_json::from_str::<Lifecycle>(&text) else {
            continue;
        };
        let ours = event.metadata.action == "instance-updated"
            && event.metadata.source.starts_with(&prefix);
        if !ours {
            continue;
        }
        let Ok(ts) = OffsetDateTime::parse(&event.timestamp, &Rfc3339) else {
            continue;
        };
        seen.count += 1;
        seen.latencies
            .push(Duration::try_from(now - ts).unwrap_or(Duration::ZERO));
    }
    seen
}

async fn events(cfg: &Cfg) -> Res<()> {
    // Only the generators' own instances count (others may change meanwhile).
    let prefix = format!(
        "/1.0/instances/{}-",
        cfg.generators[0]
            .rsplit_once('-')
            .map_or(cfg.generators[0].as_str(), |(p, _)| p)
    );
    let done = Arc::new(AtomicBool::new(false));
    let ws_base = cfg.lxgate.replacen("http", "ws", 1);
    eprintln!("[bench] events: connecting {} subscribers", cfg.subscribers);
    let rss_before = lxgate_rss_mib();
    let mut subs = Vec::new();
    for _ in 0..cfg.subscribers {
        let url = format!(
            "{ws_base}/api/v1/events/ws?type=lifecycle&token={}",
            cfg.token
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        subs.push(tokio::spawn(subscribe(ws, done.clone(), prefix.clone())));
    }
    let direct = unix_ws(&cfg.socket, "/1.0/events?type=lifecycle").await?;
    let reference = tokio::spawn(subscribe(direct, done.clone(), prefix.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = lxgate_rss_mib();

    eprintln!("[bench] events: generating for {:?}", cfg.duration);
    let client = reqwest::Client::builder()
        .unix_socket(cfg.socket.clone())
        .build()?;
    let generated = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + cfg.duration;
    let started = Instant::now();
    let mut gens = Vec::new();
    for name in &cfg.generators {
        let (client, generated) = (client.clone(), generated.clone());
        let url = format!("http://incus/1.0/instances/{name}");
        gens.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < stop {
                i += 1;
                let r = client
                    .patch(&url)
                    .json(&json!({"config": {"user.bench": i.to_string()}}))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    generated.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for g in gens {
        g.await?;
    }
    let gen_elapsed = started.elapsed();
    // Let the last events drain, then stop everyone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::Relaxed);
    let generated = generated.load(Ordering::Relaxed);
    let reference = reference.await?;
    let mut delivered = 0u64;
    let mut complete = 0usize;
    let mut lat = Vec::new();
    for s in subs {
        let seen = s.await?;
        delivered += seen.count;
        if seen.count >= generated {
            complete += 1;
        }
        lat.extend(seen.latencies);
    }
    lat.sort();
    let mut ref_lat = reference.latencies;
    ref_lat.sort();
    let secs = gen_elapsed.as_secs_f64();
    println!(
        "| scenario | subscribers | events generated | events/s generated | deliveries/s | subscribers that got every event | latency p50 | latency p99 | added p50 | added p99 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| direct `/1.0/events` subscriber on incusd's socket (reference) | 1 | {generated} | {:.0} | {:.0} | {} | {} | {} | — | — |",
        generated as f64 / secs,
        reference.count as f64 / secs,
        usize::from(reference.count >= generated),
        ms(pct(&ref_lat, 0.5)),
        ms(pct(&ref_lat, 0.99)),
    );
    println!(
        "| lxgate `WS /api/v1/events/ws` relay | {} | {generated} | {:.0} | {:.0} | {complete} | {} | {} | +{} | +{} |",
        cfg.subscribers,
        generated as f64 / secs,
        delivered as f64 / secs,
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(pct(&lat, 0.5).saturating_sub(pct(&ref_lat, 0.5))),
        ms(pct(&lat, 0.99).saturating_sub(pct(&ref_lat, 0.99))),
    );
    println!();
    println!(
        "lxgate's resident memory (VmRSS) with the {} subscribers connected and idle: {rss_idle:.0} MiB (before they connected: {rss_before:.0} MiB).",
        cfg.subscribers
    );
    println!();
    Ok(())
}

/// lxgate's resident memory now, in MiB (`BENCH_LXGATE_PID`'s VmRSS).
fn lxgate_rss_mib() -> f64 {
    let pid = var("BENCH_LXGATE_PID");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

// ------------------------------------------------------------------ exec ---

/// Makes the terminal a transparent pipe, says so, then echoes stdin back.
const CAT: &str = "busybox stty raw -echo && echo READY && exec busybox cat";

/// Pushes `mib` MiB through `cat` on an open terminal socket and returns the
/// round-trip throughput in MB/s (input bytes per second).
async fn pump<S>(ws: Ws<S>, mib: usize) -> Res<f64>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = ws.split();
    // Wait for the marker; whatever follows it is already payload.
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut already = loop {
        let msg = tokio::time::timeout_at(deadline.into(), rx.next())
            .await
            .map_err(|_| "no READY from the command")?
            .ok_or("socket closed before READY")??;
        if let Message::Binary(b) = msg {
            buf.extend_from_slice(&b);
            if let Some(i) = buf.windows(5).position(|w| w == b"READY") {
                let rest = &buf[i + 5..];
                let skip = rest
                    .iter()
                    .take_while(|c| **c == b'\r' || **c == b'\n')
                    .count();
                break rest.len() - skip;
            }
        }
    };
    let total = mib * 1024 * 1024;
    let chunk: Vec<u8> = (0..32 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            tx.send(Message::Binary(chunk[..n].to_vec().into())).await?;
            sent += n;
        }
        Ok::<_, tokio_tungstenite::tungstenite::Error>(tx)
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    while already < total {
        let msg = tokio::time::timeout_at(deadline.into(), rx.next())
            .await
            .map_err(|_| "cat stalled")?
            .ok_or("socket closed mid-stream")??;
        if let Message::Binary(b) = msg {
            already += b.len();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let mut tx = writer.await??;
    let _ = tx.close().await;
    Ok(total as f64 / 1e6 / secs)
}

async fn exec(cfg: &Cfg) -> Res<()> {
    let name = &cfg.exec_instance;
    // Direct: Incus's own interactive exec, fds 0 and control over the socket.
    let client = reqwest::Client::builder()
        .unix_socket(cfg.socket.clone())
        .build()?;
    let op: Value = client
        .post(format!("http://incus/1.0/instances/{name}/exec"))
        .json(&json!({
            "command": ["sh", "-c", CAT],
            "interactive": true,
            "wait-for-websocket": true,
            "width": 80, "height": 24,
        }))
        .send()
        .await?
        .json()
        .await?;
    let id = op["metadata"]["id"].as_str().ok_or("no operation id")?;
    let fds = &op["metadata"]["metadata"]["fds"];
    let path = |fd: &str| {
        format!(
            "/1.0/operations/{id}/websocket?secret={}",
            fds[fd].as_str().unwrap_or_default()
        )
    };
    let data = unix_ws(&cfg.socket, &path("0")).await?;
    let control = unix_ws(&cfg.socket, &path("control")).await?;
    eprintln!(
        "[bench] exec: {} MiB through cat, straight to incusd",
        cfg.exec_mib
    );
    let direct = pump(data, cfg.exec_mib).await?;
    drop(control);

    let ws_base = cfg.lxgate.replacen("http", "ws", 1);
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("command", "sh")
        .append_pair("command", "-c")
        .append_pair("command", CAT)
        .append_pair("token", &cfg.token)
        .finish();
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("{ws_base}/api/v1/instances/{name}/exec/ws?{q}"))
            .await?;
    eprintln!(
        "[bench] exec: {} MiB through cat, relayed by lxgate",
        cfg.exec_mib
    );
    let relayed = pump(ws, cfg.exec_mib).await?;
    println!("| scenario | bytes through `cat` | MB/s | vs direct |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| Incus exec websocket straight on incusd's socket (reference) | {} MiB | {direct:.1} | 1.00× |",
        cfg.exec_mib
    );
    println!(
        "| lxgate `WS /api/v1/instances/{{name}}/exec/ws` relay | {} MiB | {relayed:.1} | {:.2}× |",
        cfg.exec_mib,
        relayed / direct
    );
    println!();
    Ok(())
}
