//! One S3 multipart upload fed part by part while its bytes still arrive.
//! Each part is sent on its own task, so sending overlaps receiving and
//! hashing; at most [`PARTS_IN_FLIGHT`] are in flight, and the sender
//! waits for one to finish before starting another, which pushes back on
//! the incoming stream when S3 is the slower side.
//!
//! Dropped without [`Multipart::complete`] or [`Multipart::abort`] (the
//! call was cancelled, or a paused upload was evicted), it aborts itself
//! in the background, so parts never linger longer than the sweep allows.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::TryFutureExt;
use tokio::task::JoinSet;

use crate::error::Error;
use crate::part_plan::MAX_PARTS;
use crate::s3::{describe, s3_error, start_multipart};
use crate::s3_deadline::within_deadline;

/// Parts sent at once: enough to keep the store busy, few enough that
/// memory stays bounded (each holds one part buffer).
pub const PARTS_IN_FLIGHT: usize = 4;

#[derive(Debug)]
pub struct Multipart {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    sent: Vec<CompletedPart>,
    in_flight: JoinSet<Result<CompletedPart, Error>>,
    /// Number of the next part (1-based).
    next: u32,
    /// Completed or aborted: nothing left for `Drop` to clean.
    settled: bool,
}

impl Multipart {
    pub async fn create(client: &Client, bucket: &str, key: String) -> Result<Self, Error> {
        let upload_id = start_multipart(client, bucket, &key).await?;
        tracing::debug!(key, upload_id, "multipart upload started");
        Ok(Self {
            client: client.clone(),
            bucket: bucket.to_owned(),
            key,
            upload_id,
            sent: Vec::new(),
            in_flight: JoinSet::new(),
            next: 1,
            settled: false,
        })
    }

    /// The number the next part gets.
    pub fn next_number(&self) -> u32 {
        self.next
    }

    /// Starts sending `data` as the next part, once fewer than
    /// [`PARTS_IN_FLIGHT`] are in flight. A failure of an earlier part
    /// surfaces here.
    pub async fn send(&mut self, data: Bytes) -> Result<(), Error> {
        while let Some(joined) = self.in_flight.try_join_next() {
            self.record(joined)?;
        }
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            if let Some(joined) = self.in_flight.join_next().await {
                self.record(joined)?;
            }
        }
        if self.next > MAX_PARTS {
            return Err(Error::UploadTooLarge {
                limit: crate::part_plan::max_streamed_bytes(),
            });
        }
        let number = self.next;
        self.next += 1;
        let (client, bucket, key, upload_id) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        let part_number = i32::try_from(number).unwrap_or(i32::MAX);
        let bytes = data.len() as u64;
        self.in_flight.spawn(async move {
            let uploaded = within_deadline("upload part", bytes, || {
                client
                    .upload_part()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .part_number(part_number)
                    .content_length(i64::try_from(bytes).unwrap_or(i64::MAX))
                    .body(ByteStream::from(data.clone()))
                    // The content is hashed as it arrives and checked against
                    // its digest; SigV4 hashing each part again would cost a
                    // second SHA-256 pass of every byte on the service's few
                    // cores.
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .map_err(|err| s3_error("upload part", err))
            })
            .await?;
            Ok(CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(uploaded.e_tag)
                .build())
        });
        Ok(())
    }

    /// Waits until every part sent so far is stored.
    pub async fn settle(&mut self) -> Result<(), Error> {
        while let Some(joined) = self.in_flight.join_next().await {
            self.record(joined)?;
        }
        Ok(())
    }

    fn record(
        &mut self,
        joined: Result<Result<CompletedPart, Error>, tokio::task::JoinError>,
    ) -> Result<(), Error> {
        let part = joined.map_err(|err| Error::S3 {
            operation: "upload part",
            message: err.to_string(),
        })??;
        self.sent.push(part);
        Ok(())
    }

    /// Publishes the object at its key from every part sent.
    pub async fn complete(mut self) -> Result<(), Error> {
        if let Err(err) = self.settle().await {
            self.abort().await;
            return Err(err);
        }
        let mut parts = std::mem::take(&mut self.sent);
        parts.sort_by_key(|part| part.part_number());
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match completed {
            Ok(_) => {
                self.settled = true;
                Ok(())
            }
            Err(err) => {
                let err = s3_error("complete multipart upload", err);
                self.abort().await;
                Err(err)
            }
        }
    }

    /// Drops every part: nothing appears at the key.
    pub async fn abort(mut self) {
        // Awaited, but done on its own task: if this call is cancelled
        // half-way (its client went away), the abort still happens.
        if let Some(aborting) = self.abort_detached() {
            let _ = aborting.await;
        }
    }

    /// Stops the parts in flight and aborts the upload on a task of its own.
    fn abort_detached(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.settled = true;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %self.key, "multipart upload left for the sweep");
            return None;
        };
        let mut in_flight = std::mem::take(&mut self.in_flight);
        let (client, bucket, key, upload_id) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        Some(runtime.spawn(async move {
            in_flight.shutdown().await;
            abort_upload(&client, &bucket, &key, &upload_id).await
        }))
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if !self.settled {
            self.abort_detached();
        }
    }
}

pub async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let aborted = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    match aborted {
        Ok(_) => tracing::debug!(key, upload_id, "multipart upload aborted"),
        Err(err) => {
            tracing::warn!(key, upload_id, error = %describe(&err), "cannot abort multipart upload")
        }
    }
}
