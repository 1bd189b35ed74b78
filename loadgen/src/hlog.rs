//! HdrHistogram interval logs (the standard V2 format with compressed histograms): one tagged
//! histogram per metric per interval, so runs can be plotted with standard tooling and merged
//! across load-generator machines.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};

use crate::stats::{Histograms, Metric};

pub(crate) struct HlogWriter {
    file: BufWriter<File>,
    serializer: V2DeflateSerializer,
}

impl HlogWriter {
    pub(crate) fn create(path: &Path, base: SystemTime, comment: &str) -> anyhow::Result<Self> {
        let mut file = BufWriter::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        );
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment(comment)
            .with_start_time(base)
            .with_base_time(base)
            .begin_log_with(&mut file, &mut serializer)?;
        Ok(Self { file, serializer })
    }

    /// Appends one interval: `start` is relative to the log's base time.
    pub(crate) fn write(
        &mut self,
        histograms: &Histograms,
        start: Duration,
        length: Duration,
    ) -> anyhow::Result<()> {
        // A builder without headers writes nothing itself: it only wraps our file.
        let mut writer =
            IntervalLogWriterBuilder::new().begin_log_with(&mut self.file, &mut self.serializer)?;
        for metric in Metric::ALL {
            let histogram = histograms.get(metric);
            if histogram.is_empty() {
                continue;
            }
            let tag = Tag::new(metric.name());
            writer
                .write_histogram(histogram, start, length, tag)
                .map_err(|err| anyhow::anyhow!("writing interval log: {err:?}"))?;
        }
        self.file.flush()?;
        Ok(())
    }
}

/// One histogram as an interval log carries it: base64 of its V2 deflate encoding.
pub(crate) fn encode(histogram: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail, and these histograms' bounds always encode.
    let _ = V2DeflateSerializer::new().serialize(histogram, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The inverse of [`encode`].
pub(crate) fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
    decode_with(&mut Deserializer::new(), text)
}

fn decode_with(deserializer: &mut Deserializer, text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("bad base64 histogram")?;
    deserializer
        .deserialize(&mut &bytes[..])
        .map_err(|err| anyhow::anyhow!("bad histogram ({err:?})"))
}

/// What a set of interval logs adds up to.
pub(crate) struct Merged {
    pub(crate) histograms: Histograms,
    /// Histograms read: one per metric with samples, per interval, per file.
    pub(crate) tagged_histograms: usize,
    /// Wall-clock span covered, from the earliest interval start to the latest end.
    pub(crate) seconds: f64,
}

/// Adds up every tagged interval of every file, by tag. Untagged or unknown tags are skipped.
pub(crate) fn merge(paths: &[impl AsRef<Path>]) -> anyhow::Result<Merged> {
    let mut merged = Histograms::default();
    let mut tagged_histograms = 0;
    let (mut first, mut last) = (f64::MAX, f64::MIN);
    let mut deserializer = Deserializer::new();
    for path in paths {
        let path = path.as_ref();
        let text =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut base = 0.0;
        for entry in IntervalLogIterator::new(&text) {
            let entry = entry.map_err(|err| {
                anyhow::anyhow!("{}: not an interval log ({err:?})", path.display())
            })?;
            let interval = match entry {
                LogEntry::BaseTime(t) => {
                    base = t.as_secs_f64();
                    continue;
                }
                LogEntry::StartTime(_) => continue,
                LogEntry::Interval(interval) => interval,
            };
            let Some(metric) = interval.tag().and_then(|t| Metric::from_name(t.as_str())) else {
                continue;
            };
            let histogram = decode_with(&mut deserializer, interval.encoded_histogram())
                .with_context(|| format!("{}", path.display()))?;
            merged.get_mut(metric).add(&histogram).map_err(|err| {
                anyhow::anyhow!("{}: incompatible histogram ({err:?})", path.display())
            })?;
            let start = base + interval.start_timestamp().as_secs_f64();
            first = first.min(start);
            last = last.max(start + interval.duration().as_secs_f64());
            tagged_histograms += 1;
        }
    }
    if tagged_histograms == 0 {
        bail!("no tagged intervals found in the given files");
    }
    Ok(Merged {
        histograms: merged,
        tagged_histograms,
        seconds: (last - first).max(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_two_logs_equals_one_histogram_of_all_samples() {
        let dir = tempfile::tempdir().unwrap();
        let base = SystemTime::now();
        let mut combined = Histograms::default();
        let mut paths = Vec::new();
        for (file, seed) in [("a.hlog", 1u64), ("b.hlog", 7u64)] {
            let path = dir.path().join(file);
            let mut writer = HlogWriter::create(&path, base, "test").unwrap();
            for second in 0..3u64 {
                let mut interval = Histograms::default();
                for i in 0..500u64 {
                    // Different spreads per file and interval, across several magnitudes.
                    let micros = (i * seed * 37 + second * 1000) % 250_000 + 1;
                    interval.record(Metric::Broadcast, micros);
                    interval.record(Metric::Rtt, micros / 3 + 1);
                }
                combined.add(&interval);
                writer
                    .write(
                        &interval,
                        Duration::from_secs(second),
                        Duration::from_secs(1),
                    )
                    .unwrap();
            }
            paths.push(path);
        }
        let merged = merge(&paths).unwrap();
        assert_eq!(
            merged.tagged_histograms,
            2 * 3 * 2,
            "files x intervals x tags"
        );
        for metric in [Metric::Broadcast, Metric::Rtt] {
            assert_eq!(
                merged.histograms.get(metric),
                combined.get(metric),
                "{metric:?}"
            );
        }
        assert!(merged.histograms.get(Metric::Join).is_empty());
        assert!((merged.seconds - 3.0).abs() < 0.01);
    }

    #[test]
    fn merge_rejects_files_that_are_not_interval_logs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.hlog");
        std::fs::write(&path, "hello, world\n").unwrap();
        assert!(merge(&[path]).is_err());
    }
}
