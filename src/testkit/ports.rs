//! Free loopback ports for child servers (redis-server, prometheus).
//!
//! A port from `bind(":0")` comes out of the kernel's ephemeral range, the same range outgoing
//! connections take their local ports from: between the probe and the child's own bind, a
//! client connecting to that very port (the readiness probe itself) can take it as its local
//! port and connect to itself, and the child then fails to bind. Ports below the range are never
//! handed out that way.

use std::net::TcpListener;

/// Below Linux's default ephemeral range (32768–60999) and above the well-known services.
const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port that was free a moment ago and is outside the ephemeral range.
pub fn free_port() -> std::io::Result<u16> {
    for _ in 0..200 {
        let port = rand::random_range(RANGE);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // A crowded range: let the kernel choose.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
