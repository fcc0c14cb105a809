//! Which stored files jobs still need: the assets service's collector asks
//! before deleting anything; and which files a user's jobs name: the assets
//! service asks about files it has no record of the user holding. Read-only,
//! so any replica (leading or not) answers it from Postgres.

use std::pin::Pin;

use futures::{Stream, TryStreamExt};
use kiln_proto::v1 as pb;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Digests per streamed message.
const BATCH: usize = 10_000;
/// Digests one request may ask about by name.
const MAX_ONLY: usize = 10_000;
/// Batches queued ahead of a slow reader.
const QUEUE: usize = 4;

/// Inputs and outputs of jobs that are unfinished or finished less than $1
/// seconds ago, of the digests $2 unless it is empty. Job inputs are a
/// JSON array of {path, digest}.
const QUERY: &str = "
    WITH live AS (
        SELECT id, inputs FROM jobs
        WHERE finished_at IS NULL OR finished_at > now() - make_interval(secs => $1)
    )
    SELECT digest FROM (
        SELECT input->>'digest' AS digest FROM live, jsonb_array_elements(live.inputs) AS input
        UNION
        SELECT outputs.digest FROM outputs JOIN live ON live.id = outputs.job_id
    ) AS referenced
    WHERE cardinality($2::text[]) = 0 OR digest = ANY($2)";

/// Of the digests $1, those that jobs of owner $2 name as an input or
/// output, finished or not (outputs found by `outputs_digest`, inputs among
/// the owner's jobs).
const OWNED_QUERY: &str = "
    SELECT outputs.digest FROM outputs JOIN jobs ON jobs.id = outputs.job_id
    WHERE outputs.digest = ANY($1) AND jobs.owner = $2
    UNION
    SELECT input->>'digest' FROM jobs, jsonb_array_elements(jobs.inputs) AS input
    WHERE jobs.owner = $2 AND input->>'digest' = ANY($1)";

pub struct References {
    db: PgPool,
}

impl References {
    pub fn new(db: PgPool) -> Self {
        Self { db }
    }
}

type DigestStream = Pin<Box<dyn Stream<Item = Result<pb::ReferencedDigests, Status>> + Send>>;

#[tonic::async_trait]
impl pb::asset_references_server::AssetReferences for References {
    type ListReferencedDigestsStream = DigestStream;

    async fn list_referenced_digests(
        &self,
        request: Request<pb::ListReferencedDigestsRequest>,
    ) -> Result<Response<DigestStream>, Status> {
        let request = request.into_inner();
        if request.only.len() > MAX_ONLY {
            return Err(Status::invalid_argument(format!(
                "only: {} digests, more than the limit of {MAX_ONLY}",
                request.only.len()
            )));
        }
        if !request.owner.is_empty() && request.only.is_empty() {
            return Err(Status::invalid_argument(
                "only: name the digests to ask about an owner's jobs",
            ));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_batches(self.db.clone(), request, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn send_batches(
    db: PgPool,
    request: pb::ListReferencedDigestsRequest,
    tx: mpsc::Sender<Result<pb::ReferencedDigests, Status>>,
) {
    let mut rows = if request.owner.is_empty() {
        sqlx::query_scalar::<_, Option<String>>(QUERY)
            .bind(request.finished_within_seconds as f64)
            .bind(&request.only)
            .fetch(&db)
    } else {
        sqlx::query_scalar::<_, Option<String>>(OWNED_QUERY)
            .bind(&request.only)
            .bind(&request.owner)
            .fetch(&db)
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        match rows.try_next().await {
            Ok(Some(digest)) => {
                batch.extend(digest);
                if batch.len() < BATCH {
                    continue;
                }
            }
            Ok(None) => {
                if !batch.is_empty() {
                    let _ = tx.send(Ok(pb::ReferencedDigests { digests: batch })).await;
                }
                return;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot list referenced digests");
                let _ = tx
                    .send(Err(Status::unavailable(format!("postgres: {err}"))))
                    .await;
                return;
            }
        }
        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        if tx
            .send(Ok(pb::ReferencedDigests { digests: full }))
            .await
            .is_err()
        {
            return;
        }
    }
}
