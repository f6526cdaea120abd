//! Running host tools (`lxc-*`, `tar`, `qemu-img`): arguments are passed as
//! arguments, never through a shell; every run is bounded in time and waited
//! on asynchronously, so the executor never blocks on a child.

use std::ffi::OsStr;
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

/// Runs `program args...`; non-zero exit is an error carrying its stderr.
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
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
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
    if out.status.success() {
        Ok(Ran {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        })
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(BackendError::Internal(anyhow::anyhow!(
            "{program} failed ({}): {}",
            out.status,
            stderr.trim()
        )))
    }
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

const OUTPUT_CAP: usize = 1024 * 1024;

async fn read_capped(mut r: impl AsyncRead + Unpin) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

/// Runs a command to completion, keeping up to 1 MiB of stdout and stderr
/// each (the rest is read and dropped so the command never blocks on a pipe).
pub async fn run_recorded(mut cmd: Command) -> Result<ExecOutput, BackendError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("starting the command: {e}")))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let ((out, t1), (err, t2), status) =
        tokio::join!(read_capped(stdout), read_capped(stderr), child.wait());
    let status =
        status.map_err(|e| BackendError::Internal(anyhow::anyhow!("waiting for it: {e}")))?;
    Ok(ExecOutput {
        exit_code: exit_code(status),
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        truncated: t1 || t2,
    })
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
