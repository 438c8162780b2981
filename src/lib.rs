//! # timeline
//!
//! A chat timeline service: apps send messages into conversations and read them back as a
//! sync feed, as history, and as a conversation list with unread counts.
//!
//! The layers, from the edge inwards:
//!
//! 1. [`api`]: gRPC over HTTP/2 and the same RPCs as `POST /v1/<Method>` (protobuf or JSON);
//!    token verification; the one mapping from errors to status codes.
//! 2. [`timeline`]: the domain pipeline — send with fan-out and outbox re-drive, sync with
//!    cursor and gap rule, history, conversations and read state. Written once, generic over:
//! 3. [`store`]: the durable tables of `schema.cql` behind the `Store` trait (embedded fjall
//!    backend), and [`cache`]: sequencer and short-lived keys behind the `Cache` trait (local
//!    in-process backend). Decorators of the same traits add metrics.
//!
//! Around them: [`config`] (layered configuration), [`metrics`] (Prometheus), [`server`]
//! (wiring one running node together).

pub mod api;
pub mod cache;
pub mod config;
mod method_list;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod server;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod timeline;
pub mod units;
