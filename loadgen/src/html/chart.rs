//! The report's charts: the percentile plot and the two timelines, each a `LineChart` (axes,
//! grid, lines, the measured window shaded) drawn as SVG with plotters. It draws what the
//! report holds; the page around the charts, legends included, is the parent module's.

use plotters::prelude::*;

use super::axis::Axis;
use crate::report::{Report, TimelinePoint};
use crate::stats::Metric;

/// Drawing size of every chart in SVG units; the page scales it to its width.
const CHART_SIZE: (u32, u32) = (960, 360);
/// Points per halving of the distance to 100% in the percentile plot (HdrHistogram's
/// `ticks_per_half_distance`).
const TICKS_PER_HALF_DISTANCE: u32 = 10;
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
        Metric::Resume => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

/// One line per metric with samples: latency against percentile, from `iter_quantiles`.
pub(super) fn percentile_chart(report: &Report) -> LineChart {
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
pub(super) fn latency_timeline_chart(timeline: &[TimelinePoint]) -> LineChart {
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
pub(super) fn throughput_timeline_chart(timeline: &[TimelinePoint]) -> LineChart {
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

/// One entry of a chart's legend.
pub(super) struct LegendEntry {
    pub(super) label: String,
    pub(super) color: RGBColor,
    /// A shaded band rather than a line.
    pub(super) band: bool,
}

/// Everything the three charts have in common: axes, grid, optional right axis, optional
/// shaded x range, lines; the page puts the legend under it.
pub(super) struct LineChart {
    x: Axis,
    y: Axis,
    y_right: Option<Axis>,
    series: Vec<Series>,
    /// An x range to shade: the measured window.
    shaded: Option<(f64, f64)>,
}

impl LineChart {
    /// What the legend lists: each line that has values, then the measured window if shaded.
    pub(super) fn legend(&self) -> Vec<LegendEntry> {
        let lines = self
            .series
            .iter()
            .filter(|series| series.has_values())
            .map(|series| LegendEntry {
                label: series.name.clone(),
                color: series.color,
                band: false,
            });
        let window = self.shaded.map(|_| LegendEntry {
            label: "measured window".to_owned(),
            color: WINDOW_SHADE,
            band: true,
        });
        lines.chain(window).collect()
    }

    /// The chart as an SVG document.
    pub(super) fn svg(&self) -> anyhow::Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::html::tests::point;

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
