//! Kiln's gateway: the public gRPC API (`grpc.rs`) and REST/JSON (`rest.rs`),
//! both passing calls to the internal services through the mesh's balanced
//! channels (`upstream.rs`, `kiln-mesh`), behind bearer tokens (`auth.rs`,
//! `tokens.rs`) and the limits composed in `limits.rs` (among them the
//! bounded queue that sheds load, `shed.rs`). Every call passes one authorization step
//! (`PublicApi::authorize`); REST routes and OpenAPI operations are
//! registered together in `rest.rs`'s route table. The web dashboard
//! (`dashboard/`) is served on the REST port at `/`, behind a session cookie
//! (`sessions.rs`) with CSRF protection in the same guard.

pub mod auth;
pub mod config;
pub mod contact_sheet;
pub mod dashboard;
pub mod error;
pub mod grpc;
pub mod guard;
pub mod http_server;
pub mod limits;
pub mod lookup_limit;
pub mod openapi;
pub mod ranges;
pub mod rate_limit;
pub mod rest;
pub mod rest_farm;
pub mod sessions;
pub mod shed;
pub mod sse;
pub mod stream_limit;
pub mod token_service;
pub mod tokens;
pub mod upstream;
pub mod webhook_service;
pub mod webhooks_rest;
