//! Load generator for the embedded-backend benchmark (issue 4), run by
//! `scripts/bench-embedded.sh` against two lxgate servers on the same host:
//! one with the embedded backend, one in front of the test bed's incusd (the
//! reference), measured in the same run with the same client code.
//!
//! * container create+start and stop+delete latency, embedded vs Incus;
//! * VM boot to the guest's console marker (embedded KVM driver, TCG here);
//! * `GET /api/v1/instances` with many containers, embedded vs Incus.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

mod common;
mod soak;
use common::{load, ms, pct};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} must be set (run scripts/bench-embedded.sh)"))
}

fn num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number")))
        .unwrap_or(default)
}

#[derive(Clone)]
struct Server {
    label: &'static str,
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Server {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Res<Value> {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() || (v.get("status_code").is_some() && v["status_code"] != 200) {
            return Err(format!("{} {path}: {status} {v}", self.label).into());
        }
        Ok(v)
    }
}

fn stats(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    let mean = d.iter().sum::<Duration>() / d.len().max(1) as u32;
    (pct(&d, 0.5), mean)
}

async fn lifecycle(s: &Server, n: usize) -> Res<(Vec<Duration>, Vec<Duration>)> {
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for i in 0..n {
        let name = format!("bench-lc-{i}");
        let t = Instant::now();
        s.call(
            reqwest::Method::POST,
            "/api/v1/instances?wait=120",
            Some(json!({"name": name, "source": {"type": "image", "alias": "busybox"}, "start": true})),
        )
        .await?;
        up.push(t.elapsed());
        let t = Instant::now();
        s.call(
            reqwest::Method::PUT,
            &format!("/api/v1/instances/{name}/state?wait=120"),
            Some(json!({"action": "stop", "force": true})),
        )
        .await?;
        s.call(
            reqwest::Method::DELETE,
            &format!("/api/v1/instances/{name}?wait=120"),
            None,
        )
        .await?;
        down.push(t.elapsed());
    }
    Ok((up, down))
}

async fn vm_boot(s: &Server, n: usize, marker: &str) -> Res<Vec<Duration>> {
    let mut out = Vec::new();
    let ws_base = s.base.replacen("http", "ws", 1);
    for i in 0..n {
        let name = format!("bench-vm-{i}");
        s.call(
            reqwest::Method::POST,
            "/api/v1/instances?wait=120",
            Some(json!({"name": name, "type": "virtual-machine",
                        "source": {"type": "image", "alias": "tinyvm"}})),
        )
        .await?;
        let t = Instant::now();
        s.call(
            reqwest::Method::POST,
            &format!("/api/v1/instances/{name}/start?wait=120"),
            Some(json!({})),
        )
        .await?;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!(
            "{ws_base}/api/v1/instances/{name}/console/ws?token={}",
            s.token
        ))
        .await?;
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !seen.contains(marker) {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
                Ok(Some(Ok(_))) => {}
                _ => return Err(format!("no boot marker from {name}").into()),
            }
        }
        out.push(t.elapsed());
        drop(ws);
        s.call(
            reqwest::Method::PUT,
            &format!("/api/v1/instances/{name}/state?wait=120"),
            Some(json!({"action": "stop", "force": true})),
        )
        .await?;
        s.call(
            reqwest::Method::DELETE,
            &format!("/api/v1/instances/{name}?wait=120"),
            None,
        )
        .await?;
    }
    Ok(out)
}

async fn fill(s: &Server, n: usize) -> Res<()> {
    for i in 0..n {
        s.call(
            reqwest::Method::POST,
            "/api/v1/instances?wait=120",
            Some(json!({"name": format!("bench-ls-{i}"), "source": {"type": "image", "alias": "busybox"}})),
        )
        .await?;
    }
    Ok(())
}

async fn drain(s: &Server, n: usize) {
    for i in 0..n {
        let _ = s
            .call(
                reqwest::Method::DELETE,
                &format!("/api/v1/instances/bench-ls-{i}?wait=120"),
                None,
            )
            .await;
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("the embedded benchmark runs through scripts/bench-embedded.sh");
        return Ok(());
    }
    let http = reqwest::Client::new();
    let embedded = Server {
        label: "embedded",
        base: var("BENCH_EMBEDDED_URL"),
        token: var("BENCH_EMBEDDED_TOKEN"),
        http: http.clone(),
    };
    let incus = Server {
        label: "incus",
        base: var("BENCH_INCUS_URL"),
        token: var("BENCH_INCUS_TOKEN"),
        http,
    };
    if std::env::var("BENCH_ONLY").is_ok_and(|o| o == "soak") {
        return soak_both(&embedded, &incus).await;
    }
    let n = num("BENCH_ITERATIONS", 10);
    let boots = num("BENCH_VM_BOOTS", 3);
    let list_n = num("BENCH_LIST_INSTANCES", 100);
    let conns = num("BENCH_CONNECTIONS", 16);
    let duration = Duration::from_secs(num("BENCH_DURATION", 10) as u64);
    let marker = var("BENCH_VM_MARKER");

    eprintln!("[bench] container lifecycle x{n}: Incus backend");
    let (i_up, i_down) = lifecycle(&incus, n).await?;
    eprintln!("[bench] container lifecycle x{n}: embedded backend");
    let (e_up, e_down) = lifecycle(&embedded, n).await?;
    let (iu50, iumean) = stats(i_up);
    let (eu50, eumean) = stats(e_up);
    let (id50, idmean) = stats(i_down);
    let (ed50, edmean) = stats(e_down);
    println!(
        "| container, {n} rounds each | Incus backend p50 | mean | embedded backend p50 | mean | embedded / Incus (p50) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "| create + start (`POST /api/v1/instances` `start:true`, `?wait=`) | {} | {} | {} | {} | {:.2}× |",
        ms(iu50),
        ms(iumean),
        ms(eu50),
        ms(eumean),
        ratio(eu50, iu50)
    );
    println!(
        "| stop (forced) + delete | {} | {} | {} | {} | {:.2}× |",
        ms(id50),
        ms(idmean),
        ms(ed50),
        ms(edmean),
        ratio(ed50, id50)
    );
    println!();

    eprintln!("[bench] VM boot to console marker x{boots}");
    let mut b = vm_boot(&embedded, boots, &marker).await?;
    b.sort();
    println!("| VM (embedded KVM driver, TCG) | runs | min | p50 | max |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| `start` request to the guest's boot marker on `console/ws` | {boots} | {} | {} | {} |",
        ms(b[0]),
        ms(pct(&b, 0.5)),
        ms(b[b.len() - 1])
    );
    println!();

    eprintln!("[bench] creating {list_n} containers on each backend");
    fill(&incus, list_n).await?;
    fill(&embedded, list_n).await?;
    // Warm both (connections, caches), then measure each in turn.
    let list = |s: &Server, secs: Duration| {
        load(
            s.http.clone(),
            format!("{}/api/v1/instances?limit=1000", s.base),
            Some(s.token.clone()),
            conns,
            secs,
        )
    };
    let warm = Duration::from_secs(2);
    list(&incus, warm).await;
    list(&embedded, warm).await;
    eprintln!("[bench] GET /api/v1/instances: Incus backend");
    let li = list(&incus, duration).await;
    eprintln!("[bench] GET /api/v1/instances: embedded backend");
    let le = list(&embedded, duration).await;
    println!(
        "| `GET /api/v1/instances`, {list_n} containers, {conns} concurrent | req/s | p50 | p99 | req/s vs Incus backend | errors |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (label, l) in [
        ("Incus backend (reference)", &li),
        ("embedded backend", &le),
    ] {
        println!(
            "| {label} | {:.0} | {} | {} | {:.2}× | {} |",
            l.rps(),
            ms(pct(&l.latencies, 0.5)),
            ms(pct(&l.latencies, 0.99)),
            l.rps() / li.rps().max(1e-9),
            l.errors
        );
    }
    println!();
    eprintln!("[bench] removing the {list_n} containers");
    drain(&incus, list_n).await;
    drain(&embedded, list_n).await;
    Ok(())
}

/// `make soak`: each backend in turn under the same steady mixed load
/// (see `soak`), with started containers to read and run commands in.
async fn soak_both(embedded: &Server, incus: &Server) -> Res<()> {
    let load = soak::Load {
        rest: num("SOAK_CLIENTS", 50),
        subscribers: num("SOAK_SUBSCRIBERS", 200),
        execs: num("SOAK_EXECS", 4),
        duration: Duration::from_secs(num("SOAK_SECONDS", 300) as u64),
        instances: (0..num("SOAK_INSTANCES", 4))
            .map(|i| format!("bench-soak-{i}"))
            .collect(),
    };
    println!("{}", soak::HEADER);
    // SOAK_ONLY=embedded|incus: one backend (a longer run, say).
    let only = std::env::var("SOAK_ONLY").unwrap_or_default();
    let mut fds = Vec::new();
    for (s, pid) in [
        (incus, var("BENCH_INCUS_PID")),
        (embedded, var("BENCH_EMBEDDED_PID")),
    ] {
        if !only.is_empty() && only != s.label {
            continue;
        }
        for name in &load.instances {
            s.call(
                reqwest::Method::POST,
                "/api/v1/instances?wait=120",
                Some(json!({"name": name, "source": {"type": "image", "alias": "busybox"}, "start": true})),
            )
            .await?;
        }
        eprintln!(
            "[bench] soak: {} backend for {}s",
            s.label,
            load.duration.as_secs()
        );
        let pid = pid.parse().expect("a pid");
        let (row, by_kind) =
            soak::run(s.label, s.http.clone(), &s.base, &s.token, pid, &load).await;
        println!("{row}");
        fds.push(by_kind);
        for name in &load.instances {
            let _ = s
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/instances/{name}?force=true&wait=120"),
                    None,
                )
                .await;
        }
    }
    println!();
    for line in fds {
        println!("- {line}");
    }
    println!();
    Ok(())
}
