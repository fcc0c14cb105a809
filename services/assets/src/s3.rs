//! The S3 backend: objects at `sha256/<digest>` in one bucket of any
//! S3-compatible store, markers (empty objects) at their keys beside them,
//! uploads whose digest is not known yet under `staging/` (see
//! `s3_intake.rs`, which streams uploads in; `put` here only serves
//! content spooled to disk first).

use std::path::Path;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use crate::backend::{Backend, ListPage, MAX_MARKERS_LISTED, ObjectReader, StoredObject};
use crate::config::Secret;
use crate::digest::Digest;
use crate::error::Error;
use crate::markers::{MarkerDir, MarkerKey};
use crate::s3_deadline::within_deadline;
use crate::spool::Spooled;

/// Uploads above this size go in parts: a single PUT is capped at 5 GiB on
/// AWS, and parts let a failed attempt be retried without resending it all.
const MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;
/// Size of each part (raised for files so big they would need more than
/// [`MAX_PARTS`]). Parts are read from the spool file as they are sent, so
/// memory holds at most a few buffers per part in flight.
const PART_BYTES: u64 = 16 * 1024 * 1024;
/// Parts sent at once: enough to fill a link, few enough to bound memory.
const PARTS_IN_FLIGHT: usize = 4;
/// Objects per listing page (S3's own maximum).
const LIST_PAGE: i32 = 1000;
const PREFIX: &str = "sha256/";
/// S3's cap on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;

/// Everything needed to reach the bucket.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: Secret,
}

#[derive(Debug, Clone)]
pub struct S3Backend {
    client: Client,
    bucket: String,
}

impl S3Backend {
    /// Built by hand rather than from aws-config's default chain, so that no
    /// credentials, profile or region leak in from the environment.
    pub fn new(settings: S3Settings) -> Self {
        let credentials = Credentials::new(
            &settings.access_key,
            settings.secret_key.expose(),
            None,
            None,
            "kiln-assets",
        );
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&settings.endpoint)
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            // Path-style URLs and checksums only where required keep Garage,
            // MinIO and other S3 implementations working alongside AWS.
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard())
            // No call waits for ever on a store that took it and never
            // answered; the SDK tries such a call again. The calls moving
            // bytes have tighter deadlines of their own (`s3_deadline.rs`);
            // this one is above the longest of them.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(crate::s3_deadline::backstop())
                    .build(),
            )
            .build();
        tracing::info!(endpoint = %settings.endpoint, bucket = %settings.bucket, region = %settings.region, "using s3 backend");
        Self {
            client: Client::from_conf(config),
            bucket: settings.bucket,
        }
    }

    pub(crate) fn key(digest: &Digest) -> String {
        format!("sha256/{digest}")
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn put_whole(&self, key: &str, path: &Path, size: u64) -> Result<(), Error> {
        within_deadline("put object", size, || async {
            let body = ByteStream::from_path(path)
                .await
                .map_err(|err| Error::Spool(std::io::Error::other(err)))?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_length(content_length(size)?)
                .body(body)
                .send()
                .await
                .map_err(|err| s3_error("put object", err))
        })
        .await?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str, path: &Path, size: u64) -> Result<(), Error> {
        let upload_id = &start_multipart(&self.client, &self.bucket, key).await?;
        match self.put_parts(key, upload_id, path, size).await {
            Ok(parts) => self.complete(key, upload_id, parts).await,
            Err(err) => {
                self.abort(key, upload_id).await;
                Err(err)
            }
        }
    }

    async fn put_parts(
        &self,
        key: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
    ) -> Result<Vec<CompletedPart>, Error> {
        let part_size = PART_BYTES.max(size.div_ceil(MAX_PARTS));
        let count = size.div_ceil(part_size);
        let parts = futures::stream::iter(0..count)
            .map(|index| {
                let offset = index * part_size;
                let length = part_size.min(size - offset);
                self.put_part(key, upload_id, path, index, offset, length)
            })
            .buffered(PARTS_IN_FLIGHT);
        parts.try_collect().await
    }

    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        path: &Path,
        index: u64,
        offset: u64,
        length: u64,
    ) -> Result<CompletedPart, Error> {
        let number = i32::try_from(index + 1).map_err(|_| Error::UploadTooLarge {
            limit: MAX_PARTS * PART_BYTES,
        })?;
        let uploaded = within_deadline("upload part", length, || async {
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(length))
                .build()
                .await
                .map_err(|err| Error::Spool(std::io::Error::other(err)))?;
            self.client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(content_length(length)?)
                .body(body)
                .send()
                .await
                .map_err(|err| s3_error("upload part", err))
        })
        .await?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(uploaded.e_tag)
            .build())
    }

    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<(), Error> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|err| s3_error("complete multipart upload", err))?;
        Ok(())
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(err) = aborted {
            tracing::warn!(key, error = %describe(&err), "cannot abort multipart upload");
        }
    }
}

impl Backend for S3Backend {
    async fn list_page(&self, page: Option<String>) -> Result<ListPage, Error> {
        let listed = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(PREFIX)
            .max_keys(LIST_PAGE)
            .set_continuation_token(page)
            .send()
            .await
            .map_err(|err| s3_error("list objects", err))?;
        let objects = listed
            .contents()
            .iter()
            .filter_map(|object| {
                let digest = Digest::parse(object.key()?.strip_prefix(PREFIX)?).ok()?;
                Some(StoredObject {
                    digest,
                    size: object
                        .size()
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0),
                    // Unknown age: treat as new, so it is never collected early.
                    modified: object
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or_else(SystemTime::now),
                })
            })
            .collect();
        let next = if listed.is_truncated() == Some(true) {
            listed.next_continuation_token().map(str::to_owned)
        } else {
            None
        };
        Ok((objects, next))
    }

    async fn presign(&self, digest: &Digest, expires: Duration) -> Result<String, Error> {
        let config = PresigningConfig::expires_in(expires).map_err(|err| Error::S3 {
            operation: "presign",
            message: err.to_string(),
        })?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(Self::key(digest))
            .presigned(config)
            .await
            .map_err(|err| s3_error("presign", err))?;
        Ok(request.uri().to_owned())
    }

    async fn delete(&self, digest: &Digest) -> Result<(), Error> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(Self::key(digest))
            .send()
            .await
            .map_err(|err| s3_error("delete object", err))?;
        Ok(())
    }

    async fn put_marker(&self, key: &MarkerKey) -> Result<(), Error> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_length(0)
            .body(ByteStream::from_static(b""))
            .send()
            .await
            .map_err(|err| s3_error("put marker", err))?;
        Ok(())
    }

    async fn marker(&self, key: &MarkerKey) -> Result<Option<SystemTime>, Error> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await;
        match head {
            // Unknown date: count it as put now, so it is never taken as stale.
            Ok(object) => Ok(Some(
                object
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or_else(SystemTime::now),
            )),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(err) => Err(s3_error("head marker", err)),
        }
    }

    async fn list_markers(&self, dir: &MarkerDir) -> Result<Vec<(String, SystemTime)>, Error> {
        let mut markers = Vec::new();
        let mut token = None;
        loop {
            let listed = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(dir.as_str())
                .max_keys(LIST_PAGE)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|err| s3_error("list markers", err))?;
            for object in listed.contents() {
                let Some(name) = object.key().and_then(|k| k.strip_prefix(dir.as_str())) else {
                    continue;
                };
                let put = object
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or_else(SystemTime::now);
                markers.push((name.to_owned(), put));
            }
            if markers.len() > MAX_MARKERS_LISTED {
                return Err(Error::S3 {
                    operation: "list markers",
                    message: format!("more than {MAX_MARKERS_LISTED} under {}", dir.as_str()),
                });
            }
            match listed.next_continuation_token() {
                Some(next) if listed.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok(markers),
            }
        }
    }

    async fn delete_marker(&self, key: &MarkerKey) -> Result<(), Error> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|err| s3_error("delete marker", err))?;
        Ok(())
    }

    async fn check(&self) -> Result<String, Error> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|err| s3_error("head bucket", err))?;
        Ok(format!("bucket {} reachable", self.bucket))
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(Self::key(digest))
            .send()
            .await;
        match head {
            Ok(object) => Ok(Some(
                object
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
            )),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(err) => Err(s3_error("head object", err)),
        }
    }

    /// Content spooled to disk first. The service does not take S3 uploads
    /// this way (it streams them in through `s3_intake.rs`); this keeps the
    /// backend whole for anything holding a verified spool file.
    async fn put(&self, upload: Spooled) -> Result<(), Error> {
        let key = Self::key(&upload.digest);
        if upload.size <= MULTIPART_THRESHOLD {
            self.put_whole(&key, &upload.path, upload.size).await
        } else {
            self.put_multipart(&key, &upload.path, upload.size).await
        }
    }

    async fn open(&self, digest: &Digest, offset: u64) -> Result<Option<ObjectReader>, Error> {
        let Some(size) = self.stat(digest).await? else {
            return Ok(None);
        };
        if size.saturating_sub(offset) > crate::s3_read::RANGE_BYTES {
            let key = Self::key(digest);
            return Ok(Some(crate::s3_read::ranged(
                &self.client,
                &self.bucket,
                &key,
                offset,
                size,
            )));
        }
        // An empty object has no byte 0 for S3 to range from.
        let range = (offset > 0).then(|| format!("bytes={offset}-"));
        let get = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(Self::key(digest))
            .set_range(range)
            .send()
            .await;
        match get {
            Ok(object) => Ok(Some(crate::s3_read::pieces(object.body))),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(err) => Err(s3_error("get object", err)),
        }
    }
}

fn content_length(size: u64) -> Result<i64, Error> {
    i64::try_from(size).map_err(|_| Error::UploadTooLarge {
        limit: i64::MAX as u64,
    })
}

/// Starts a multipart upload at `key`; its upload id.
pub(crate) async fn start_multipart(
    client: &Client,
    bucket: &str,
    key: &str,
) -> Result<String, Error> {
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|err| s3_error("create multipart upload", err))?;
    created
        .upload_id()
        .map(str::to_owned)
        .ok_or_else(|| Error::S3 {
            operation: "create multipart upload",
            message: "response has no upload id".to_owned(),
        })
}

pub(crate) fn s3_error<E>(operation: &'static str, err: SdkError<E>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    metrics::counter!(crate::counters::S3_ERRORS, "operation" => operation).increment(1);
    Error::S3 {
        operation,
        message: describe(&err),
    }
}

/// One line for an SDK error: the HTTP status and S3 error code when the
/// store answered (a HEAD answer has no body, so often just the status),
/// the full cause chain when it could not be reached.
pub(crate) fn describe<E>(err: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let SdkError::ServiceError(service) = err else {
        return DisplayErrorContext(err).to_string();
    };
    let status = service.raw().status().as_u16();
    let detail = [service.err().code(), service.err().message()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(": ");
    match (status, detail.is_empty()) {
        (403, true) => {
            "http 403: access denied (check the access key, secret key and bucket)".to_owned()
        }
        (_, true) => format!("http {status}"),
        (_, false) => format!("http {status}: {detail}"),
    }
}
