//! Chart axes: range, ticks and tick labels in data units, linear or logarithmic (latency in
//! milliseconds, percentiles as 1/(1−p)). plotters maps values through them; they know nothing
//! of reports, series or pages.

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};

/// Fewest and most decades of the percentile axis (99% .. 99.99999%).
const PERCENTILE_DECADES: (i32, i32) = (2, 7);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    /// Plotted as log10 of the value.
    Log,
}

/// One axis: its range, its ticks and how a tick reads, all in data units; plotters maps
/// values through it (see the `Ranged` impl), so the series never see the log scale.
#[derive(Clone)]
pub(super) struct Axis {
    pub(super) description: &'static str,
    scale: Scale,
    pub(super) bounds: (f64, f64),
    ticks: Vec<f64>,
    pub(super) label: fn(f64) -> String,
}

impl Axis {
    /// 0 up to a round number above `max`, with room for a line at `max` to stay visible.
    pub(super) fn linear(description: &'static str, max: f64) -> Self {
        let padded = if max > 0.0 { max * 1.08 } else { 1.0 };
        let step = round_step(padded / 6.0);
        Self::ticked(description, (padded / step).ceil() * step, step)
    }

    /// Time from 0 to exactly the end of the run.
    pub(super) fn seconds(end: f64) -> Self {
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
    pub(super) fn log_milliseconds(description: &'static str, (low, high): (f64, f64)) -> Self {
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
    pub(super) fn percentile(count: u64) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
