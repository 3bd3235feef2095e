//! Progress of long commands: a bar with rate and ETA on a terminal, a plain line every few
//! seconds otherwise (logs, CI).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress display on stderr.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    unit: &'static str,
    started: Instant,
    reported: Instant,
}

impl Progress {
    /// Progress over `total` `unit`s.
    pub fn new(total: u64, unit: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({per_sec}, {eta} left)")
                    .expect("a valid template"),
            );
            bar.set_message(unit);
            bar
        });
        Self {
            bar,
            unit,
            started: Instant::now(),
            reported: Instant::now(),
        }
    }

    /// `done` of `total` so far (the total may grow while work goes on).
    pub fn set(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total.max(done));
            bar.set_position(done);
        } else if self.reported.elapsed() >= Duration::from_secs(2) {
            let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            let left = total.saturating_sub(done) as f64 / rate.max(1.0);
            eprintln!(
                "{done} of {total} {} ({rate:.0}/s, about {left:.0} s left)",
                self.unit
            );
            self.reported = Instant::now();
        }
    }

    /// Runs `f` (which prints) with the bar out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
