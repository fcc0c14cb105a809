use std::net::TcpListener;

use crate::error::{LocalFarmError, Result};

/// A port on 127.0.0.1 that was free a moment ago.
///
/// Only for programs that must be told their port on the command line
/// (postgres, etcd, garage); Kiln's own services bind port 0 and publish the
/// port they got in etcd, which cannot race.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(LocalFarmError::NoFreePort)?;
    let port = listener
        .local_addr()
        .map_err(LocalFarmError::NoFreePort)?
        .port();
    Ok(port)
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) async fn accepts_tcp(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}
