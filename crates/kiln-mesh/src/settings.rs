//! The mesh's settings: the two a deployment tunes are command-line
//! options of every service; the rest are constants chosen for a farm.

use std::time::Duration;

use crate::outlier::OutlierSettings;

/// The queue in front of each internal service this process calls.
#[derive(Debug, Clone, clap::Args)]
pub struct MeshArgs {
    /// Calls this process has in flight to each internal service at once; more wait in a bounded queue
    #[arg(long, env = "KILN_UPSTREAM_MAX_IN_FLIGHT", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub upstream_max_in_flight: u32,
    /// Calls that may wait for each internal service; beyond that a call fails at once with UNAVAILABLE and a retry-after
    #[arg(long, env = "KILN_UPSTREAM_MAX_QUEUED", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub upstream_max_queued: u32,
}

impl Default for MeshArgs {
    fn default() -> Self {
        Self {
            upstream_max_in_flight: 512,
            upstream_max_queued: 512,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub max_in_flight: usize,
    pub max_queued: usize,
    /// How long calls wait for a replica that can take them.
    pub patience: Duration,
    pub outlier: OutlierSettings,
    pub connect_timeout: Duration,
    /// HTTP/2 ping interval, and how long a ping may go unanswered.
    pub keep_alive: Duration,
    /// Seconds a caller refused for a full queue is told to wait.
    pub retry_after_seconds: u32,
}

impl Settings {
    pub fn from_args(args: &MeshArgs) -> Self {
        Self {
            max_in_flight: args.upstream_max_in_flight as usize,
            max_queued: args.upstream_max_queued as usize,
            ..Self::default()
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_in_flight: 512,
            max_queued: 512,
            patience: Duration::from_secs(5),
            outlier: OutlierSettings::default(),
            connect_timeout: Duration::from_secs(3),
            keep_alive: Duration::from_secs(3),
            retry_after_seconds: 1,
        }
    }
}
