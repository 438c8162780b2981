//! # timeline
//!
//! A chat timeline service: apps send messages into conversations and read them back as a
//! sync feed, as history, and as a conversation list with unread counts.
//!
//! The layers, from the edge inwards (each calls only the ones below it):
//!
//! 1. [`api`]: gRPC over HTTP/2 and the same RPCs as `POST /v1/<Method>` (protobuf or JSON);
//!    token verification; the one mapping from errors to status codes.
//! 2. [`timeline`]: the domain pipeline — send, sync, history, conversations and read state,
//!    delivery modes, with the delivery, repair and read parts they share. Written once, over:
//! 3. [`store`]: the durable tables of `schema.cql` behind the `Store` trait, with two backends:
//!    [`store::embedded`] (fjall in the data directory, no external service) and
//!    [`store::scylla`] (a ScyllaDB cluster); and [`cache`]: the sequencer, hot windows, claims,
//!    presence and pub/sub behind the `Cache` trait, with [`cache::local`] (in-process) and
//!    [`cache::redis`] (Redis or Redis Cluster). Decorators of the same traits add metrics
//!    ([`store::metered`], [`cache::metered`]) and, in the test kit, faults.
//! 4. [`model`]: the domain's vocabulary every layer shares; [`metrics`] and [`units`] beside it.
//!
//! Around them: [`config`] (layered configuration), [`server`] (wiring one running node
//! together), and the `testkit` feature (fault injection, a private `redis-server`, the CQL
//! checker, ScyllaDB test keyspaces) for tests and benchmarks only. The README's "How it works"
//! walks through the files, and its "Guarantees" section through what the tests prove.

pub mod api;
pub mod cache;
pub mod config;
mod method_list;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod protect;
pub mod proto;
pub mod push;
pub mod server;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod timeline;
pub mod units;
