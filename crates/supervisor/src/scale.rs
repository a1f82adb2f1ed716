//! Autoscale settings and step policies, as KraftCloud's `scale init` and
//! `scale add` define them: a service keeps between `min` and `max`
//! instances; each step policy reads a metric per instance and, for the step
//! whose bounds hold the value, asks for more or fewer instances. The
//! decision is a pure function here; `lib.rs` samples the metrics (on every
//! lease taken or given back, and every [`TICK`] while instances are up) and
//! acts on it.
//!
//! Semantics (borrowed from KraftCloud's scale policies, which follow AWS
//! step scaling): a step `LO:HI/ADJ` applies when `LO <= value < HI`, a
//! missing bound being unbounded; `change` adds ADJ instances to the current
//! count, `percent` adds ADJ percent of it (rounded away from zero), `exact`
//! sets it to ADJ. Of several policies the largest result wins, so scale-out
//! is never held back by a policy that would scale in. The result is clamped
//! to `min..=max`.

use std::time::Duration;

/// How often the metrics are sampled while a service with policies has
/// instances up (a lease taken or given back samples at once as well).
pub const TICK: Duration = Duration::from_millis(100);

/// What a policy measures, per live instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// CPU time in millicores (1000 = one core busy), from the instances'
    /// cgroups, averaged over the last second.
    Cpu,
    /// Requests in flight.
    Inflight,
    /// Requests answered per second, over the last second.
    Rps,
}

/// How a step's adjustment changes the instance count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjustment {
    Change,
    Percent,
    Exact,
}

/// `LO:HI/ADJ`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    pub adjustment: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepPolicy {
    pub name: String,
    pub metric: Metric,
    pub adjustment: Adjustment,
    pub steps: Vec<Step>,
}

/// A service's scale settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleConfig {
    /// Instances kept up however idle.
    pub min: u32,
    /// Instances at most.
    pub max: u32,
    /// After a policy scaled out, how long before it may scale out again
    /// (the new instances' load has to show first).
    pub warmup: Duration,
    /// After a policy scaled out, how long before it may scale in; also the
    /// idle time before an instance goes to standby.
    pub cooldown: Duration,
    pub policies: Vec<StepPolicy>,
}

/// One sample of the metrics, per live instance.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metrics {
    pub cpu_millicores: f64,
    pub inflight: f64,
    pub rps: f64,
}

impl Metrics {
    fn of(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Cpu => self.cpu_millicores,
            Metric::Inflight => self.inflight,
            Metric::Rps => self.rps,
        }
    }
}

impl Step {
    /// Parses KraftCloud's `LO:HI/ADJ` (`600:800/50`, `800:/100`,
    /// `:50/-50`).
    pub fn parse(text: &str) -> Result<Step, String> {
        let bad = |why: &str| format!("invalid step `{text}`: {why} (write LO:HI/ADJ, e.g. `600:800/50` or `:50/-1`)");
        let (bounds, adjustment) = text.split_once('/').ok_or_else(|| bad("no `/ADJ`"))?;
        let (lower, upper) = bounds.split_once(':').ok_or_else(|| bad("no `:` between the bounds"))?;
        let bound = |part: &str| -> Result<Option<f64>, String> {
            if part.is_empty() {
                return Ok(None);
            }
            match part.parse::<f64>() {
                Ok(value) if value.is_finite() => Ok(Some(value)),
                _ => Err(bad(&format!("`{part}` is not a number"))),
            }
        };
        let step = Step {
            lower: bound(lower)?,
            upper: bound(upper)?,
            adjustment: adjustment.parse().map_err(|_| bad(&format!("`{adjustment}` is not a whole number")))?,
        };
        if let (Some(lower), Some(upper)) = (step.lower, step.upper)
            && lower >= upper
        {
            return Err(bad("the lower bound must be below the upper one"));
        }
        Ok(step)
    }

    fn holds(&self, value: f64) -> bool {
        self.lower.is_none_or(|lower| value >= lower) && self.upper.is_none_or(|upper| value < upper)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bound = |b: Option<f64>| b.map(|v| v.to_string()).unwrap_or_default();
        write!(f, "{}:{}/{}", bound(self.lower), bound(self.upper), self.adjustment)
    }
}

impl StepPolicy {
    /// Refuses overlapping steps: a value must pick one step at most.
    pub fn check(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err(format!("policy `{}` has no steps", self.name));
        }
        let mut sorted: Vec<&Step> = self.steps.iter().collect();
        sorted.sort_by(|a, b| a.lower.unwrap_or(f64::NEG_INFINITY).total_cmp(&b.lower.unwrap_or(f64::NEG_INFINITY)));
        for pair in sorted.windows(2) {
            let upper = pair[0].upper.unwrap_or(f64::INFINITY);
            let lower = pair[1].lower.unwrap_or(f64::NEG_INFINITY);
            if lower < upper {
                return Err(format!("policy `{}`: steps `{}` and `{}` overlap", self.name, pair[0], pair[1]));
            }
        }
        Ok(())
    }

    /// The instance count this policy asks for with `current` instances, or
    /// `None` if no step holds the value.
    fn desired(&self, metrics: &Metrics, current: u32) -> Option<i64> {
        let value = metrics.of(self.metric);
        let step = self.steps.iter().find(|step| step.holds(value))?;
        let current = i64::from(current);
        Some(match self.adjustment {
            Adjustment::Change => current + step.adjustment,
            Adjustment::Percent => {
                let change = current * step.adjustment;
                // Away from zero, so that 10 % of 3 instances still moves one.
                current + if change >= 0 { (change + 99) / 100 } else { (change - 99) / 100 }
            }
            Adjustment::Exact => step.adjustment,
        })
    }
}

impl ScaleConfig {
    /// The instance count the policies ask for with `current` instances up,
    /// clamped to `min..=max`; `None` if no policy has a step for the
    /// values (the count stays as it is).
    pub fn desired(&self, metrics: &Metrics, current: u32) -> Option<u32> {
        let wanted = self.policies.iter().filter_map(|policy| policy.desired(metrics, current)).max()?;
        Some(wanted.clamp(i64::from(self.min), i64::from(self.max.max(self.min))) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(metric: Metric, adjustment: Adjustment, steps: &[&str]) -> StepPolicy {
        StepPolicy {
            name: "p".into(),
            metric,
            adjustment,
            steps: steps.iter().map(|s| Step::parse(s).unwrap()).collect(),
        }
    }

    fn config(policies: Vec<StepPolicy>) -> ScaleConfig {
        ScaleConfig { min: 0, max: 8, warmup: Duration::ZERO, cooldown: Duration::from_secs(1), policies }
    }

    fn inflight(value: f64) -> Metrics {
        Metrics { inflight: value, ..Metrics::default() }
    }

    #[test]
    fn steps_parse_as_kraftcloud_writes_them() {
        assert_eq!(Step::parse("600:800/50").unwrap(), Step { lower: Some(600.0), upper: Some(800.0), adjustment: 50 });
        assert_eq!(Step::parse("800:/100").unwrap(), Step { lower: Some(800.0), upper: None, adjustment: 100 });
        assert_eq!(Step::parse(":50/-50").unwrap(), Step { lower: None, upper: Some(50.0), adjustment: -50 });
        for bad in ["600:800", "600/50", "a:b/1", "1:2/x", "5:5/1", "9:1/1", "1:2/1.5", "inf:/1"] {
            assert!(Step::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Step::parse(":50/-50").unwrap().to_string(), ":50/-50");
    }

    #[test]
    fn the_step_that_holds_the_value_adjusts_the_count() {
        let out = config(vec![policy(Metric::Inflight, Adjustment::Change, &["5:10/1", "10:/3", ":1/-1"])]);
        assert_eq!(out.desired(&inflight(2.0), 2), None, "no step holds 2");
        assert_eq!(out.desired(&inflight(5.0), 2), Some(3), "the lower bound is inclusive");
        assert_eq!(out.desired(&inflight(10.0), 2), Some(5), "the upper bound is exclusive");
        assert_eq!(out.desired(&inflight(0.5), 2), Some(1));
        assert_eq!(out.desired(&inflight(0.0), 0), Some(0), "never below min");
        assert_eq!(out.desired(&inflight(100.0), 7), Some(8), "never above max");
    }

    #[test]
    fn percent_and_exact_adjustments() {
        let percent = config(vec![policy(Metric::Cpu, Adjustment::Percent, &["600:/50", ":100/-50"])]);
        let cpu = |millicores| Metrics { cpu_millicores: millicores, ..Metrics::default() };
        assert_eq!(percent.desired(&cpu(700.0), 4), Some(6));
        assert_eq!(percent.desired(&cpu(700.0), 1), Some(2), "a fraction of an instance rounds up");
        assert_eq!(percent.desired(&cpu(10.0), 3), Some(1), "and down when scaling in");
        let exact = config(vec![policy(Metric::Rps, Adjustment::Exact, &["100:/4"])]);
        assert_eq!(exact.desired(&Metrics { rps: 150.0, ..Metrics::default() }, 1), Some(4));
    }

    #[test]
    fn the_largest_wish_of_several_policies_wins() {
        let both = config(vec![
            policy(Metric::Inflight, Adjustment::Change, &[":1/-1"]),
            policy(Metric::Cpu, Adjustment::Change, &["500:/2"]),
        ]);
        let metrics = Metrics { inflight: 0.5, cpu_millicores: 900.0, rps: 0.0 };
        assert_eq!(both.desired(&metrics, 2), Some(4));
    }

    #[test]
    fn overlapping_steps_are_refused() {
        assert!(policy(Metric::Cpu, Adjustment::Change, &["600:800/50", "800:/100"]).check().is_ok());
        assert!(policy(Metric::Cpu, Adjustment::Change, &["600:800/50", "700:/100"]).check().is_err());
        assert!(policy(Metric::Cpu, Adjustment::Change, &[":50/-1", "40:/1"]).check().is_err());
        assert!(policy(Metric::Cpu, Adjustment::Change, &[]).check().is_err());
    }
}
