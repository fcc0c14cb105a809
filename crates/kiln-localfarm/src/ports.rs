use std::net::TcpListener;

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

/// `N` different ports on 127.0.0.1 that were free a moment ago (see
/// [`free_port`]). Each is held until all are picked: one after another,
/// the kernel can hand out a port just released, and etcd was once given
/// the same port for its client and peer listeners, and failed to start.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(LocalFarmError::NoFreePort)?;
        *port = listener
            .local_addr()
            .map_err(LocalFarmError::NoFreePort)?
            .port();
        listeners.push(listener);
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
    use super::*;

    #[test]
    fn ports_picked_together_differ() {
        for _ in 0..200 {
            let [a, b, c] = free_ports().expect("free ports");
            assert!(a != b && b != c && a != c, "{a} {b} {c}");
        }
    }
}
