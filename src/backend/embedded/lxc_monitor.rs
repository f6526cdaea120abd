//! Whether a container's LXC monitor is up, asked the way liblxc asks it:
//! by connecting to the monitor's abstract command socket. No monitor, no
//! running container: `lxc-info` answers STOPPED on the same refusal. One
//! nonblocking `connect`, so a listing of a hundred stopped containers
//! costs no process and nothing off the executor.

use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

/// `sun_path` less the leading NUL and the NUL liblxc ends the name with:
/// a longer name is hashed by liblxc (`lxc_make_abstract_socket_name`),
/// which this does not reproduce.
const HASHED_FROM: usize = 108 - 2;

/// The monitor's socket name: `<lxcpath>/<name>/command` in the abstract
/// namespace, as liblxc makes it for `lxc-start -P <lxcpath>`.
pub fn command_socket(lxcpath: &Path, ct: &str) -> Option<Vec<u8>> {
    let mut name = vec![0u8];
    name.extend_from_slice(lxcpath.as_os_str().as_bytes());
    name.push(b'/');
    name.extend_from_slice(ct.as_bytes());
    name.extend_from_slice(b"/command");
    (name.len() - 1 < HASHED_FROM).then_some(name)
}

/// `Some(false)` when nothing listens on `ct`'s command socket (the
/// container is stopped), `Some(true)` when something does, `None` when
/// this cannot tell (the name is hashed, or the connect failed otherwise):
/// ask `lxc-info`.
pub fn up(lxcpath: &Path, ct: &str) -> Option<bool> {
    let name = command_socket(lxcpath, ct)?;
    let addr = SockAddr::unix(std::ffi::OsStr::from_bytes(&name)).ok()?;
    // Nonblocking: a monitor that stopped accepting fills its backlog, and
    // a blocking connect would then wait on the executor for ever.
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None).ok()?;
    match socket.connect(&addr) {
        // Closed at once: the monitor reads an end of file and drops it
        // without a word (`lxc_cmd_handler`).
        Ok(()) => Some(true),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Some(true),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Some(false),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};

    #[test]
    fn a_listening_socket_is_up_and_a_missing_one_is_not() {
        let lxcpath = Path::new("/lxgate-test").join(uuid::Uuid::new_v4().to_string());
        assert_eq!(up(&lxcpath, "default_web"), Some(false));
        let name = command_socket(&lxcpath, "default_web").unwrap();
        let addr = SocketAddr::from_abstract_name(&name[1..]).unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        assert_eq!(up(&lxcpath, "default_web"), Some(true));
        assert_eq!(up(&lxcpath, "default_other"), Some(false));
        drop(listener);
        assert_eq!(up(&lxcpath, "default_web"), Some(false));
    }

    #[test]
    fn a_name_liblxc_would_hash_is_not_guessed() {
        let lxcpath = Path::new("/var/lib/lxgate/lxc");
        let ct = "p".repeat(120);
        assert_eq!(command_socket(lxcpath, &ct), None);
        assert_eq!(up(lxcpath, &ct), None);
        // The longest name that is not hashed: 105 bytes.
        let fits = "x".repeat(105 - "/var/lib/lxgate/lxc//command".len());
        assert_eq!(command_socket(lxcpath, &fits).unwrap().len() - 1, 105);
    }
}
