use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::Mutex;

use crate::error::{LocalFarmError, Result};

/// A port on 127.0.0.1 that was free a moment ago.
///
/// Only for programs that must be told their port on the command line
/// (postgres, etcd, garage); Kiln's own services bind port 0 and publish the
/// port they got in etcd, which cannot race.
pub fn free_port() -> Result<u16> {
    let [port] = free_ports()?;
    Ok(port)
}

/// Ports this process handed out lately, oldest first. The kernel may hand
/// a port out again as soon as its listener closes, before the program told
/// to use it has bound it: etcd and Garage, picked one after the other, were
/// once both given the same port, and `kiln dev` failed with "garage was not
/// ready". Bounded: past [`REMEMBERED`] the oldest are forgotten.
static HANDED_OUT: Mutex<VecDeque<u16>> = Mutex::new(VecDeque::new());
/// Ports remembered in [`HANDED_OUT`]: far more than one process starts
/// programs on at once.
const REMEMBERED: usize = 1024;
/// Ports the kernel is asked for, at most, per port picked.
const BINDS_PER_PORT: usize = 64;

/// `N` different ports on 127.0.0.1 that were free a moment ago (see
/// [`free_port`]), none of them handed out by this process lately. Each is
/// held until all are picked: one after another, the kernel can hand out a
/// port just released, and etcd was once given the same port for its client
/// and peer listeners, and failed to start.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let mut binds = 0;
        *port = loop {
            binds += 1;
            if binds > BINDS_PER_PORT {
                return Err(LocalFarmError::NoFreePort(std::io::Error::other(format!(
                    "the kernel offered only ports handed out lately, {BINDS_PER_PORT} times"
                ))));
            }
            let listener = TcpListener::bind("127.0.0.1:0").map_err(LocalFarmError::NoFreePort)?;
            let offered = listener
                .local_addr()
                .map_err(LocalFarmError::NoFreePort)?
                .port();
            // Held either way: a port passed over is not offered again
            // during this pick.
            listeners.push(listener);
            if !handed_out.contains(&offered) {
                break offered;
            }
        };
        handed_out.push_back(*port);
    }
    while handed_out.len() > REMEMBERED {
        handed_out.pop_front();
    }
    Ok(ports)
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) async fn accepts_tcp(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_port_is_not_handed_out_twice_by_one_process() {
        // Each listener is closed before the next pick, as when etcd's
        // ports are picked before Garage's and neither has started yet.
        let mut seen = HashSet::new();
        for _ in 0..REMEMBERED / 2 {
            let port = free_port().expect("a free port");
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }

    #[test]
    fn ports_picked_together_differ() {
        for _ in 0..200 {
            let [a, b, c] = free_ports().expect("free ports");
            assert!(a != b && b != c && a != c, "{a} {b} {c}");
        }
    }
}
