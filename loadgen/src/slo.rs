//! Service-level objectives given with `--slo`, e.g. `broadcast.p99<20ms,errors=0`, checked
//! against the final report so a CI pipeline can gate on the exit code.
//!
//! Grammar: clauses separated by commas; each is `LHS OP VALUE` with OP one of `<`, `<=`, `>`,
//! `>=`, `=`. LHS is either `METRIC.STAT` (metric: broadcast, input, rtt, connect, join, event,
//! reconnect, resume; stat: p50, p90, p99, p99.9, max, min, mean) with a duration VALUE (`us`, `ms`, `s`;
//! bare numbers are microseconds), or a counter: `errors` (over the whole run, ramp-up and
//! leaving included), `missed` (tick gaps), `delivery` (received / expected snapshots, 0..1),
//! `late` (fraction of sends made late by the generator), `reconnects`; all but `errors` are
//! over the measured window.
//!
//! A gate cannot pass on nothing: a bound on a metric without samples (no broadcast latency
//! because no snapshot came, `missed` or `delivery` with no snapshot expected, `late` with no
//! send scheduled) is broken, reported as "no samples".

use crate::report::{Report, Violation};
use crate::stats::Metric;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Less,
    LessEq,
    Greater,
    GreaterEq,
    Equal,
}

impl Op {
    fn holds(self, actual: f64, bound: f64) -> bool {
        match self {
            Self::Less => actual < bound,
            Self::LessEq => actual <= bound,
            Self::Greater => actual > bound,
            Self::GreaterEq => actual >= bound,
            Self::Equal => (actual - bound).abs() < 1e-9,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Self::Less => "<",
            Self::LessEq => "<=",
            Self::Greater => ">",
            Self::GreaterEq => ">=",
            Self::Equal => "=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Subject {
    Latency { metric: Metric, stat: String },
    Errors,
    Missed,
    Delivery,
    Late,
    Reconnects,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bound {
    pub(crate) subject: Subject,
    pub(crate) op: Op,
    /// Microseconds for latencies; plain numbers for counters and ratios.
    pub(crate) value: f64,
    /// The clause as written, for messages.
    pub(crate) text: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid --slo clause {clause:?}: {problem}")]
pub(crate) struct SloParseError {
    pub(crate) clause: String,
    pub(crate) problem: String,
}

pub(crate) fn parse(spec: &str) -> Result<Vec<Bound>, SloParseError> {
    spec.split(',')
        .map(str::trim)
        .filter(|clause| !clause.is_empty())
        .map(parse_clause)
        .collect()
}

fn parse_clause(clause: &str) -> Result<Bound, SloParseError> {
    let fail = |problem: &str| SloParseError {
        clause: clause.to_owned(),
        problem: problem.to_owned(),
    };
    let (at, op, len) = [
        ("<=", Op::LessEq),
        (">=", Op::GreaterEq),
        ("<", Op::Less),
        (">", Op::Greater),
        ("=", Op::Equal),
    ]
    .into_iter()
    .find_map(|(symbol, op)| clause.find(symbol).map(|at| (at, op, symbol.len())))
    .ok_or_else(|| fail("expected one of < <= > >= ="))?;
    let lhs = clause[..at].trim();
    let rhs = clause[at + len..].trim();
    let (subject, value) = match lhs.split_once('.') {
        Some((metric, stat)) => {
            let metric = Metric::from_name(metric).ok_or_else(|| {
                fail("unknown metric (broadcast, input, rtt, connect, join, event, reconnect, resume)")
            })?;
            if crate::stats::Summary::of(&crate::stats::new_histogram())
                .stat(stat)
                .is_none()
            {
                return Err(fail(
                    "unknown statistic (p50, p90, p99, p99.9, max, min, mean)",
                ));
            }
            let value = parse_micros(rhs)
                .ok_or_else(|| fail("expected a duration like 20ms, 500us or 1s"))?;
            (
                Subject::Latency {
                    metric,
                    stat: stat.to_owned(),
                },
                value,
            )
        }
        None => {
            let subject = match lhs {
                "errors" => Subject::Errors,
                "missed" => Subject::Missed,
                "delivery" => Subject::Delivery,
                "late" => Subject::Late,
                "reconnects" => Subject::Reconnects,
                _ => {
                    return Err(fail(
                        "unknown counter (errors, missed, delivery, late, reconnects)",
                    ));
                }
            };
            let value = rhs.parse().map_err(|_| fail("expected a number"))?;
            (subject, value)
        }
    };
    Ok(Bound {
        subject,
        op,
        value,
        text: clause.to_owned(),
    })
}

/// `20ms` → 20000.0, `500us` → 500.0, `1.5s` → 1500000.0, `250` → 250.0 (microseconds).
fn parse_micros(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("µs") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * scale)
}

/// The value a bound is about, measured in `report`; None when the metric has no samples.
fn actual(subject: &Subject, report: &Report) -> Option<f64> {
    let counters = &report.counters;
    match subject {
        Subject::Latency { metric, stat } => report
            .latency
            .get(metric.name())
            .filter(|summary| summary.count > 0)
            .and_then(|summary| summary.stat(stat)),
        Subject::Errors => Some(report.total_errors() as f64),
        Subject::Missed => (counters.snapshots_expected > 0).then_some(counters.tick_gaps as f64),
        Subject::Delivery => report.delivery_ratio(),
        Subject::Late => report.late_fraction(),
        Subject::Reconnects => Some(counters.reconnects as f64),
    }
}

/// Every bound the report breaks, including every bound on a metric without samples.
pub(crate) fn check(bounds: &[Bound], report: &Report) -> Vec<Violation> {
    bounds
        .iter()
        .filter_map(|bound| {
            let actual = actual(&bound.subject, report);
            let holds = actual.is_some_and(|actual| bound.op.holds(actual, bound.value));
            (!holds).then(|| Violation {
                bound: format!(
                    "{} ({:?} {} {})",
                    bound.text,
                    bound.subject,
                    bound.op.symbol(),
                    bound.value
                ),
                actual,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_latency_and_counter_clauses() {
        let bounds =
            parse("broadcast.p99<20ms, errors=0,rtt.p99.9<=1.5s,delivery>=0.99, input.max<500")
                .unwrap();
        assert_eq!(bounds.len(), 5);
        assert_eq!(
            bounds[0].subject,
            Subject::Latency {
                metric: Metric::Broadcast,
                stat: "p99".into()
            }
        );
        assert_eq!((bounds[0].op, bounds[0].value), (Op::Less, 20_000.0));
        assert_eq!(
            (bounds[1].subject.clone(), bounds[1].op, bounds[1].value),
            (Subject::Errors, Op::Equal, 0.0)
        );
        assert_eq!((bounds[2].op, bounds[2].value), (Op::LessEq, 1_500_000.0));
        assert_eq!((bounds[3].op, bounds[3].value), (Op::GreaterEq, 0.99));
        assert_eq!(bounds[4].value, 500.0);
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        for (spec, problem) in [
            ("broadcast.p99", "expected one of"),
            ("latency.p99<1ms", "unknown metric"),
            ("broadcast.p42<1ms", "unknown statistic"),
            ("broadcast.p99<fast", "expected a duration"),
            ("crashes=0", "unknown counter"),
            ("errors<none", "expected a number"),
        ] {
            let err = parse(spec).unwrap_err();
            assert!(err.problem.contains(problem), "{spec}: {err}");
        }
    }

    #[test]
    fn checks_bounds_against_a_report() {
        let mut report = Report::empty_for_tests();
        let mut histogram = crate::stats::new_histogram();
        for micros in 1..=1000 {
            histogram.record(micros).unwrap();
        }
        report
            .latency
            .insert("broadcast".into(), crate::stats::Summary::of(&histogram));
        let bounds = parse("broadcast.p99<2ms,broadcast.p50<100us,errors=0").unwrap();
        let broken = check(&bounds, &report);
        assert_eq!(broken.len(), 1);
        assert!(broken[0].bound.starts_with("broadcast.p50<100us"));
        assert!(
            broken[0]
                .actual
                .is_some_and(|p50| (490.0..=510.0).contains(&p50))
        );
    }

    #[test]
    fn errors_are_judged_over_the_whole_run_not_the_window() {
        let mut report = Report::empty_for_tests();
        // An error during ramp-up: outside the window's counters, inside the whole run.
        report.errors_whole_run.insert("connect_refused".into(), 1);
        assert_eq!(report.counters.total_errors(), 0);
        let broken = check(&parse("errors=0").unwrap(), &report);
        assert_eq!(broken.len(), 1);
        assert_eq!(broken[0].actual, Some(1.0));
    }

    #[test]
    fn a_bound_on_a_metric_without_samples_is_broken() {
        let mut report = Report::empty_for_tests();
        // Clients joined, sent on schedule, saw no snapshot and made no error.
        report.clients_joined_at_end = 4;
        report.clients_joined_avg = 4.0;
        report.counters.states_sent = 100;
        let bounds =
            parse("broadcast.p99<20ms,input.max<1s,missed=0,delivery>=0.99,late<0.01,errors=0")
                .unwrap();
        let broken = check(&bounds, &report);
        let broken: Vec<_> = broken.iter().map(ToString::to_string).collect();
        assert_eq!(broken.len(), 4, "{broken:#?}");
        for (index, clause) in ["broadcast.p99<20ms", "input.max<1s", "missed=0"]
            .iter()
            .enumerate()
        {
            assert!(
                broken[index].starts_with(clause) && broken[index].ends_with("(no samples)"),
                "{broken:#?}"
            );
        }
        assert!(
            broken[3].starts_with("delivery>=0.99") && broken[3].ends_with("(measured 0)"),
            "delivery is 0, not 1, when nothing came: {broken:#?}"
        );
    }
}
