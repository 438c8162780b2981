//! What tests and benchmarks need and production never runs, behind the `testkit` feature
//! (the crate's dev-dependency on itself turns it on; `cargo build --release` leaves it out):
//!
//! - [`faults`]: a clock tests move by hand, and `Store` / `Cache` decorators that crash, drop,
//!   delay or reset at the n-th operation;
//! - [`groups`]: a caller and a new group, for tests of the pipeline;
//! - [`ports`]: free loopback ports for child servers;
//! - [`redis_server`]: a private `redis-server` per test, with kill, flush and pause;
//! - [`cql`]: a parser for the CQL subset of `schema.cql` and the backend's statements, and the
//!   checks that keep them in agreement;
//! - [`scylla`]: the cluster and throw-away keyspaces of the ScyllaDB tests.

pub mod cql;
pub mod faults;
pub mod groups;
pub mod ports;
pub mod redis_server;
pub mod scylla;
