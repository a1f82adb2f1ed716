//! Restart back-off for a service whose instances fail to start.

use std::time::{Duration, Instant};

/// The first delay after a failure.
pub const FIRST: Duration = Duration::from_secs(1);
/// The longest delay.
pub const LONGEST: Duration = Duration::from_secs(300);
/// Healthy this long after a success, the next failure starts over at `FIRST`.
pub const HEALTHY: Duration = Duration::from_secs(60);

/// 1 s after a failure, doubling with each further failure up to 5 min;
/// reset by a success that stays healthy for a minute.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    next: Option<Duration>,
    healthy_since: Option<Instant>,
}

impl Backoff {
    /// Records a failure at `now`; returns how long to wait before the next start.
    pub fn fail(&mut self, now: Instant) -> Duration {
        if self.healthy_since.is_some_and(|since| now.duration_since(since) >= HEALTHY) {
            self.next = None;
        }
        self.healthy_since = None;
        let delay = self.next.unwrap_or(FIRST);
        self.next = Some((delay * 2).min(LONGEST));
        delay
    }

    /// Records a start that became ready at `now`.
    pub fn succeed(&mut self, now: Instant) {
        self.healthy_since.get_or_insert(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_to_five_minutes() {
        let mut backoff = Backoff::default();
        let now = Instant::now();
        let delays: Vec<u64> = (0..12).map(|_| backoff.fail(now).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn a_healthy_minute_resets_it_a_short_one_does_not() {
        let mut backoff = Backoff::default();
        let start = Instant::now();
        backoff.fail(start);
        backoff.fail(start);
        backoff.succeed(start);
        assert_eq!(backoff.fail(start + Duration::from_secs(5)), Duration::from_secs(4), "5 s healthy is not enough");
        backoff.succeed(start + Duration::from_secs(10));
        assert_eq!(backoff.fail(start + Duration::from_secs(80)), FIRST);
    }
}
