//! Running host tools (`lxc-*`, `tar`, `qemu-img`): arguments are passed as
//! arguments, never through a shell; every run is bounded in time and waited
//! on asynchronously, so the executor never blocks on a child.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use axum::body::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use crate::backend::BackendError;
use crate::backend::types::{ExecOutput, TerminalInput, TerminalSession};

/// What a finished tool run printed.
pub struct Ran {
    pub stdout: String,
}

/// Whether `program` is an executable file on `PATH`.
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(program).is_file())
}

/// Runs `program args...`; non-zero exit is an error carrying the end of
/// its stderr.
pub async fn run<I, S>(program: &str, args: I, timeout: Duration) -> Result<Ran, BackendError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let ran = async {
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let ((out, _), err, status) =
            tokio::join!(read_capped(stdout), read_tail(stderr), child.wait());
        Ok::<_, std::io::Error>((status?, out, err))
    };
    let (status, stdout, stderr) = match tokio::time::timeout(timeout, ran).await {
        Err(_) => {
            return Err(BackendError::Timeout(format!(
                "{program} did not finish within {}s",
                timeout.as_secs()
            )));
        }
        Ok(Err(e)) => {
            return Err(BackendError::Internal(anyhow::anyhow!(
                "running {program}: {e}"
            )));
        }
        Ok(Ok(out)) => out,
    };
    if status.success() {
        Ok(Ran {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
        })
    } else {
        Err(tool_failed(program, status, &stderr))
    }
}

/// A tool's failure as an error: the host's disk full (ENOSPC in its
/// words) is said so, as 507; anything else is the tool's own end of
/// stderr.
pub fn tool_failed(what: &str, status: std::process::ExitStatus, stderr: &str) -> BackendError {
    if stderr.contains("No space left on device") || stderr.contains("Disk quota exceeded") {
        BackendError::InsufficientStorage(format!(
            "{what} failed: no space left on the host's DATA_DIR"
        ))
    } else {
        BackendError::Internal(anyhow::anyhow!("{what} failed ({status}): {stderr}"))
    }
}

/// How much of a tool's stderr reaches an error message: its end, where
/// the reason usually is. A tool failing on every file of a big tree can
/// print megabytes, which must not all land in memory and in an operation.
const STDERR_TAIL: usize = 4096;

/// Reads `r` to its end (so the writer never blocks on a full pipe),
/// keeping the last `STDERR_TAIL` bytes, trimmed, as text.
pub async fn read_tail(mut r: impl AsyncRead + Unpin) -> String {
    let mut kept: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
    let mut cut = false;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend(&buf[..n]);
                if kept.len() > STDERR_TAIL {
                    kept.drain(..kept.len() - STDERR_TAIL);
                    cut = true;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(kept.make_contiguous());
    let text = text.trim();
    if cut {
        format!("...{text}")
    } else {
        text.to_owned()
    }
}

/// A child that leads a process group of its own, killed as a whole when
/// this is dropped (a future holding it was dropped, a timeout ran out):
/// `kill_on_drop` reaches only the child itself, while `lxc-usernsexec`
/// runs the real work (tar, cp) as *its* child, which would outlive it
/// and go on writing into a directory the caller is about to remove.
pub struct ProcessGroup {
    pgid: Option<i32>,
}

impl ProcessGroup {
    /// Spawns `cmd` as the leader of a new group: stdout discarded, stderr
    /// piped for `finish`.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<(tokio::process::Child, Self)> {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        Ok((child, Self { pgid }))
    }

    /// Spawns `cmd` as the leader of a new group with stdout piped for the
    /// caller to read (and stderr discarded: `finish` then has no tail).
    pub fn spawn_reading(cmd: &mut Command) -> std::io::Result<(tokio::process::Child, Self)> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        Ok((child, Self { pgid }))
    }

    /// Waits for the leader, with the end of its stderr; the group is
    /// left alone from then on (its members are gone with it).
    pub async fn finish(
        &mut self,
        child: &mut tokio::process::Child,
    ) -> std::io::Result<(std::process::ExitStatus, String)> {
        let stderr = child.stderr.take();
        let tail = async {
            match stderr {
                Some(e) => read_tail(e).await,
                None => String::new(),
            }
        };
        let (status, tail) = tokio::join!(child.wait(), tail);
        if status.is_ok() {
            self.pgid = None;
        }
        Ok((status?, tail))
    }

    /// Kills the group and waits (bounded: a kill takes effect in
    /// milliseconds) until it is gone, leader reaped, so the caller may
    /// remove the files it was writing.
    pub async fn kill_and_wait(mut self, child: &mut tokio::process::Child) {
        let Some(pgid) = self.pgid.take() else {
            return;
        };
        kill_group(pgid);
        let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        // The leader's children, orphaned now, are reaped by init.
        for _ in 0..200 {
            // SAFETY: signal 0 only asks whether the group still exists.
            if unsafe { libc::kill(-pgid, 0) } != 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            kill_group(pgid);
        }
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) of a process group this process created (its leader
    // is our child, not yet reaped, so the id cannot have been reused).
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// Runs `cmd` as a process group (see `ProcessGroup`) within `timeout`;
/// non-zero exit is an error carrying the end of its stderr.
pub async fn run_group(
    mut cmd: Command,
    what: &str,
    timeout: Duration,
) -> Result<(), BackendError> {
    let (mut child, mut group) = ProcessGroup::spawn(&mut cmd)
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("running {what}: {e}")))?;
    // On timeout the group is dropped, which kills all of it.
    let (status, stderr) = tokio::time::timeout(timeout, group.finish(&mut child))
        .await
        .map_err(|_| {
            BackendError::Timeout(format!(
                "{what} did not finish within {}s",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("running {what}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(tool_failed(what, status, &stderr))
    }
}

/// Kills (SIGKILL) every process working under `dir`: its working
/// directory, root or an open file there. For start-up only (see
/// `recovery`): tools lxgate ran in groups of their own (tar, cp) outlive
/// a kill of lxgate and would go on writing into a directory that is
/// being removed. Blocking: it reads `/proc`. How many were killed.
pub fn kill_users_of(dir: &Path) -> usize {
    // /proc's links are canonical paths; DATA_DIR may not be.
    let canonical = std::fs::canonicalize(dir);
    let dir = canonical.as_deref().unwrap_or(dir);
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let under = |link: &Path| {
        std::fs::read_link(link).is_ok_and(|t| {
            // A removed directory reads as "<path> (deleted)".
            t.starts_with(dir)
        })
    };
    let mut killed = 0;
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| *n != me)
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let base = p.path();
        let uses = under(&base.join("cwd"))
            || under(&base.join("root"))
            || std::fs::read_dir(base.join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| under(&fd.path()));
        // SAFETY: kill(2) of a process seen working under `dir` just now;
        // at worst it has exited (ESRCH).
        if uses && unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
            killed += 1;
        }
    }
    killed
}

/// The exit code the way a shell reports it (128 + signal for a kill).
pub fn exit_code(status: std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .map(i64::from)
        .or_else(|| status.signal().map(|s| 128 + i64::from(s)))
        .unwrap_or(-1)
}

/// Most of a host tool's stdout kept by `run`.
const OUTPUT_CAP: usize = 1024 * 1024;

async fn read_capped(r: impl AsyncRead + Unpin) -> (Vec<u8>, bool) {
    let mut kept = Kept::default();
    record(r, &mut kept, OUTPUT_CAP, &|n| n).await;
    (kept.bytes, kept.truncated)
}

/// What `record` kept of a stream.
#[derive(Default)]
struct Kept {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Reads `r` to its end into `kept`, up to `max` bytes and what `reserve`
/// grants (it answers how many of the bytes asked for may be kept); past
/// that the rest is read and dropped, so the writer never blocks on a pipe.
/// Once cut, a stream stays cut: what is kept is always its beginning.
async fn record(
    mut r: impl AsyncRead + Unpin,
    kept: &mut Kept,
    max: usize,
    reserve: &(dyn Fn(usize) -> usize + Sync),
) {
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) if kept.truncated => {}
            Ok(n) => {
                let want = n.min(max.saturating_sub(kept.bytes.len()));
                let granted = if want > 0 { reserve(want).min(want) } else { 0 };
                kept.bytes.extend_from_slice(&buf[..granted]);
                kept.truncated = granted < n;
            }
        }
    }
}

/// How `run_recorded` keeps a command's output and how long it may run.
pub struct Recording<'a> {
    /// Bytes kept of stdout, and of stderr (`EXEC_OUTPUT_MAX_BYTES`).
    pub max_bytes: usize,
    /// Room in the overall budget (`EXEC_OUTPUT_TOTAL_BYTES`): how many of
    /// the bytes asked for may be kept.
    pub reserve: &'a (dyn Fn(usize) -> usize + Sync),
    /// Killed after this long.
    pub timeout: Option<Duration>,
}

/// A recorded command's result; `timed_out` and `cancelled` say it was
/// killed at its timeout or when its operation was cancelled (the output is
/// what it printed until then).
pub struct Recorded {
    pub output: ExecOutput,
    pub timed_out: bool,
    pub cancelled: bool,
}

/// How long output is still read after a command was killed, or after it
/// exited: a process that left its group, or a background child, may hold
/// the pipes open; it does not keep the operation (and its output budget)
/// running for ever.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Runs a command to completion (or its timeout) as the leader of a process
/// group, keeping the beginning of its stdout and stderr as `rec` allows
/// (the rest is read and dropped so the command never blocks on a pipe).
/// At the timeout the whole group is killed: with `lxc-attach`, that is
/// the command inside the container too, and whatever it started that
/// stayed in its process group.
pub async fn run_recorded(
    mut cmd: Command,
    rec: Recording<'_>,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<Recorded, BackendError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("starting the command: {e}")))?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (mut out, mut err) = (Kept::default(), Kept::default());
    let reaped = std::sync::atomic::AtomicBool::new(false);
    let exited = tokio::sync::Notify::new();
    let (status, stopped) = {
        let wait = async {
            let status = child.wait().await;
            reaped.store(true, std::sync::atomic::Ordering::Relaxed);
            exited.notify_one();
            status
        };
        // Output is read to its end, but no longer than KILL_GRACE after
        // the command itself exited.
        let reading = async {
            let both = async {
                tokio::join!(
                    record(stdout, &mut out, rec.max_bytes, rec.reserve),
                    record(stderr, &mut err, rec.max_bytes, rec.reserve),
                )
            };
            tokio::select! {
                _ = both => {}
                () = async {
                    exited.notified().await;
                    tokio::time::sleep(KILL_GRACE).await;
                } => {}
            }
        };
        let work = async {
            let ((), status) = tokio::join!(reading, wait);
            status
        };
        tokio::pin!(work);
        let deadline = async {
            match rec.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let stop = async {
            tokio::select! {
                () = deadline => Stop::TimedOut,
                () = cancel => Stop::Cancelled,
            }
        };
        tokio::select! {
            status = &mut work => (Some(status), None),
            why = stop => {
                // Only while the leader is unreaped: its id cannot have
                // been reused as another group's.
                if !reaped.load(std::sync::atomic::Ordering::Relaxed)
                    && let Some(pgid) = pgid
                {
                    kill_group(pgid);
                }
                (tokio::time::timeout(KILL_GRACE, &mut work).await.ok(), Some(why))
            }
        }
    };
    let status = match status {
        Some(s) => {
            Some(s.map_err(|e| BackendError::Internal(anyhow::anyhow!("waiting for it: {e}")))?)
        }
        None => None,
    };
    Ok(Recorded {
        output: ExecOutput {
            exit_code: status.map_or(-1, exit_code),
            stdout: String::from_utf8_lossy(&out.bytes).into_owned(),
            stderr: String::from_utf8_lossy(&err.bytes).into_owned(),
            truncated: out.truncated || err.truncated,
        },
        timed_out: stopped == Some(Stop::TimedOut),
        cancelled: stopped == Some(Stop::Cancelled),
    })
}

/// Why `run_recorded` stopped a command before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    TimedOut,
    Cancelled,
}

/// Runs `program args...` on a new pseudo-terminal of `size` (columns, rows)
/// and bridges it to channels: input bytes and resizes in, output out, and
/// the exit code once the process ends. Dropping the input kills it.
pub fn spawn_terminal<I, S>(
    program: &str,
    args: I,
    size: (u32, u32),
    with_exit: bool,
) -> Result<TerminalSession, BackendError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let internal =
        |what: &str, e: pty_process::Error| BackendError::Internal(anyhow::anyhow!("{what}: {e}"));
    let (pty, pts) = pty_process::open().map_err(|e| internal("opening a terminal", e))?;
    let to_size = |(w, h): (u32, u32)| {
        pty_process::Size::new(
            u16::try_from(h).unwrap_or(24).max(1),
            u16::try_from(w).unwrap_or(80).max(1),
        )
    };
    pty.resize(to_size(size))
        .map_err(|e| internal("sizing the terminal", e))?;
    let mut child = pty_process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .spawn(pts)
        .map_err(|e| internal("starting the command", e))?;
    let master = std::os::fd::AsRawFd::as_raw_fd(&pty);
    let (mut reader, mut writer) = pty.into_split();

    let (input_tx, mut input_rx) = mpsc::channel::<TerminalInput>(64);
    let (output_tx, output_rx) = mpsc::channel::<Bytes>(64);
    let (exit_tx, exit_rx) = oneshot::channel();

    // Output: until the terminal reports EOF/EIO (every holder of the other
    // end is gone) or nobody listens any more.
    let pump_out = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if output_tx
                        .send(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        // lxc-attach and lxc-console switch the terminal to raw mode with
        // TCSAFLUSH, which discards whatever was typed before: hold input
        // until they have (bounded, for programs that never do).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !is_raw(master) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut hung_up = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.ok(),
                input = input_rx.recv(), if !hung_up => match input {
                    Some(TerminalInput::Data(bytes)) => {
                        if writer.write_all(&bytes).await.is_err() {
                            hung_up = true;
                        }
                    }
                    Some(TerminalInput::Resize { width, height }) => {
                        let _ = writer.resize(to_size((width, height)));
                    }
                    // The user went away: end the session.
                    None => {
                        let _ = child.start_kill();
                        hung_up = true;
                    }
                },
            }
        };
        // Let the last output drain before the session reports its end.
        let _ = tokio::time::timeout(Duration::from_secs(2), pump_out).await;
        if let Some(status) = status {
            let _ = exit_tx.send(exit_code(status));
        }
    });
    Ok(TerminalSession {
        input: input_tx,
        output: output_rx,
        exit: with_exit.then_some(exit_rx),
    })
}

/// Whether the terminal (seen from its master side, which `writer` keeps
/// open while this is called) is out of canonical mode.
fn is_raw(master: std::os::fd::RawFd) -> bool {
    // SAFETY: tcgetattr only writes into the termios we pass; a closed or
    // foreign fd makes it fail, which counts as raw (stop waiting).
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(master, &mut t) } != 0 {
        return true;
    }
    t.c_lflag & libc::ICANON == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[tokio::test]
    async fn recorded_output_is_capped_per_stream_and_by_the_budget() {
        let all = |n| n;
        let rec = Recording {
            max_bytes: 1000,
            reserve: &all,
            timeout: None,
        };
        let ran = run_recorded(
            sh("head -c 5000 /dev/zero; echo err >&2; exit 3"),
            rec,
            never(),
        )
        .await
        .unwrap();
        assert_eq!(ran.output.stdout.len(), 1000);
        assert_eq!(ran.output.stderr, "err\n");
        assert!(ran.output.truncated && !ran.timed_out);
        assert_eq!(ran.output.exit_code, 3);

        // A budget with 10 bytes left: the beginning, then nothing more.
        let left = std::sync::Mutex::new(10usize);
        let budget = |n: usize| {
            let mut left = left.lock().unwrap();
            let granted = n.min(*left);
            *left -= granted;
            granted
        };
        let rec = Recording {
            max_bytes: 1000,
            reserve: &budget,
            timeout: None,
        };
        let ran = run_recorded(sh("echo 0123456789abcdef"), rec, never())
            .await
            .unwrap();
        assert_eq!(ran.output.stdout, "0123456789");
        assert!(ran.output.truncated);
    }

    #[tokio::test]
    async fn a_recorded_command_is_killed_with_its_group_at_the_timeout() {
        let all = |n| n;
        let rec = Recording {
            max_bytes: 1000,
            reserve: &all,
            timeout: Some(Duration::from_millis(500)),
        };
        let started = std::time::Instant::now();
        let ran = run_recorded(sh("sleep 600 & echo $!; wait"), rec, never())
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(ran.timed_out);
        let pid: i32 = ran.output.stdout.trim().parse().unwrap();
        // The background sleep went with the group (reaped by init, or a zombie).
        let gone = (0..100).any(|_| {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let running = state.split(' ').nth(2).is_some_and(|s| s != "Z");
            if running {
                std::thread::sleep(Duration::from_millis(20));
            }
            !running
        });
        assert!(gone, "sleep {pid} still runs");
    }

    fn never() -> std::future::Pending<()> {
        std::future::pending()
    }

    #[tokio::test]
    async fn a_cancelled_command_is_killed_with_its_group() {
        let all = |n| n;
        let rec = Recording {
            max_bytes: 1000,
            reserve: &all,
            timeout: None,
        };
        let started = std::time::Instant::now();
        let cancel = tokio::time::sleep(Duration::from_millis(300));
        let ran = run_recorded(sh("echo before; sleep 600"), rec, cancel)
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(ran.cancelled && !ran.timed_out);
        assert_eq!(ran.output.stdout, "before\n");
    }

    /// A background child that keeps stdout open does not keep the command
    /// running once it exited: reading stops KILL_GRACE later.
    #[tokio::test]
    async fn output_is_read_only_a_while_after_the_command_exits() {
        let all = |n| n;
        let rec = Recording {
            max_bytes: 1000,
            reserve: &all,
            timeout: None,
        };
        let started = std::time::Instant::now();
        let ran = run_recorded(sh("sleep 600 & echo started"), rec, never())
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(took >= KILL_GRACE && took < KILL_GRACE * 2, "{took:?}");
        assert_eq!(ran.output.stdout, "started\n");
        assert_eq!(ran.output.exit_code, 0);
        assert!(!ran.cancelled && !ran.timed_out);
    }

    #[tokio::test]
    async fn only_the_end_of_stderr_is_kept() {
        let mut long = vec![b'x'; 3 * STDERR_TAIL];
        long.extend_from_slice(b"the reason\n");
        let tail = read_tail(&long[..]).await;
        assert!(tail.starts_with("..."), "{}", &tail[..10]);
        assert!(tail.ends_with("the reason"), "{tail}");
        assert!(tail.len() <= STDERR_TAIL + 3);
        assert_eq!(read_tail(&b"  short\n"[..]).await, "short");
    }

    #[test]
    fn a_full_disk_is_said_so() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(2 << 8);
        let e = tool_failed(
            "cp",
            status,
            "cp: error writing 'x': No space left on device",
        );
        assert!(
            matches!(&e, BackendError::InsufficientStorage(m) if m.contains("no space left")),
            "{e:?}"
        );
        let e = tool_failed("cp", status, "cp: cannot stat 'x'");
        assert!(matches!(&e, BackendError::Internal(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_failed_run_says_why_briefly() {
        let e = run(
            "sh",
            [
                "-c",
                "yes error | head -c 100000 >&2; echo last words >&2; exit 3",
            ],
            Duration::from_secs(10),
        )
        .await
        .err()
        .expect("a failure");
        let text = e.to_string();
        assert!(text.contains("last words"), "{text}");
        assert!(text.len() < STDERR_TAIL + 200, "{}", text.len());
    }

    #[tokio::test]
    async fn a_dropped_group_takes_the_grandchildren_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // The shell starts a grandchild (like lxc-usernsexec starts tar) and
        // waits for it.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("sleep 60 & echo $! > \"$1\"; wait")
            .arg("sh")
            .arg(&pidfile)
            .stdin(Stdio::null());
        let (mut child, mut group) = ProcessGroup::spawn(&mut cmd).unwrap();
        let mut pid = None;
        for _ in 0..200 {
            if let Ok(p) = std::fs::read_to_string(&pidfile)
                && let Ok(p) = p.trim().parse::<i32>()
            {
                pid = Some(p);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pid = pid.expect("the grandchild started");
        {
            let waiting = group.finish(&mut child);
            assert!(
                tokio::time::timeout(Duration::from_millis(100), waiting)
                    .await
                    .is_err()
            );
        }
        drop(group);
        let _ = child.wait().await;
        let mut gone = false;
        for _ in 0..200 {
            // SAFETY: signal 0 only asks whether the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ");
            if !alive {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "the grandchild outlived its group");
    }
}
