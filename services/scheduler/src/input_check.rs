//! The submit-time check that every input of a job is stored and that its
//! owner may use it: the assets service answers FindMissing as the owner
//! sees the store, so another tenant's file is "not stored" for them, and
//! a job can never make a worker fetch a file its owner could not read.

use std::time::Duration;

use kiln_asset_client::{AssetClient, CallCredentials};
use kiln_discovery::{Discovery, service};
use kiln_proto::v1 as pb;

use crate::SchedulerError;

/// Who submits, as the assets service should see them.
#[derive(Debug, Clone, Copy)]
pub enum Submitter<'a> {
    /// The user the gateway named (`kiln-owner`), with their role if it said.
    Owner {
        name: &'a str,
        role: Option<&'a str>,
    },
    /// A call that named no owner: another Kiln service, which sees every file.
    Service,
}

/// Fails with INVALID_ARGUMENT naming the first input `submitter` cannot
/// use (not stored, or not theirs: the two look the same).
pub async fn check_inputs_stored(
    discovery: &Discovery,
    tls: &kiln_tls::ClientTls,
    submitter: Submitter<'_>,
    inputs: &[pb::JobInput],
) -> Result<(), SchedulerError> {
    if inputs.is_empty() {
        return Ok(());
    }
    let endpoint = discovery
        .find_one(service::ASSETS, Duration::from_secs(5))
        .await?;
    let channel = tls
        .endpoint(&endpoint.grpc_uri())
        .map_err(|e| SchedulerError::Assets(e.to_string()))?
        .connect_lazy();
    let credentials = match submitter {
        Submitter::Owner { name, role } => CallCredentials::default()
            .on_behalf_of(name, role)
            .map_err(|err| SchedulerError::InvalidArgument(err.to_string()))?,
        Submitter::Service => CallCredentials::default(),
    };
    let assets = AssetClient::with_credentials(channel, credentials);
    // One call for the whole bundle rather than one Stat per file.
    let digests: Vec<String> = inputs.iter().map(|i| i.digest.clone()).collect();
    let missing = assets
        .find_missing(&digests)
        .await
        .map_err(|err| SchedulerError::Assets(err.to_string()))?;
    if let Some(input) = inputs.iter().find(|i| missing.contains(&i.digest)) {
        return Err(SchedulerError::InvalidArgument(format!(
            "inputs: {} (digest {}) is not stored in the asset service; upload it first",
            input.path, input.digest
        )));
    }
    Ok(())
}
