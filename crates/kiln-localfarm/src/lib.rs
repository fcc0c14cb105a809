//! Starts and supervises a whole Kiln farm from real processes on
//! 127.0.0.1: a private Postgres cluster, etcd, optionally a Garage S3
//! server, and Kiln's assets, scheduler, gateway and worker services.
//!
//! Used by `kiln dev` and by the end-to-end tests, which need processes
//! they can kill, pause and restart. Start with [`Farm::builder`]; the
//! pieces ([`Postgres`], [`Etcd`], [`Garage`], [`ServiceProcess`]) work on
//! their own too.

mod binary;
mod error;
mod etcd;
mod farm;
mod fs;
mod garage;
mod log_tail;
mod ports;
mod postgres;
mod process;
mod secret;
mod tls;
mod wait;

pub use binary::locate_binary;
pub use error::LocalFarmError;
pub use etcd::{ETCD_PREFIX, ETCD_USER, Etcd};
pub use farm::{DEFAULT_STARTUP_TIMEOUT, Farm, FarmBuilder, worker_id};
pub use garage::{BUCKET as S3_BUCKET, Garage, REGION as S3_REGION};
pub use log_tail::tail as log_tail;
pub use ports::free_port;
pub use postgres::{DATABASE, Postgres};
pub use process::{ServiceProcess, TERMINATE_GRACE};
pub use tls::{DevCa, FarmCerts, IssuedCert};
