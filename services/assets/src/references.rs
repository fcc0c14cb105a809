//! What the assets service asks the scheduler (`AssetReferences`): which
//! stored files jobs still name, for the collector, and which files a
//! user's jobs name, for files stored before holds were recorded.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use kiln_asset_client::CallCredentials;
use kiln_discovery::{Discovery, service};
use kiln_proto::v1::ListReferencedDigestsRequest;
use kiln_proto::v1::asset_references_client::AssetReferencesClient;
use kiln_tls::ClientTls;
use tonic::transport::Channel;

use crate::error::Error;

/// Digests of live jobs held in memory at most (about 100 bytes each).
const MAX_REFERENCES: usize = 5_000_000;
/// How long a call waits for a scheduler to be registered.
const LOOKUP_PATIENCE: Duration = Duration::from_secs(5);
/// How long a scheduler may take to start answering. A frozen scheduler
/// (SIGSTOP, a hung host) accepts the connection and never answers; without
/// this bound an upload waiting on "does this user's job name the file?"
/// hung with it, and so did the worker's task. Failing lets the next call
/// look the (new) leader up again.
const ANSWER_PATIENCE: Duration = Duration::from_secs(10);

/// A connection to any scheduler replica (each answers from Postgres),
/// found through etcd and looked up again after a failure.
pub struct SchedulerLink {
    discovery: Discovery,
    /// How to dial it: TLS (and this service's certificate) on a TLS farm.
    tls: ClientTls,
    /// The farm's service token: the scheduler answers only farm services.
    credentials: CallCredentials,
    channel: Mutex<Option<Channel>>,
}

impl SchedulerLink {
    pub fn new(discovery: Discovery, tls: ClientTls, credentials: CallCredentials) -> Self {
        Self {
            discovery,
            tls,
            credentials,
            channel: Mutex::new(None),
        }
    }

    /// The farm's etcd, where the scheduler was found.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Digests that jobs unfinished or finished within `finished_within`
    /// name; of `only` when it is not empty.
    pub async fn referenced(
        &self,
        finished_within: Duration,
        only: Vec<String>,
    ) -> Result<HashSet<String>, Error> {
        let request = ListReferencedDigestsRequest {
            finished_within_seconds: finished_within.as_secs(),
            only,
            owner: String::new(),
        };
        self.list(request).await
    }

    /// Of `digests`, those that some job of `owner` names, however old.
    pub async fn owned(&self, owner: &str, digests: Vec<String>) -> Result<HashSet<String>, Error> {
        if digests.is_empty() {
            return Ok(HashSet::new());
        }
        let request = ListReferencedDigestsRequest {
            finished_within_seconds: 0,
            only: digests,
            owner: owner.to_owned(),
        };
        self.list(request).await
    }

    async fn list(&self, request: ListReferencedDigestsRequest) -> Result<HashSet<String>, Error> {
        let result = self.try_list(request).await;
        if result.is_err() {
            // The next call looks the scheduler up again.
            *self.slot() = None;
        }
        result
    }

    async fn try_list(
        &self,
        request: ListReferencedDigestsRequest,
    ) -> Result<HashSet<String>, Error> {
        let asked = request.only.len();
        let mut batches = AssetReferencesClient::with_interceptor(
            self.channel().await?,
            self.credentials.clone(),
        )
        .list_referenced_digests(request)
        .await
        .map_err(|status| Error::Scheduler(status.message().to_owned()))?
        .into_inner();
        let mut referenced = HashSet::with_capacity(asked);
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|status| Error::Scheduler(status.message().to_owned()))?;
            referenced.extend(batch.digests);
            if referenced.len() > MAX_REFERENCES {
                // Collecting with a partial view could delete what a job needs.
                return Err(Error::Scheduler(format!(
                    "more than {MAX_REFERENCES} referenced digests"
                )));
            }
        }
        Ok(referenced)
    }

    async fn channel(&self) -> Result<Channel, Error> {
        if let Some(channel) = self.slot().clone() {
            return Ok(channel);
        }
        let endpoint = self
            .discovery
            .find_one(service::SCHEDULER, LOOKUP_PATIENCE)
            .await?;
        let channel = self
            .tls
            .endpoint(&endpoint.grpc_uri())
            .map_err(|err| Error::Scheduler(err.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(ANSWER_PATIENCE)
            .connect_lazy();
        *self.slot() = Some(channel.clone());
        Ok(channel)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Channel>> {
        // A panic elsewhere cannot leave an Option inconsistent: take it anyway.
        self.channel
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
