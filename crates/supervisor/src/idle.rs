//! When an idle instance goes to standby: the decision alone, on tokio's
//! clock, so it can be tested in virtual time.

use std::time::Duration;

use tokio::time::Instant;

/// What the idle decision looks at.
pub struct Clock {
    /// When the last lease was dropped.
    pub idle_since: Instant,
    pub started_at: Instant,
    /// Requests the instance has served.
    pub served: u64,
    /// Whether it was started for requests (which may have given up
    /// waiting) rather than by a step policy or a minimum: only those get
    /// the start-up grace.
    pub on_demand: bool,
    pub cooldown: Duration,
    pub ready_timeout: Duration,
    /// Ready instances of the service, this one included.
    pub awake: usize,
    /// Instances the service keeps up however idle.
    pub min: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Look again after this long.
    Wait(Duration),
    /// Put it on standby now.
    Standby,
    /// Keep it up until something changes.
    Stay,
}

pub fn decide(clock: &Clock) -> Decision {
    let idle_for = clock.idle_since.elapsed();
    if idle_for < clock.cooldown {
        return Decision::Wait(clock.cooldown - idle_for);
    }
    // Start-up grace: an instance started for requests that gave up waiting
    // stays until it served one, or for the ready timeout.
    let age = clock.started_at.elapsed();
    if clock.on_demand && clock.served == 0 && age < clock.ready_timeout {
        return Decision::Wait(clock.ready_timeout - age);
    }
    if clock.awake <= clock.min {
        return Decision::Stay;
    }
    Decision::Standby
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(served: u64, awake: usize, min: usize) -> Clock {
        let now = Instant::now();
        Clock {
            idle_since: now,
            started_at: now,
            served,
            on_demand: true,
            cooldown: Duration::from_secs(1),
            ready_timeout: Duration::from_secs(30),
            awake,
            min,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn standby_comes_exactly_after_the_cooldown() {
        let clock = clock(1, 1, 0);
        assert_eq!(decide(&clock), Decision::Wait(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(decide(&clock), Decision::Wait(Duration::from_millis(1)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(decide(&clock), Decision::Standby);
    }

    #[tokio::test(start_paused = true)]
    async fn new_activity_restarts_the_cooldown() {
        let mut clock = clock(1, 1, 0);
        tokio::time::advance(Duration::from_millis(900)).await;
        clock.idle_since = Instant::now();
        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(decide(&clock), Decision::Wait(Duration::from_millis(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unclaimed_instance_gets_the_start_up_grace() {
        let clock = clock(0, 1, 0);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(decide(&clock), Decision::Wait(Duration::from_secs(25)));
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(decide(&clock), Decision::Standby);
    }

    #[tokio::test(start_paused = true)]
    async fn the_minimum_stays_up() {
        let clock = clock(3, 2, 2);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(decide(&clock), Decision::Stay);
        let clock = Clock { awake: 3, ..clock };
        assert_eq!(decide(&clock), Decision::Standby);
    }
}
