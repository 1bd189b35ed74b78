//! The `--html` report: one self-contained page (inline CSS, SVG charts drawn with plotters, no
//! script, nothing fetched) showing a finished [`Report`]. It draws; it measures and decides
//! nothing, and every figure in it comes from the report.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use serde_json::Value;

use crate::report::{Report, TimelinePoint, ms};
use crate::stats::Metric;

/// Drawing size of every chart in SVG units; the page scales it to its width.
const CHART_SIZE: (u32, u32) = (960, 360);
/// Points per halving of the distance to 100% in the percentile plot (HdrHistogram's
/// `ticks_per_half_distance`).
const TICKS_PER_HALF_DISTANCE: u32 = 10;
/// Fewest and most decades of the percentile axis (99% .. 99.99999%).
const PERCENTILE_DECADES: (i32, i32) = (2, 7);
/// Timeline intervals shorter than this (cut short by the measured window opening or
/// closing) hold too few samples to plot; the JSON timeline keeps them.
const SHORTEST_PLOTTED_INTERVAL: f64 = 0.5;

const FONT: &str = "sans-serif";
const TEXT: RGBColor = RGBColor(0x33, 0x33, 0x33);
const GRID: RGBColor = RGBColor(0xe2, 0xe4, 0xe8);
const AXIS: RGBColor = RGBColor(0x88, 0x8c, 0x94);
const WINDOW_SHADE: RGBColor = RGBColor(0xee, 0xf3, 0xfb);

/// A distinct colour per metric, the same in every chart.
fn metric_color(metric: Metric) -> RGBColor {
    match metric {
        Metric::Broadcast => RGBColor(0x1f, 0x77, 0xb4),
        Metric::InputToVisible => RGBColor(0xe8, 0x71, 0x0a),
        Metric::Rtt => RGBColor(0x2c, 0xa0, 0x2c),
        Metric::Connect => RGBColor(0xd6, 0x27, 0x28),
        Metric::Join => RGBColor(0x94, 0x67, 0xbd),
        Metric::Event => RGBColor(0x8c, 0x56, 0x4b),
        Metric::Reconnect => RGBColor(0xe3, 0x77, 0xc2),
    }
}

/// The whole page.
pub(crate) fn render(report: &Report) -> anyhow::Result<String> {
    let mut page = String::from(PAGE_HEAD);
    header(&mut page, report);
    section(
        &mut page,
        "Latency by percentile",
        &format!(
            "Every latency metric at every percentile, over {}. The percentile axis is \
             logarithmic in 1/(1−p), so the tail gets as much room as the median.",
            samples_scope(report)
        ),
    );
    page.push_str(&percentile_chart(report).figure()?);
    timelines(&mut page, report)?;
    latency_table(&mut page, report);
    counters(&mut page, report);
    scenario_results(&mut page, report);
    parameters(&mut page, report);
    page.push_str("</main>\n</body>\n</html>\n");
    Ok(page)
}

const PAGE_HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tickrelay-loadgen report</title>
<style>
body { margin: 0; background: #f6f7f9; color: #333; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 2px; }
p { margin: 0 0 10px; }
.subtitle, .note { color: #666; }
.headline { display: flex; flex-wrap: wrap; gap: 10px; margin: 16px 0 0; padding: 0; list-style: none; }
.headline li { background: #fff; border: 1px solid #e2e4e8; border-radius: 6px; padding: 8px 14px; }
.headline b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
.headline span { color: #666; font-size: 13px; }
.passed { color: #1a7f37; } .failed { color: #c62828; }
figure { margin: 8px 0 0; background: #fff; border: 1px solid #e2e4e8; border-radius: 6px; padding: 8px; }
figure svg { display: block; width: 100%; height: auto; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 4px 8px 4px 84px; padding: 0; list-style: none; font-size: 14px; }
.swatch { display: inline-block; width: 18px; height: 4px; margin-right: 6px; vertical-align: middle; border-radius: 2px; }
.swatch.band { height: 12px; border: 1px solid #c9d6ea; }
table { border-collapse: collapse; background: #fff; border: 1px solid #e2e4e8; margin: 8px 0 0; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 12px; border-bottom: 1px solid #eef0f3; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
table.numbers td:not(:first-child), table.numbers th:not(:first-child) { text-align: right; }
table.counters td:first-child { color: #555; white-space: nowrap; }
.parameters { columns: 3 260px; column-gap: 28px; background: #fff; border: 1px solid #e2e4e8; padding: 6px 14px; margin: 8px 0 0; }
.parameters div { break-inside: avoid; display: flex; justify-content: space-between; gap: 12px; padding: 4px 0; border-bottom: 1px solid #eef0f3; }
.parameters span { color: #555; }
.parameters b { font-weight: 500; text-align: right; }
</style>
</head>
<body>
<main>
"#;

/// Title, what was run, the headline figures and the SLO verdict.
fn header(page: &mut String, report: &Report) {
    page.push_str("<h1>tickrelay-loadgen report</h1>\n");
    let mut facts = Vec::new();
    match &report.parameters {
        Some(plan) => {
            facts.push(format!("scenario {}", scenario_name(plan)));
            facts.push(format!(
                "{} clients in lobbies of {}",
                plan.shard_clients, plan.lobby_size
            ));
            if plan.shard_count > 1 {
                facts.push(format!("shard {}/{}", plan.shard_index, plan.shard_count));
            }
            if let Some(target) = &plan.target {
                facts.push(target.url.clone());
            }
        }
        None => facts.push("merged interval logs".to_owned()),
    }
    if report.started_unix_ms > 0 {
        let started = UNIX_EPOCH + Duration::from_millis(report.started_unix_ms as u64);
        facts.push(format!(
            "started {}",
            humantime::format_rfc3339_seconds(started)
        ));
    }
    let span = if is_merge(report) {
        "spanning"
    } else {
        "measured"
    };
    facts.push(format!("{span} {:.1} s", report.measured_seconds));
    if let Some(hz) = report.tick_hz {
        facts.push(format!("{hz} Hz ticks"));
    }
    let _ = writeln!(
        page,
        "<p class=\"subtitle\">{}</p>",
        escape(&facts.join(" · "))
    );
    headline(page, report);
    if let Some(slo) = &report.slo {
        let (class, verdict) = if slo.passed {
            ("passed", "passed")
        } else {
            ("failed", "FAILED")
        };
        let _ = writeln!(
            page,
            "<p>SLO <code>{}</code>: <b class=\"{class}\">{verdict}</b></p>",
            escape(&slo.spec)
        );
        if !slo.violations.is_empty() {
            page.push_str("<ul>\n");
            for violation in &slo.violations {
                let _ = writeln!(page, "<li>broken: {}</li>", escape(&violation.to_string()));
            }
            page.push_str("</ul>\n");
        }
    }
}

fn scenario_name(plan: &crate::plan::Plan) -> String {
    serde_json::to_value(plan.scenario)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A strip of the figures people look for first.
fn headline(page: &mut String, report: &Report) {
    let mut figures = Vec::new();
    for (name, summary) in report.latency_rows().take(2) {
        figures.push((format!("{} ms", ms(summary.p99)), format!("{name} p99")));
    }
    if !is_merge(report) {
        figures.push((
            format!("{:.0}", report.snapshots_per_second),
            "snapshots/s".to_owned(),
        ));
        if let Some(delivered) = report.delivery_ratio() {
            figures.push((format!("{:.3}%", delivered * 100.0), "delivered".to_owned()));
        }
        figures.push((report.total_errors().to_string(), "errors".to_owned()));
    }
    page.push_str("<ul class=\"headline\">\n");
    for (value, label) in figures {
        let _ = writeln!(
            page,
            "<li><b>{}</b><span>{}</span></li>",
            escape(&value),
            escape(&label)
        );
    }
    page.push_str("</ul>\n");
}

fn section(page: &mut String, title: &str, note: &str) {
    let _ = writeln!(
        page,
        "<h2>{}</h2>\n<p class=\"note\">{}</p>",
        escape(title),
        escape(note)
    );
}

/// A table; every cell is escaped. `headers` may be empty.
fn table(
    page: &mut String,
    class: &str,
    headers: &[&str],
    rows: impl IntoIterator<Item = Vec<String>>,
) {
    let _ = writeln!(page, "<table class=\"{}\">", escape(class));
    if !headers.is_empty() {
        page.push_str("<tr>");
        for header in headers {
            let _ = write!(page, "<th>{}</th>", escape(header));
        }
        page.push_str("</tr>\n");
    }
    for row in rows {
        page.push_str("<tr>");
        for cell in row {
            let _ = write!(page, "<td>{}</td>", escape(&cell));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n");
}

fn counters(page: &mut String, report: &Report) {
    if is_merge(report) {
        section(
            page,
            "Counters",
            "Not known: interval logs carry histograms only.",
        );
        return;
    }
    section(page, "Counters", "Over the measured window unless noted.");
    table(
        page,
        "counters",
        &[],
        report
            .summary_rows()
            .into_iter()
            .map(|(label, value)| vec![label.to_owned(), value]),
    );
}

/// Only `merge` builds a report without run parameters.
fn is_merge(report: &Report) -> bool {
    report.parameters.is_none()
}

/// What the latency histograms cover.
fn samples_scope(report: &Report) -> &'static str {
    if is_merge(report) {
        "every merged interval (whole runs, ramp-up included)"
    } else {
        "the measured window"
    }
}

fn latency_table(page: &mut String, report: &Report) {
    section(
        page,
        "Latency (ms)",
        &format!(
            "Over {}; the same figures as the table on stdout.",
            samples_scope(report)
        ),
    );
    table(
        page,
        "numbers",
        &["metric", "count", "p50", "p90", "p99", "p99.9", "max"],
        report.latency_rows().map(|(name, s)| {
            vec![
                name.to_owned(),
                s.count.to_string(),
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.p999),
                ms(s.max),
            ]
        }),
    );
}

/// Ramp steps and storm outcome, when the scenario produced them.
fn scenario_results(page: &mut String, report: &Report) {
    if let Some(ramp) = &report.ramp {
        section(
            page,
            "Ramp",
            &format!(
                "Each step must keep broadcast p99 ≤ {} ms, without errors or missed ticks. {}.",
                ms(ramp.bound_us),
                ramp.knee_text()
            ),
        );
        table(
            page,
            "numbers",
            &[
                "clients",
                "broadcast p99 (ms)",
                "errors",
                "missed ticks",
                "result",
            ],
            ramp.steps.iter().map(|step| {
                vec![
                    step.clients.to_string(),
                    ms(step.broadcast_p99_us),
                    step.errors.to_string(),
                    step.tick_gaps.to_string(),
                    if step.met { "ok" } else { "BROKEN" }.to_owned(),
                ]
            }),
        );
    }
    if let Some(storm) = &report.storm {
        section(page, "Storm", &format!("{}.", storm.summary()));
    }
}

fn parameters(page: &mut String, report: &Report) {
    match &report.parameters {
        Some(plan) => {
            section(page, "Run parameters", "As resolved from the command line.");
            let mut rows = Vec::new();
            if let Ok(value) = serde_json::to_value(plan) {
                flatten_parameters("", &value, &mut rows);
            }
            page.push_str("<div class=\"parameters\">\n");
            for (key, value) in rows {
                let _ = writeln!(
                    page,
                    "<div><span>{}</span><b>{}</b></div>",
                    escape(&key),
                    escape(&value)
                );
            }
            page.push_str("</div>\n");
        }
        None => section(
            page,
            "Run parameters",
            "Not known: interval logs carry histograms only.",
        ),
    }
}

/// Nested objects become dotted keys; durations read as `1s`, `100ms`.
fn flatten_parameters(key: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if as_duration(value).is_none() => {
            for (name, inner) in map {
                let dotted = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                flatten_parameters(&dotted, inner, rows);
            }
        }
        _ => rows.push((key.to_owned(), parameter_text(value))),
    }
}

fn parameter_text(value: &Value) -> String {
    if let Some(duration) = as_duration(value) {
        return humantime::format_duration(duration).to_string();
    }
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) if items.is_empty() => "none".to_owned(),
        Value::Array(items) => items
            .iter()
            .map(parameter_text)
            .collect::<Vec<_>>()
            .join(", "),
        Value::Null => "none".to_owned(),
        other => other.to_string(),
    }
}

/// serde's form of a `Duration`: `{"secs": s, "nanos": n}`.
fn as_duration(value: &Value) -> Option<Duration> {
    let map = value.as_object()?;
    if map.len() != 2 {
        return None;
    }
    let secs = map.get("secs")?.as_u64()?;
    let nanos = u32::try_from(map.get("nanos")?.as_u64()?).ok()?;
    Some(Duration::new(secs, nanos))
}

/// The charts drawn from the timeline, or a note where there is none (`merge`).
fn timelines(page: &mut String, report: &Report) -> anyhow::Result<()> {
    if report.timeline.is_empty() {
        section(
            page,
            "Over time",
            "No timeline: merged interval logs keep only histograms, so this page shows the \
             percentile plot and the latency table.",
        );
        return Ok(());
    }
    let note = "Per second over the whole run, ramp-up included; the shaded band is the \
                measured window.";
    section(page, "Latency over time", note);
    page.push_str(&latency_timeline_chart(&report.timeline).figure()?);
    section(page, "Clients and throughput", note);
    page.push_str(&throughput_timeline_chart(&report.timeline).figure()?);
    Ok(())
}

/// One line per metric with samples: latency against percentile, from `iter_quantiles`.
fn percentile_chart(report: &Report) -> LineChart {
    let series: Vec<Series> = Metric::ALL
        .into_iter()
        .filter(|metric| !report.histograms.get(*metric).is_empty())
        .map(|metric| {
            let histogram = report.histograms.get(metric);
            // Past 1/(1-p) = count no sample is left to tell percentiles apart: the curve
            // ends there, at the maximum.
            let count = histogram.len() as f64;
            let points = histogram
                .iter_quantiles(TICKS_PER_HALF_DISTANCE)
                .map(|step| {
                    let stretch = (1.0 / (1.0 - step.quantile_iterated_to())).min(count);
                    (stretch, Some(step.value_iterated_to() as f64 / 1000.0))
                })
                .collect();
            Series::new(metric.name(), metric_color(metric), points)
        })
        .collect();
    let largest_count = Metric::ALL
        .into_iter()
        .map(|metric| report.histograms.get(metric).len())
        .max()
        .unwrap_or(0);
    LineChart {
        x: Axis::percentile(largest_count),
        y: Axis::log_milliseconds("latency (ms)", value_range(&series)),
        y_right: None,
        series,
        shaded: None,
    }
}

/// One value of the timeline as a line, leaving out intervals too short to mean much.
fn timeline_series(
    timeline: &[TimelinePoint],
    name: &str,
    color: RGBColor,
    value: impl Fn(&TimelinePoint) -> Option<f64>,
) -> Series {
    let points = timeline
        .iter()
        .filter(|point| point.interval_seconds >= SHORTEST_PLOTTED_INTERVAL)
        .map(|point| (point.seconds, value(point)))
        .collect();
    Series::new(name, color, points)
}

/// Broadcast p50/p99/p99.9 and input p99 per interval.
fn latency_timeline_chart(timeline: &[TimelinePoint]) -> LineChart {
    let broadcast = metric_color(Metric::Broadcast);
    let line = |name: &str, color, micros: fn(&TimelinePoint) -> Option<u64>| {
        timeline_series(timeline, name, color, |point| {
            micros(point).map(|us| us as f64 / 1000.0)
        })
    };
    let series = vec![
        line("broadcast p50", RGBColor(0x8d, 0xc0, 0xe8), |p| {
            p.broadcast_p50_us
        }),
        line("broadcast p99", broadcast, |p| p.broadcast_p99_us),
        line("broadcast p99.9", RGBColor(0x0b, 0x2f, 0x5e), |p| {
            p.broadcast_p999_us
        }),
        line("input p99", metric_color(Metric::InputToVisible), |p| {
            p.input_p99_us
        }),
    ];
    LineChart {
        x: seconds_axis(timeline),
        y: Axis::log_milliseconds("latency (ms)", value_range(&series)),
        y_right: None,
        series,
        shaded: measured_window(timeline),
    }
}

/// Clients joined (left axis) and snapshots received per second (right axis).
fn throughput_timeline_chart(timeline: &[TimelinePoint]) -> LineChart {
    let clients = timeline_series(
        timeline,
        "clients joined",
        RGBColor(0x44, 0x44, 0x4c),
        |point| Some(point.clients_joined as f64),
    );
    let snapshots = timeline_series(
        timeline,
        "snapshots/s (right axis)",
        metric_color(Metric::Broadcast),
        |point| Some(point.snapshots_per_second),
    )
    .on_right_axis();
    LineChart {
        x: seconds_axis(timeline),
        y: Axis::linear("clients joined", value_range([&clients]).1),
        y_right: Some(Axis::linear(
            "snapshots received per second",
            value_range([&snapshots]).1,
        )),
        series: vec![clients, snapshots],
        shaded: measured_window(timeline),
    }
}

fn seconds_axis(timeline: &[TimelinePoint]) -> Axis {
    Axis::seconds(timeline.last().map_or(1.0, |point| point.seconds))
}

/// From the end of the interval before the first measured one to the end of the last.
fn measured_window(timeline: &[TimelinePoint]) -> Option<(f64, f64)> {
    let first = timeline.iter().position(|point| point.measuring)?;
    let last = timeline.iter().rposition(|point| point.measuring)?;
    let start = first
        .checked_sub(1)
        .map_or(0.0, |before| timeline[before].seconds);
    Some((start, timeline[last].seconds))
}

/// Smallest and largest value over the series (`(0, 0)` when there is none).
fn value_range<'a>(series: impl IntoIterator<Item = &'a Series>) -> (f64, f64) {
    let values = series
        .into_iter()
        .flat_map(|series| series.points.iter().filter_map(|(_, y)| *y));
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(low, high), y| {
        (low.min(y), high.max(y))
    });
    if low > high { (0.0, 0.0) } else { (low, high) }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    /// Plotted as log10 of the value.
    Log,
}

/// One axis: its range, its ticks and how a tick reads, all in data units; plotters maps
/// values through it (see the `Ranged` impl), so the series never see the log scale.
#[derive(Clone)]
struct Axis {
    description: &'static str,
    scale: Scale,
    bounds: (f64, f64),
    ticks: Vec<f64>,
    label: fn(f64) -> String,
}

impl Axis {
    /// 0 up to a round number above `max`, with room for a line at `max` to stay visible.
    fn linear(description: &'static str, max: f64) -> Self {
        let padded = if max > 0.0 { max * 1.08 } else { 1.0 };
        let step = round_step(padded / 6.0);
        Self::ticked(description, (padded / step).ceil() * step, step)
    }

    /// Time from 0 to exactly the end of the run.
    fn seconds(end: f64) -> Self {
        let end = if end > 0.0 { end } else { 1.0 };
        Self::ticked("seconds since start", end, round_step(end / 8.0))
    }

    /// Linear from 0 to `end`, a tick every `step`.
    fn ticked(description: &'static str, end: f64, step: f64) -> Self {
        let steps = (end / step + 1e-9).floor() as u32;
        Self {
            description,
            scale: Scale::Linear,
            bounds: (0.0, end),
            ticks: (0..=steps).map(|i| f64::from(i) * step).collect(),
            label: number,
        }
    }

    /// Logarithmic, from a round number at or below `low` to one above `high`; ticks on the
    /// 1-2-5 sequence, or on decades when the values span more than three.
    fn log_milliseconds(description: &'static str, (low, high): (f64, f64)) -> Self {
        let (low, high) = if high > 0.0 {
            (low.max(0.001), high * 1.05)
        } else {
            (0.1, 10.0)
        };
        let mantissas: &[f64] = if high / low > 1_000.0 {
            &[1.0]
        } else {
            &[1.0, 2.0, 5.0]
        };
        let candidates: Vec<f64> = (-3..=5)
            .flat_map(|exponent| {
                mantissas
                    .iter()
                    .map(move |mantissa| power_of_ten(*mantissa, exponent))
            })
            .collect();
        let bottom = candidates.iter().rev().find(|tick| **tick <= low);
        let top = candidates.iter().find(|tick| **tick >= high);
        let bounds = (
            bottom.copied().unwrap_or(0.001),
            top.copied().unwrap_or(1e5),
        );
        Self {
            description,
            scale: Scale::Log,
            ticks: candidates
                .into_iter()
                .filter(|tick| (bounds.0..=bounds.1).contains(tick))
                .collect(),
            bounds,
            label: number,
        }
    }

    /// Percentiles as 1/(1-p) on a log scale, from 0% to enough nines for `count` samples.
    fn percentile(count: u64) -> Self {
        let decades = (count.max(1) as f64).log10().ceil().clamp(
            f64::from(PERCENTILE_DECADES.0),
            f64::from(PERCENTILE_DECADES.1),
        ) as i32;
        let mut ticks = vec![1.0, 2.0];
        ticks.extend((1..=decades).map(|exponent| power_of_ten(1.0, exponent)));
        Self {
            description: "percentile",
            scale: Scale::Log,
            bounds: (1.0, power_of_ten(1.0, decades)),
            ticks,
            label: percentile_label,
        }
    }

    /// Where `value` lies along the axis, 0 at the start and 1 at the end.
    fn fraction(&self, value: f64) -> f64 {
        let scaled = |v: f64| match self.scale {
            Scale::Linear => v,
            Scale::Log => v.max(1e-9).log10(),
        };
        let (start, end) = (scaled(self.bounds.0), scaled(self.bounds.1));
        (scaled(value) - start) / (end - start)
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (from, to): (i32, i32)) -> i32 {
        (f64::from(from) + self.fraction(*value) * f64::from(to - from)).round() as i32
    }

    /// Grid lines and labels exactly at the ticks, no minor lines.
    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.bounds.0..self.bounds.1
    }
}

/// `mantissa × 10^exponent`, exact for the round numbers used as ticks.
fn power_of_ten(mantissa: f64, exponent: i32) -> f64 {
    if exponent >= 0 {
        mantissa * 10f64.powi(exponent)
    } else {
        mantissa / 10f64.powi(-exponent)
    }
}

/// The 1-2-5 step at or above `raw`.
fn round_step(raw: f64) -> f64 {
    let magnitude = power_of_ten(1.0, raw.log10().floor() as i32);
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|mantissa| mantissa * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// Three significant digits, without trailing zeros.
fn number(value: f64) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    let decimals = (2 - value.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// 1/(1-p) as a percentile: 2 → 50%, 10 → 90%, 1000 → 99.9%.
fn percentile_label(stretch: f64) -> String {
    let percent = 100.0 * (1.0 - 1.0 / stretch);
    let decimals = (stretch.log10().round() as i32 - 2).max(0) as usize;
    format!("{percent:.decimals$}%")
}

/// One line; `None` values break it (an interval without samples).
struct Series {
    name: String,
    color: RGBColor,
    right_axis: bool,
    points: Vec<(f64, Option<f64>)>,
}

impl Series {
    /// A line on the left axis.
    fn new(name: &str, color: RGBColor, points: Vec<(f64, Option<f64>)>) -> Self {
        Self {
            name: name.to_owned(),
            color,
            right_axis: false,
            points,
        }
    }

    fn on_right_axis(self) -> Self {
        Self {
            right_axis: true,
            ..self
        }
    }

    fn has_values(&self) -> bool {
        self.points.iter().any(|(_, y)| y.is_some())
    }

    /// The unbroken runs of the line.
    fn segments(&self) -> impl Iterator<Item = Vec<(f64, f64)>> {
        self.points
            .split(|(_, value)| value.is_none())
            .filter(|run| !run.is_empty())
            .map(|run| run.iter().filter_map(|&(x, y)| Some((x, y?))).collect())
    }
}

/// Everything the three charts have in common: axes, grid, optional right axis, optional
/// shaded x range, lines, and a legend under the plot.
struct LineChart {
    x: Axis,
    y: Axis,
    y_right: Option<Axis>,
    series: Vec<Series>,
    /// An x range to shade: the measured window.
    shaded: Option<(f64, f64)>,
}

impl LineChart {
    /// A `<figure>` with the chart as inline SVG and its legend as HTML.
    fn figure(&self) -> anyhow::Result<String> {
        let mut html = String::from("<figure>\n");
        html.push_str(&self.svg()?);
        html.push_str("\n<ul class=\"legend\">");
        for series in self.series.iter().filter(|series| series.has_values()) {
            let _ = write!(
                html,
                "<li><span class=\"swatch\" style=\"background:{}\"></span>{}</li>",
                css_color(series.color),
                escape(&series.name)
            );
        }
        if self.shaded.is_some() {
            let _ = write!(
                html,
                "<li><span class=\"swatch band\" style=\"background:{}\"></span>measured window</li>",
                css_color(WINDOW_SHADE)
            );
        }
        html.push_str("</ul>\n</figure>\n");
        Ok(html)
    }

    fn svg(&self) -> anyhow::Result<String> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
            root.fill(&WHITE)?;
            let right = self.y_right.as_ref().unwrap_or(&self.y);
            let mut chart = ChartBuilder::on(&root)
                .margin_top(14)
                .margin_left(10)
                .margin_right(if self.y_right.is_some() { 10 } else { 40 })
                .margin_bottom(6)
                .x_label_area_size(50)
                .y_label_area_size(74)
                .right_y_label_area_size(if self.y_right.is_some() { 84 } else { 0 })
                .build_cartesian_2d(self.x.clone(), self.y.clone())?
                .set_secondary_coord(self.x.clone(), right.clone());
            if let Some((from, to)) = self.shaded {
                let (bottom, top) = self.y.bounds;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(from, bottom), (to, top)],
                    WINDOW_SHADE.filled(),
                )))?;
            }
            let labels = (FONT, 17).into_font().color(&TEXT);
            let descriptions = (FONT, 18).into_font().color(&TEXT);
            chart
                .configure_mesh()
                .x_desc(self.x.description)
                .y_desc(self.y.description)
                .x_label_formatter(&|value| (self.x.label)(*value))
                .y_label_formatter(&|value| (self.y.label)(*value))
                .bold_line_style(GRID)
                .light_line_style(TRANSPARENT)
                .axis_style(AXIS)
                .label_style(labels.clone())
                .axis_desc_style(descriptions.clone())
                .draw()?;
            if let Some(axis) = &self.y_right {
                chart
                    .configure_secondary_axes()
                    .y_desc(axis.description)
                    .y_label_formatter(&|value| (axis.label)(*value))
                    .axis_style(AXIS)
                    .label_style(labels)
                    .axis_desc_style(descriptions)
                    .draw()?;
            }
            for series in &self.series {
                for segment in series.segments() {
                    // A lone point would draw nothing as a line: give it a dot.
                    let dot = if segment.len() == 1 { 3 } else { 0 };
                    let line =
                        LineSeries::new(segment, series.color.stroke_width(2)).point_size(dot);
                    if series.right_axis {
                        chart.draw_secondary_series(line)?;
                    } else {
                        chart.draw_series(line)?;
                    }
                }
            }
            root.present()?;
        }
        Ok(svg)
    }
}

fn css_color(color: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", color.0, color.1, color.2)
}

/// Escapes text for HTML element content and quoted attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;
    use crate::plan::Plan;
    use crate::report::{RampResult, RampStep, SloResult, StormResult, Violation};
    use crate::stats::{Counters, Histograms};

    fn plan(extra: &[&str]) -> Plan {
        let cli = Cli::try_parse_from(
            [
                &["tickrelay-loadgen", "--url", "ws://127.0.0.1:1/ws"][..],
                extra,
            ]
            .concat(),
        )
        .unwrap();
        Plan::new(&cli.run, None).unwrap()
    }

    /// Broadcast 100 µs .. 10 ms, input 10..50 ms, rtt 200 µs .. 1 ms: three metrics with
    /// samples, the others empty.
    fn histograms() -> Histograms {
        let mut histograms = Histograms::default();
        for i in 0..10_000u64 {
            histograms.record(Metric::Broadcast, 100 + i * i / 10_100);
            histograms.record(Metric::InputToVisible, 10_000 + i * 4);
        }
        for i in 0..500u64 {
            histograms.record(Metric::Rtt, 200 + i * 8 / 5);
        }
        histograms
    }

    fn point(seconds: f64, measuring: bool) -> TimelinePoint {
        TimelinePoint {
            seconds,
            interval_seconds: 1.0,
            clients_joined: 16,
            snapshots_per_second: 480.0,
            broadcast_p50_us: Some(600),
            broadcast_p99_us: Some(2_000),
            broadcast_p999_us: Some(4_000),
            input_p99_us: Some(35_000),
            errors: 0,
            measuring,
        }
    }

    fn run_report() -> Report {
        let mut report = Report::new(
            Some(plan(&["--clients", "16", "--lobby-prefix", "a<b"])),
            &histograms(),
            Counters {
                snapshots_received: 1_920,
                snapshots_expected: 1_920,
                ..Counters::default()
            },
            4.0,
        );
        report.timeline = (1..=6)
            .map(|second| point(f64::from(second), second > 2))
            .collect();
        report
    }

    /// The text of every `<text>` element of the page's SVG.
    fn svg_texts(page: &str) -> Vec<&str> {
        page.split("<text")
            .skip(1)
            .filter_map(|rest| {
                let (_, after_tag) = rest.split_once('>')?;
                Some(after_tag.split_once("</text>")?.0.trim())
            })
            .collect()
    }

    #[test]
    fn a_run_renders_one_self_contained_page_with_three_charts_and_the_tables() {
        let report = run_report();
        let page = render(&report).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.trim_end().ends_with("</html>"));
        assert_eq!(page.matches("<html").count(), 1);
        assert_eq!(page.matches("<svg").count(), 3, "one SVG per chart");
        assert_eq!(page.matches("</svg>").count(), 3);
        for metric in ["broadcast", "input", "rtt"] {
            assert!(
                page.contains(&format!("</span>{metric}</li>")),
                "{metric} in the legend"
            );
            assert!(page.contains(&format!("<td>{metric}</td>")), "{metric} row");
        }
        assert!(
            !page.contains("</span>connect</li>"),
            "no line without samples"
        );
        let labels = svg_texts(&page);
        for percentile in ["50%", "90%", "99%", "99.9%", "99.99%"] {
            assert!(labels.contains(&percentile), "{percentile} in {labels:?}");
        }
        for text in [
            "latency (ms)",
            "seconds since start",
            "snapshots received per second",
        ] {
            assert!(labels.contains(&text), "{text} in {labels:?}");
        }
        // The tables hold what the text report holds.
        for (label, value) in report.summary_rows() {
            assert!(
                page.contains(&format!(
                    "<td>{}</td><td>{}</td>",
                    escape(label),
                    escape(&value)
                )),
                "{label}"
            );
        }
        let broadcast = &report.latency["broadcast"];
        assert!(page.contains(&format!("<td>{}</td>", ms(broadcast.p999))));
        // Nothing to fetch: the only URL is the SVG namespace.
        let without_namespace = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!without_namespace.contains("http://") && !without_namespace.contains("https://"));
        assert!(!page.contains("<script"));
    }

    #[test]
    fn interpolated_text_is_escaped() {
        let page = render(&run_report()).unwrap();
        assert!(page.contains("<b>a&lt;b</b>"), "lobby prefix shown escaped");
        assert!(!page.contains("a<b"));
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_merge_plots_percentiles_and_says_there_is_no_timeline() {
        let report = Report::new(None, &histograms(), Counters::default(), 12.0);
        let page = render(&report).unwrap();
        assert_eq!(page.matches("<svg").count(), 1);
        assert!(page.contains("No timeline"));
        assert!(page.contains("merged interval logs"));
        assert!(page.contains("<td>rtt</td>"));
        assert!(
            !page.contains("<td>snapshots</td>"),
            "no counters: the logs have none"
        );
    }

    #[test]
    fn ramp_storm_and_slo_results_are_shown_when_present() {
        let mut report = run_report();
        report.ramp = Some(RampResult {
            bound_us: 20_000,
            steps: vec![RampStep {
                clients: 1_000,
                broadcast_p99_us: 25_000,
                errors: 0,
                tick_gaps: 0,
                snapshots_expected: 30_000,
                met: false,
            }],
            knee: None,
        });
        report.storm = Some(StormResult {
            clients: 30,
            clients_back: 30,
            recovery_ms: Some(812.0),
        });
        report.slo = Some(SloResult {
            spec: "broadcast.p99<1ms".to_owned(),
            passed: false,
            violations: vec![Violation {
                bound: "broadcast.p99<1ms".to_owned(),
                actual: Some(2000.0),
            }],
        });
        let page = render(&report).unwrap();
        assert!(
            page.contains("<td>1000</td><td>25.000</td>"),
            "ramp step row"
        );
        assert!(page.contains("<td>BROKEN</td>"));
        assert!(page.contains("knee: none"));
        assert!(page.contains("all 30 clients back after 812 ms"));
        assert!(page.contains("<b class=\"failed\">FAILED</b>"));
        assert!(page.contains("broken: broadcast.p99&lt;1ms"));
    }

    #[test]
    fn percentile_axis_reads_in_nines() {
        let labels: Vec<String> = [1.0, 2.0, 10.0, 100.0, 1_000.0, 100_000.0]
            .into_iter()
            .map(percentile_label)
            .collect();
        assert_eq!(labels, ["0%", "50%", "90%", "99%", "99.9%", "99.999%"]);
        let axis = Axis::percentile(30_000);
        assert_eq!(
            axis.bounds,
            (1.0, 100_000.0),
            "enough nines for the samples"
        );
        assert_eq!(Axis::percentile(10).bounds.1, 100.0, "at least 99%");
    }

    #[test]
    fn latency_axis_ticks_are_round_and_cover_the_values() {
        let axis = Axis::log_milliseconds("latency (ms)", (0.3, 37.0));
        assert_eq!(axis.bounds, (0.2, 50.0));
        let labels: Vec<String> = axis.ticks.iter().map(|tick| number(*tick)).collect();
        assert_eq!(labels, ["0.2", "0.5", "1", "2", "5", "10", "20", "50"]);
        // Many decades: one tick per decade.
        let wide = Axis::log_milliseconds("latency (ms)", (0.002, 900.0));
        assert_eq!(wide.ticks.len(), 7);
        let clients = Axis::linear("clients", 100.0);
        assert!(clients.bounds.1 > 100.0, "room above the largest value");
    }

    #[test]
    fn measured_window_spans_the_measured_intervals() {
        let timeline: Vec<_> = [(1.0, false), (2.0, false), (3.0, true), (4.0, true)]
            .into_iter()
            .map(|(seconds, measuring)| point(seconds, measuring))
            .collect();
        assert_eq!(measured_window(&timeline), Some((2.0, 4.0)));
        assert_eq!(measured_window(&timeline[..2]), None);
    }
}
