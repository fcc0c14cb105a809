//! How uploads come in, by backend: the local backend spools them to disk
//! while hashing (`spool.rs`) and stores them once verified; the S3 backend
//! streams them into the bucket while hashing (`s3_intake.rs`) and
//! publishes them once verified. Either way nothing unverified is ever
//! stored under a content address.

use crate::caller::Holder;
use crate::digest::Digest;
use crate::s3_intake::S3Intake;
use crate::spool::Spool;

pub enum Intake {
    Spool(Spool),
    S3(S3Intake),
}

impl Intake {
    /// Bytes held of `holder`'s interrupted upload of `digest`.
    pub fn offset(&self, holder: &Holder, digest: &Digest) -> u64 {
        match self {
            Intake::Spool(spool) => spool.offset(holder, digest),
            Intake::S3(s3) => s3.offset(holder, digest),
        }
    }
}
