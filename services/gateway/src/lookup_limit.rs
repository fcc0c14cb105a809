//! What a request with an unknown token may cost. A token the cache does
//! not know must be looked up in Postgres; without a bound, anyone could
//! send random tokens and spend the gateway's database connections and its
//! request slots, which real users share. So before any lookup:
//!
//! - each peer (client IP address) has its own small allowance of lookups
//!   (GCRA through `governor`, like the per-token rate limit); past it the
//!   request is refused with 429 / RESOURCE_EXHAUSTED without a query;
//! - at most a few lookups run at once, whoever asks, so a flood of them
//!   never holds every pooled connection; a lookup that cannot start soon
//!   is refused with 503 / UNAVAILABLE.
//!
//! Tokens the cache knows (valid or not) cost nothing and pass: a busy
//! client with a good token never gets here more than once per cache
//! lifetime.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::ConnectInfo;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::http_server::PeerAddr;

type Keyed = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// How long a lookup waits for one of the concurrent slots.
const SLOT_PATIENCE: Duration = Duration::from_secs(2);

pub struct LookupLimiter {
    per_peer: Keyed,
    clock: DefaultClock,
    slots: Semaphore,
    patience: Duration,
}

/// Why a lookup is not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupRefusal {
    /// The peer used its allowance; it may try again after this long.
    PeerExhausted(Duration),
    /// Every lookup slot stayed busy.
    Busy,
}

impl LookupLimiter {
    /// `per_second` lookups per peer on average, `burst` at once, and at
    /// most `concurrent` running over all peers.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32, concurrent: usize) -> Self {
        Self {
            per_peer: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
            slots: Semaphore::new(concurrent.max(1)),
            patience: SLOT_PATIENCE,
        }
    }

    /// How long a lookup waits for a slot (default 2 s).
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// A slot for one lookup on behalf of `peer`, or why there is none.
    pub async fn admit(&self, peer: IpAddr) -> Result<SemaphorePermit<'_>, LookupRefusal> {
        if let Err(not_until) = self.per_peer.check_key(&peer) {
            return Err(LookupRefusal::PeerExhausted(
                not_until.wait_time_from(self.clock.now()),
            ));
        }
        match tokio::time::timeout(self.patience, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => Err(LookupRefusal::Busy),
        }
    }

    /// Forgets peers idle long enough to be back at their full allowance.
    pub fn forget_idle(&self) {
        self.per_peer.retain_recent();
        self.per_peer.shrink_to_fit();
    }
}

/// The client's IP address, as the listener saw the connection (REST:
/// axum's `ConnectInfo`; gRPC: tonic's connect info, with or without TLS).
/// Unknown peers share one allowance.
pub fn peer_of<B>(request: &http::Request<B>) -> IpAddr {
    let extensions = request.extensions();
    let address = extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|info| info.0.0)
        .or_else(|| {
            extensions
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|info| info.remote_addr())
        })
        .or_else(|| {
            extensions
                .get::<tonic::transport::server::TlsConnectInfo<
                    tonic::transport::server::TcpConnectInfo,
                >>()
                .and_then(|info| info.get_ref().remote_addr())
        });
    address.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn limiter(burst: u32, concurrent: usize) -> LookupLimiter {
        let one = NonZeroU32::MIN;
        LookupLimiter::new(one, NonZeroU32::new(burst).unwrap_or(one), concurrent)
            .with_patience(Duration::from_millis(20))
    }

    #[tokio::test]
    async fn a_peer_past_its_allowance_is_refused_without_a_lookup() {
        let limits = limiter(3, 8);
        let attacker: IpAddr = [10, 0, 0, 9].into();
        for _ in 0..3 {
            assert!(limits.admit(attacker).await.is_ok());
        }
        assert!(matches!(
            limits.admit(attacker).await,
            Err(LookupRefusal::PeerExhausted(_))
        ));
        // Another client is not held back by the attacker's allowance.
        assert!(limits.admit([10, 0, 0, 1].into()).await.is_ok());
    }

    #[tokio::test]
    async fn lookups_run_a_few_at_a_time_whoever_asks() {
        let limits = limiter(100, 1);
        let held = limits.admit([10, 0, 0, 1].into()).await;
        assert!(held.is_ok());
        // The only slot is taken: the next waits its patience out, then is refused.
        assert_eq!(
            limits.admit([10, 0, 0, 2].into()).await.err(),
            Some(LookupRefusal::Busy)
        );
        drop(held);
        assert!(limits.admit([10, 0, 0, 2].into()).await.is_ok());
    }

    #[test]
    fn the_peer_is_read_from_rest_and_grpc_connection_info() {
        let mut rest = http::Request::new(());
        let address: SocketAddr = ([192, 0, 2, 7], 5000).into();
        rest.extensions_mut().insert(ConnectInfo(PeerAddr(address)));
        assert_eq!(peer_of(&rest), address.ip());
        let unknown = http::Request::new(());
        assert_eq!(peer_of(&unknown), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
}
