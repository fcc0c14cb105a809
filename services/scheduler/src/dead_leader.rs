//! A crashed leader's lease is ended at once instead of waited out.
//!
//! A leader killed outright (kill -9, the OOM killer) keeps its election key
//! until its lease runs out: `--leader-ttl` seconds (3 by default, up to 60)
//! in which nothing is dispatched. While a replica does not lead, it holds a TCP
//! connection open to the leader's gRPC address. When that connection ends,
//! it dials again at once, and a *refused* dial means nothing listens on the
//! leader's address any more: the host is up and the process is gone. The
//! standby then revokes the leader's lease, etcd deletes its election key,
//! and the campaign queued behind that key wins.
//!
//! Only that sequence counts as proof: a connection that was open, closed by
//! the leader's side, then refused. A timeout, an unreachable host or a
//! partition proves nothing, and the lease is left to run out as before. A
//! leader that was listed at an address this replica cannot reach was never
//! connected to, so it is never judged. And a wrong judgement costs one
//! needless failover, never two leaders: the Postgres fence (`fence.rs`)
//! stops a deposed leader's writes.

use std::io::ErrorKind;
use std::time::Duration;

use etcd_client::Client;
use kiln_discovery::{Discovery, service};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// How long a held connection is trusted before the election is read again:
/// the leader may have changed without its old process dying.
const RECHECK: Duration = Duration::from_secs(2);
/// Pause after a round that found no leader to watch.
const IDLE: Duration = Duration::from_millis(500);
/// Bound on a dial to the leader. A refusal comes back at once; anything
/// slower is no proof of death.
const DIAL: Duration = Duration::from_millis(500);
/// The shortest time between two dials of a leader that answers.
const MIN_HOLD: Duration = Duration::from_millis(50);
/// Bound on one etcd request of this watch.
const ETCD: Duration = Duration::from_secs(2);

/// The leader as the election lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leader {
    instance: String,
    lease: i64,
}

/// What a dial to the leader's address found.
#[derive(Debug)]
enum Dial {
    /// Something listens: the leader, as far as this watch can tell.
    Open(TcpStream),
    /// Nothing listens on the address: the host is up, the process is gone.
    Refused,
    /// A timeout or another error: no proof either way.
    Unknown,
}

impl Dial {
    async fn to(address: &str) -> Self {
        match tokio::time::timeout(DIAL, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => Dial::Open(stream),
            Ok(Err(err)) if err.kind() == ErrorKind::ConnectionRefused => Dial::Refused,
            Ok(Err(_)) | Err(_) => Dial::Unknown,
        }
    }
}

/// Whether a refused dial to `refused`'s address ends its lease: only if
/// this watch held a connection to that same leader, under that same lease,
/// before, and it still leads (the key is still there to delete).
fn should_revoke(refused: &Leader, listened: Option<&Leader>, now: Option<&Leader>) -> bool {
    listened == Some(refused) && now == Some(refused)
}

/// Watches the leader until this task is dropped, ending the lease of a
/// leader whose process is gone; idle while `leading` says this process
/// leads.
pub async fn end_crashed_leaders(
    discovery: Discovery,
    election: String,
    own_instance: String,
    mut leading: watch::Receiver<bool>,
) {
    let mut client = discovery.client();
    // The last leader this watch found listening.
    let mut listened: Option<Leader> = None;
    loop {
        if *leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(leader) = current_leader(&mut client, &election).await else {
            tokio::time::sleep(IDLE).await;
            continue;
        };
        let address = match leader.instance == own_instance {
            true => None,
            false => grpc_address(&discovery, &leader.instance).await,
        };
        let Some(address) = address else {
            tokio::time::sleep(IDLE).await;
            continue;
        };
        match Dial::to(&address).await {
            Dial::Open(stream) => {
                listened = Some(leader.clone());
                let held = tokio::time::Instant::now();
                if held_until_closed(stream, &mut client, &election, &leader).await {
                    // Dial again at once: a dead process refuses now. A
                    // server that closes idle connections quickly is not
                    // dialled in a tight loop.
                    tokio::time::sleep_until(held + MIN_HOLD).await;
                }
            }
            Dial::Refused => {
                let now = current_leader(&mut client, &election).await;
                if should_revoke(&leader, listened.as_ref(), now.as_ref()) {
                    revoke(&mut client, &leader, &address).await;
                    listened = None;
                } else {
                    tokio::time::sleep(IDLE).await;
                }
            }
            Dial::Unknown => tokio::time::sleep(IDLE).await,
        }
    }
}

/// Holds `stream` while `leader` leads; true once the other side closed it,
/// false when the leader changed (the stream is dropped).
async fn held_until_closed(
    mut stream: TcpStream,
    client: &mut Client,
    election: &str,
    leader: &Leader,
) -> bool {
    // The server may send its HTTP/2 settings; the bytes are read and
    // dropped. Only the end of the stream matters.
    let mut buf = [0u8; 512];
    loop {
        let checked = tokio::time::Instant::now();
        loop {
            match tokio::time::timeout_at(checked + RECHECK, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => break,
            }
        }
        if current_leader(client, election).await.as_ref() != Some(leader) {
            return false;
        }
    }
}

async fn current_leader(client: &mut Client, election: &str) -> Option<Leader> {
    let response = tokio::time::timeout(ETCD, client.leader(election))
        .await
        .ok()?
        .ok()?;
    let kv = response.kv()?;
    Some(Leader {
        instance: kv.value_str().ok()?.to_owned(),
        lease: kv.lease(),
    })
}

/// The gRPC address the leader listed itself at.
async fn grpc_address(discovery: &Discovery, instance: &str) -> Option<String> {
    let listed = tokio::time::timeout(ETCD, discovery.find(service::SCHEDULER))
        .await
        .ok()?
        .ok()?;
    listed
        .into_iter()
        .find(|e| e.instance == instance)
        .map(|e| e.grpc)
}

async fn revoke(client: &mut Client, leader: &Leader, address: &str) {
    match tokio::time::timeout(ETCD, client.lease_revoke(leader.lease)).await {
        Ok(Ok(_)) => tracing::warn!(
            instance = %leader.instance,
            %address,
            "the leader's process is gone (its address refuses connections); ended its lease \
             instead of waiting it out"
        ),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "cannot end the crashed leader's lease; it runs out")
        }
        Err(_) => tracing::debug!("ending the crashed leader's lease timed out; it runs out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(instance: &str, lease: i64) -> Leader {
        Leader {
            instance: instance.to_owned(),
            lease,
        }
    }

    #[test]
    fn only_a_leader_seen_listening_and_still_leading_is_judged() {
        let watched = leader("a", 7);
        assert!(should_revoke(&watched, Some(&watched), Some(&watched)));
        assert!(
            !should_revoke(&watched, None, Some(&watched)),
            "never seen listening: its address may be unreachable from here"
        );
        assert!(
            !should_revoke(&watched, Some(&leader("a", 6)), Some(&watched)),
            "seen listening under another lease: not this leadership"
        );
        assert!(
            !should_revoke(&watched, Some(&watched), Some(&leader("b", 9))),
            "another replica leads now"
        );
        assert!(
            !should_revoke(&watched, Some(&watched), None),
            "nobody leads: the key is already gone"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_and_an_open_one_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        assert!(matches!(Dial::to(&address).await, Dial::Open(_)));
        drop(listener);
        assert!(matches!(Dial::to(&address).await, Dial::Refused));
    }
}
