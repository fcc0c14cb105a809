//! Kiln's gateway: the public gRPC API (`grpc.rs`) and REST/JSON (`rest.rs`),
//! both passing calls to the internal services found through etcd (`upstream.rs`).

pub mod config;
pub mod grpc;
pub mod rest;
pub mod upstream;
