//! Protections at the edge, before the pipeline does any work: rate limits per user and per
//! source address (GCRA through `governor`, per node), and a bound on the requests a node
//! serves at once that sheds reads before sends. The API asks; the pipeline never sees a
//! refused request, so a refused send writes nothing.

mod options;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

pub use options::ProtectOptions;

use crate::metrics::{IN_FLIGHT, IN_FLIGHT_LIMIT};

/// What a request costs the server, for its rate limit and its priority when shedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    Send,
    Write,
    Read,
}

impl RequestClass {
    pub fn of_rpc(rpc: &str) -> Self {
        match rpc {
            "SendMessage" => Self::Send,
            "Sync" | "GetHistory" | "ListConversations" | "GetConversation" | "GetPresence"
            | "Ping" => Self::Read,
            _ => Self::Write,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Write => "write",
            Self::Read => "read",
        }
    }
}

impl std::fmt::Display for RequestClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a request was refused, and when the client may try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many {class} requests from this user: retry in {} ms", .retry_after.as_millis())]
    UserRate {
        class: RequestClass,
        retry_after: Duration,
    },
    #[error("too many failed authentications from this address: retry in {} ms", .retry_after.as_millis())]
    SourceAuthFailures { retry_after: Duration },
    #[error("the node is overloaded and sheds {class} requests: retry in {} ms", .retry_after.as_millis())]
    Overloaded {
        class: RequestClass,
        retry_after: Duration,
    },
}

impl Refusal {
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::UserRate { retry_after, .. }
            | Self::SourceAuthFailures { retry_after }
            | Self::Overloaded { retry_after, .. } => *retry_after,
        }
    }
}

/// How long a shed request is told to wait: long enough for the burst to pass, short enough
/// that a client does not give up.
const SHED_RETRY_AFTER: Duration = Duration::from_millis(500);
/// How often limiter state of keys that are back to full quota is dropped.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

pub struct Protection {
    options: ProtectOptions,
    sends: Option<DefaultKeyedRateLimiter<String>>,
    writes: Option<DefaultKeyedRateLimiter<String>>,
    reads: Option<DefaultKeyedRateLimiter<String>>,
    auth_failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    in_flight: AtomicU32,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    per_sec: u32,
    burst: u32,
) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Some(DefaultKeyedRateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), Duration> {
    limiter
        .check_key(key)
        .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
}

impl Protection {
    pub fn new(options: ProtectOptions) -> Arc<Self> {
        Arc::new(Self {
            sends: limiter(options.user_sends_per_sec, options.user_send_burst),
            writes: limiter(options.user_writes_per_sec, options.user_write_burst),
            reads: limiter(options.user_reads_per_sec, options.user_read_burst),
            auth_failures: limiter(
                options.source_auth_failures_per_sec,
                options.source_auth_failure_burst,
            ),
            in_flight: AtomicU32::new(0),
            options,
        })
    }

    pub fn options(&self) -> &ProtectOptions {
        &self.options
    }

    /// A place among the requests in flight, held until the guard drops; refused when the
    /// class's share of the bound is taken (sends may use all of it, others a share).
    pub fn admit(self: &Arc<Self>, class: RequestClass) -> Result<InFlight, Refusal> {
        let max = self.options.max_in_flight;
        let bound = match class {
            _ if max == 0 => u32::MAX,
            RequestClass::Send => max,
            _ => (u64::from(max) * u64::from(self.options.non_send_share_percent) / 100).max(1)
                as u32,
        };
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < bound).then_some(n + 1)
            });
        match admitted {
            Ok(_) => Ok(InFlight(self.clone())),
            Err(_) => {
                limited(class, "overload");
                Err(Refusal::Overloaded {
                    class,
                    retry_after: SHED_RETRY_AFTER,
                })
            }
        }
    }

    /// Charges one request of `class` to `user_id`.
    pub fn check_user(&self, class: RequestClass, user_id: &str) -> Result<(), Refusal> {
        let limiter = match class {
            RequestClass::Send => &self.sends,
            RequestClass::Write => &self.writes,
            RequestClass::Read => &self.reads,
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        // The map is keyed by owned ids; a lookup allocates one (a few ns next to a request).
        check(limiter, &user_id.to_owned()).map_err(|retry_after| {
            limited(class, "user");
            Refusal::UserRate { class, retry_after }
        })
    }

    /// Charges a failed authentication to its source address: `Err` once the address is over
    /// its quota (then the failure is answered as a refusal, not as UNAUTHENTICATED).
    pub fn auth_failed(&self, class: RequestClass, source: Option<IpAddr>) -> Result<(), Refusal> {
        let (Some(limiter), Some(source)) = (&self.auth_failures, source) else {
            return Ok(());
        };
        check(limiter, &source).map_err(|retry_after| {
            limited(class, "source");
            Refusal::SourceAuthFailures { retry_after }
        })
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Publishes the in-flight gauge and forgets limiter state of keys back at full quota
    /// (without it, every user and address ever seen would stay in memory).
    pub fn spawn_upkeep(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::downgrade(self);
        metrics::gauge!(IN_FLIGHT_LIMIT).set(f64::from(self.options.max_in_flight));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            let mut rounds = 0u64;
            loop {
                tick.tick().await;
                let Some(this) = this.upgrade() else { return };
                metrics::gauge!(IN_FLIGHT).set(f64::from(this.in_flight()));
                rounds += 1;
                if rounds.is_multiple_of(60) {
                    for limiter in [&this.sends, &this.writes, &this.reads]
                        .into_iter()
                        .flatten()
                    {
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                    if let Some(limiter) = &this.auth_failures {
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                }
            }
        })
    }
}

fn limited(class: RequestClass, scope: &'static str) {
    crate::metrics::record_limited(class.name(), scope);
}

/// A request in flight: counted until dropped.
pub struct InFlight(Arc<Protection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ProtectOptions {
        ProtectOptions {
            user_sends_per_sec: 2,
            user_send_burst: 3,
            max_in_flight: 4,
            non_send_share_percent: 50,
            ..ProtectOptions::default()
        }
    }

    #[test]
    fn a_user_gets_the_burst_then_is_told_when_to_retry() {
        let protect = Protection::new(options());
        for _ in 0..3 {
            protect.check_user(RequestClass::Send, "alice").unwrap();
        }
        let refusal = protect.check_user(RequestClass::Send, "alice").unwrap_err();
        // 2/s: the next cell is at most 500 ms away.
        assert!(
            refusal.retry_after() > Duration::ZERO
                && refusal.retry_after() <= Duration::from_millis(500),
            "{refusal:?}"
        );
        // Another user, and another class of the same user, have their own quota.
        protect.check_user(RequestClass::Send, "bob").unwrap();
        protect.check_user(RequestClass::Read, "alice").unwrap();
    }

    #[test]
    fn shedding_keeps_the_last_places_for_sends() {
        let protect = Protection::new(options());
        let reads: Vec<_> = (0..2)
            .map(|_| protect.admit(RequestClass::Read).unwrap())
            .collect();
        assert!(matches!(
            protect.admit(RequestClass::Read),
            Err(Refusal::Overloaded { .. })
        ));
        let sends: Vec<_> = (0..2)
            .map(|_| protect.admit(RequestClass::Send).unwrap())
            .collect();
        assert!(protect.admit(RequestClass::Send).is_err());
        assert_eq!(protect.in_flight(), 4);
        drop(reads);
        drop(sends);
        assert_eq!(protect.in_flight(), 0);
        protect.admit(RequestClass::Read).unwrap();
    }

    #[test]
    fn zero_rates_and_bound_turn_the_limits_off() {
        let protect = Protection::new(ProtectOptions::unlimited());
        let held: Vec<_> = (0..10_000)
            .map(|_| {
                protect.check_user(RequestClass::Send, "alice").unwrap();
                protect
                    .auth_failed(RequestClass::Read, Some(IpAddr::from([127, 0, 0, 1])))
                    .unwrap();
                protect.admit(RequestClass::Read).unwrap()
            })
            .collect();
        assert_eq!(held.len(), 10_000);
    }
}
