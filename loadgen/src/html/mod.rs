//! The `--html` report: one self-contained page (inline CSS, SVG charts drawn with plotters, no
//! script, nothing fetched) showing a finished [`Report`]. It draws; it measures and decides
//! nothing, and every figure in it comes from the report. This module is the page (sections,
//! tables, legends); `chart` draws the charts on `axis`'s axes.

mod axis;
mod chart;

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use plotters::style::RGBColor;
use serde_json::Value;

use self::chart::LineChart;
use crate::report::{Report, ms};

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
    page.push_str(&figure(&chart::percentile_chart(report))?);
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
        None => match &report.shards {
            Some(shards) => {
                let total = &shards.parameters["total_clients"];
                facts.push(format!(
                    "{} shards merged (run {:?}), {total} clients",
                    shards.count, shards.run
                ));
            }
            None => facts.push("merged interval logs".to_owned()),
        },
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

/// Only `merge` builds a report without run parameters or shards (whose figures are a
/// run's, counters included).
fn is_merge(report: &Report) -> bool {
    report.parameters.is_none() && report.shards.is_none()
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
    let value = match (&report.parameters, &report.shards) {
        (Some(plan), _) => serde_json::to_value(plan).ok(),
        (None, Some(shards)) => Some(shards.parameters.clone()),
        (None, None) => None,
    };
    match value {
        Some(value) => {
            section(page, "Run parameters", "As resolved from the command line.");
            let mut rows = Vec::new();
            flatten_parameters("", &value, &mut rows);
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
    page.push_str(&figure(&chart::latency_timeline_chart(&report.timeline))?);
    section(page, "Clients and throughput", note);
    page.push_str(&figure(&chart::throughput_timeline_chart(
        &report.timeline,
    ))?);
    Ok(())
}

/// A `<figure>` with the chart as inline SVG and its legend as HTML.
fn figure(chart: &LineChart) -> anyhow::Result<String> {
    let mut html = String::from("<figure>\n");
    html.push_str(&chart.svg()?);
    html.push_str("\n<ul class=\"legend\">");
    for entry in chart.legend() {
        let _ = write!(
            html,
            "<li><span class=\"swatch{}\" style=\"background:{}\"></span>{}</li>",
            if entry.band { " band" } else { "" },
            css_color(entry.color),
            escape(&entry.label)
        );
    }
    html.push_str("</ul>\n</figure>\n");
    Ok(html)
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
    use crate::report::{RampResult, RampStep, SloResult, StormResult, TimelinePoint, Violation};
    use crate::stats::{Counters, Histograms, Metric};

    fn plan(extra: &[&str]) -> Plan {
        let cli = Cli::try_parse_from(
            [
                &["tickrelay-loadgen", "--url", "ws://127.0.0.1:1/ws"][..],
                extra,
            ]
            .concat(),
        )
        .unwrap();
        Plan::new(&cli.run, None, None).unwrap()
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

    /// A timeline point of a steady 16-client run (shared with the chart's tests).
    pub(super) fn point(seconds: f64, measuring: bool) -> TimelinePoint {
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
            resumed: 30,
            resumes_refused: 0,
            lost: 0,
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
}
