//! Restore progress on the terminal: a progress bar (records, MB/s, ETA) when stderr is a
//! terminal, the library's periodic log lines otherwise.

use std::io::IsTerminal;
use std::time::Instant;

use gregor::restore::{LogProgress, RestoreProgress, RestoreStats};
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar for one store's restore at a time.
pub struct BarProgress {
    bar: Option<ProgressBar>,
    bytes: u64,
    started: Instant,
}

impl RestoreProgress for BarProgress {
    fn start(&mut self, store: &str, records: u64) {
        let bar = ProgressBar::new(records);
        bar.set_style(
            ProgressStyle::with_template(
                "restoring {prefix} [{bar:30}] {pos}/{len} records {msg} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(store.to_string());
        self.bar = Some(bar);
        self.bytes = 0;
        self.started = Instant::now();
    }

    fn advance(&mut self, records: u64, bytes: u64) {
        self.bytes += bytes;
        if let Some(bar) = &self.bar {
            bar.inc(records);
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{:.1} MB/s", self.bytes as f64 / 1e6 / secs));
        }
    }

    fn grow(&mut self, records: u64) {
        if let Some(bar) = &self.bar {
            bar.inc_length(records);
        }
    }

    fn finish(&mut self, stats: &RestoreStats) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if stats.records == 0 && stats.truncated == 0 && stats.wiped.is_none() {
            return;
        }
        let secs = stats.elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "restored store `{}` ({:?}): {} records, {:.1} MB/s, {} uncommitted records dropped{}",
            stats.store,
            stats.kind,
            stats.records,
            stats.bytes as f64 / 1e6 / secs,
            stats.truncated,
            stats
                .wiped
                .as_ref()
                .map(|r| format!("; local store rebuilt: {r}"))
                .unwrap_or_default()
        );
    }
}

/// The progress display fitting stderr.
pub fn for_stderr() -> Box<dyn RestoreProgress + Send> {
    if std::io::stderr().is_terminal() {
        Box::new(BarProgress {
            bar: None,
            bytes: 0,
            started: Instant::now(),
        })
    } else {
        Box::new(LogProgress::default())
    }
}
