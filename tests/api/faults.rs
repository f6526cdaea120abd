//! Faults of real components under lxgate: its PostgreSQL stopped and
//! started again under load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// A PostgreSQL cluster of the test's own (the test bed's is shared by
/// every test, so it is never the one stopped), on loopback.
struct PrivatePg {
    _dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
}

fn pg_bin(tool: &str) -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("PostgreSQL is installed (make test installs it)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL version")
        .join("bin")
        .join(tool)
}

fn as_postgres(args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePg {
    fn start_new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let initdb = pg_bin("initdb");
        as_postgres(&[
            initdb.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ]);
        let pg = Self {
            _dir: dir,
            data,
            port,
        };
        pg.start();
        pg
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data.display()
        );
        let log = self.data.join("server.log");
        as_postgres(&[
            pg_bin("pg_ctl").to_str().unwrap(),
            "-D",
            self.data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ]);
    }

    /// As a crash or a failed-over host looks: no clean goodbye.
    fn stop(&self) {
        as_postgres(&[
            pg_bin("pg_ctl").to_str().unwrap(),
            "-D",
            self.data.to_str().unwrap(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

/// `GET path` answers, with how long each took, for `for_` from `clients`
/// request loops at once.
async fn under_load(
    app: &TestApp,
    token: &str,
    path: &str,
    clients: usize,
    for_: Duration,
) -> Vec<(Reply, Duration)> {
    let until = Instant::now() + for_;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, token) = (
            app.client.clone(),
            format!("{}{path}", app.base),
            token.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let r = client
                    .get(&url)
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .expect("lxgate answers while its database is away");
                seen.push((Reply::read(r).await, t.elapsed()));
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test]
async fn postgres_stopped_under_load_is_503_and_recovers_without_a_restart() {
    let pg = PrivatePg::start_new();
    let url = pg.url();
    let app = spawn_app_with(Db::Postgres, &[("DATABASE_URL", &url)]).await;
    let admin = app.admin_token().await;
    assert_eq!(app.get("/api/v1/users", Some(&admin)).await.status, 200);
    assert_eq!(app.get("/api/v1/auth/me", Some(&admin)).await.status, 200);

    pg.stop();
    // Reads of the user database and authenticated calls alike, from
    // several clients at once.
    let mut answers = under_load(&app, &admin, "/api/v1/users", 4, Duration::from_secs(3)).await;
    // Once lxgate has noticed (its own watch of the database notices within
    // a few hundred ms), refusals come at once: only requests already
    // waiting for a connection wait out the pool's 10 s.
    let later = under_load(&app, &admin, "/api/v1/auth/me", 4, Duration::from_secs(1)).await;
    let slowest = later.iter().map(|(_, t)| *t).max().unwrap();
    answers.extend(later);
    let unavailable = answers.iter().filter(|(r, _)| r.status == 503).count();
    for (r, _) in &answers {
        assert!(
            r.status == 503 || (r.status == 200 && r.text.contains("username")),
            "while the database is away: {} {}",
            r.status,
            r.text
        );
        if r.status == 503 {
            r.assert_problem(503, "database_unavailable");
        }
    }
    eprintln!(
        "{} answers while PostgreSQL was away, {unavailable} of them 503; once noticed the slowest took {slowest:?}",
        answers.len(),
    );
    assert!(unavailable > 100, "{unavailable} refusals");
    assert!(
        slowest < Duration::from_millis(500),
        "an answer took {slowest:?}"
    );
    let ready = app.get("/health/ready", None).await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert_eq!(app.get("/health", None).await.status, 200);
    app.login_reply(ADMIN, ADMIN_PASSWORD)
        .await
        .assert_problem(503, "database_unavailable");

    pg.start();
    let after = app
        .get_until(
            "/api/v1/users",
            Some(&admin),
            (Duration::from_secs(20), Duration::from_millis(200)),
            |r| r.status == 200,
        )
        .await;
    eprintln!("recovered {after:?} after PostgreSQL came back");
    assert_eq!(app.get("/api/v1/auth/me", Some(&admin)).await.status, 200);
    assert_eq!(app.get("/health/ready", None).await.status, 200);
    app.login(ADMIN, ADMIN_PASSWORD).await;
}
