//! Bytes sent of a multipart transfer: a bar (sent / total, rate, ETA) on a terminal, in the
//! style of the processing bar, and a plain line at most every second elsewhere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Shared by the part uploads running at once; cloning shares the count.
#[derive(Clone)]
pub enum TransferProgress {
    Bar(ProgressBar),
    Lines(Arc<Lines>),
}

pub struct Lines {
    total: u64,
    sent: AtomicU64,
    /// Bytes already stored when this run started: not part of its rate.
    initial: u64,
    started: Instant,
    printed: Mutex<Option<Instant>>,
}

impl TransferProgress {
    /// `already` bytes were stored by an earlier run.
    pub fn new(terminal: bool, total: u64, already: u64) -> Self {
        if !terminal {
            return Self::Lines(Arc::new(Lines {
                total,
                sent: AtomicU64::new(already),
                initial: already,
                started: Instant::now(),
                printed: Mutex::new(None),
            }));
        }
        let bar =
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout()).with_position(already);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix:<10} [{bar:32}] {bytes}/{total_bytes} {percent:>3}% · {binary_bytes_per_sec} · ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix("SENDING");
        bar.reset_eta();
        bar.enable_steady_tick(Duration::from_millis(200));
        Self::Bar(bar)
    }

    pub fn add(&self, bytes: u64) {
        match self {
            Self::Bar(bar) => bar.inc(bytes),
            Self::Lines(lines) => {
                lines.sent.fetch_add(bytes, Ordering::Relaxed);
                lines.print_if_due(false);
            }
        }
    }

    /// Takes back the bytes of an attempt that failed: they are sent again.
    pub fn take_back(&self, bytes: u64) {
        match self {
            Self::Bar(bar) => bar.dec(bytes),
            Self::Lines(lines) => {
                lines.sent.fetch_sub(bytes, Ordering::Relaxed);
            }
        }
    }

    /// Every byte is stored: the bar stays drawn, full; the lines end with a last one.
    pub fn finish(&self) {
        match self {
            Self::Bar(bar) => {
                bar.set_prefix("SENT");
                bar.finish();
            }
            Self::Lines(lines) => lines.print_if_due(true),
        }
    }

    /// Stops the bar where it is, so that what is printed next starts on a line of its own.
    pub fn abandon(&self) {
        if let Self::Bar(bar) = self {
            bar.abandon();
        }
    }
}

impl Lines {
    fn print_if_due(&self, last: bool) {
        let mut printed = self.printed.lock().unwrap_or_else(|e| e.into_inner());
        let due = printed.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if !(due || last) {
            return;
        }
        *printed = Some(Instant::now());
        let sent = self.sent.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (sent.saturating_sub(self.initial) as f64 / elapsed) as u64;
        let percent = if self.total == 0 {
            100.0
        } else {
            sent as f64 * 100.0 / self.total as f64
        };
        println!(
            "{} {}/{} ({percent:.1} %), {}/s",
            if last { "SENT" } else { "SENDING" },
            HumanBytes(sent),
            HumanBytes(self.total),
            HumanBytes(rate),
        );
    }
}
