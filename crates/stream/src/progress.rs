//! Progress reporting: a terminal progress bar, periodic plain lines, or nothing.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Receives progress of a [`crate::copy`], counted in source bytes.
pub trait Progress {
    /// Called once before the first byte, with the source length when known.
    fn start(&mut self, total_source_bytes: Option<u64>);
    /// Called after each chunk with running totals.
    fn advance(&mut self, source_bytes_done: u64, image_bytes_done: u64);
    /// Called once after the last byte was written and flushed.
    fn finish(&mut self);
}

/// Reports nothing; for tests and `--json` mode.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _total_source_bytes: Option<u64>) {}
    fn advance(&mut self, _source_bytes_done: u64, _image_bytes_done: u64) {}
    fn finish(&mut self) {}
}

/// A progress reporter on stderr: a bar when stderr is a terminal, otherwise a plain line
/// every 5 seconds or 10 % (`stage: 412 MiB of 1.0 GiB read (41%), 37 MiB/s`).
pub fn reporter(label: &str) -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(BarProgress {
            label: label.to_string(),
            bar: None,
        })
    } else {
        Box::new(LineProgress::new(label, std::io::stderr()))
    }
}

struct BarProgress {
    label: String,
    bar: Option<ProgressBar>,
}

impl Progress for BarProgress {
    fn start(&mut self, total_source_bytes: Option<u64>) {
        let (bar, template) = match total_source_bytes {
            Some(total) => (
                ProgressBar::new(total),
                "{prefix}: [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            ),
            None => (
                ProgressBar::new_spinner(),
                "{prefix}: {spinner} {bytes} ({bytes_per_sec})",
            ),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(self.label.clone());
        self.bar = Some(bar);
    }

    fn advance(&mut self, source_bytes_done: u64, _image_bytes_done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(source_bytes_done);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

/// Plain progress lines for logs and serial consoles.
pub(crate) struct LineProgress<W: Write> {
    label: String,
    out: W,
    total: Option<u64>,
    started: Instant,
    last_line: Instant,
    last_tenth: u64,
    source: u64,
    image: u64,
}

const LINE_INTERVAL: Duration = Duration::from_secs(5);

impl<W: Write> LineProgress<W> {
    pub(crate) fn new(label: &str, out: W) -> Self {
        let now = Instant::now();
        LineProgress {
            label: label.to_string(),
            out,
            total: None,
            started: now,
            last_line: now,
            last_tenth: 0,
            source: 0,
            image: 0,
        }
    }

    fn emit(&mut self, line: &str) {
        // Progress output is best effort: a closed stderr must not fail the copy.
        let _ = writeln!(self.out, "{line}");
    }
}

impl<W: Write> Progress for LineProgress<W> {
    fn start(&mut self, total_source_bytes: Option<u64>) {
        self.total = total_source_bytes;
        self.started = Instant::now();
        self.last_line = self.started;
    }

    fn advance(&mut self, source_bytes_done: u64, image_bytes_done: u64) {
        self.source = source_bytes_done;
        self.image = image_bytes_done;
        let tenth = match self.total {
            Some(t) if t > 0 => source_bytes_done.saturating_mul(10) / t,
            _ => 0,
        };
        let now = Instant::now();
        if tenth > self.last_tenth || now.duration_since(self.last_line) >= LINE_INTERVAL {
            self.last_tenth = tenth;
            self.last_line = now;
            let line = progress_line(
                &self.label,
                source_bytes_done,
                self.total,
                now.duration_since(self.started),
            );
            self.emit(&line);
        }
    }

    fn finish(&mut self) {
        let line = finish_line(&self.label, self.source, self.image, self.started.elapsed());
        self.emit(&line);
    }
}

/// `stage: 412 MiB of 1.0 GiB read (41%), 37 MiB/s`, or without total and percentage when
/// the length is unknown.
pub(crate) fn progress_line(
    label: &str,
    done: u64,
    total: Option<u64>,
    elapsed: Duration,
) -> String {
    let rate = human_bytes(per_second(done, elapsed));
    match total {
        Some(t) if t > 0 => format!(
            "{label}: {} of {} read ({}%), {rate}/s",
            human_bytes(done),
            human_bytes(t),
            done.saturating_mul(100) / t
        ),
        _ => format!("{label}: {} read, {rate}/s", human_bytes(done)),
    }
}

/// `stage: done, 1.0 GiB read, 4.0 GiB written in 27 s (37 MiB/s)`.
pub(crate) fn finish_line(label: &str, source: u64, image: u64, elapsed: Duration) -> String {
    format!(
        "{label}: done, {} read, {} written in {} s ({}/s)",
        human_bytes(source),
        human_bytes(image),
        elapsed.as_secs(),
        human_bytes(per_second(source, elapsed))
    )
}

fn per_second(bytes: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        (bytes as f64 / secs) as u64
    } else {
        0
    }
}

/// Binary units: whole numbers up to 100 of a unit... `512 B`, `37 MiB`, `1.0 GiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(412 << 20), "412 MiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }

    #[test]
    fn lines() {
        let l = progress_line("stage", 412 << 20, Some(1 << 30), Duration::from_secs(11));
        assert_eq!(l, "stage: 412 MiB of 1.0 GiB read (40%), 37 MiB/s");
        let l = progress_line("stage", 5 << 20, None, Duration::ZERO);
        assert_eq!(l, "stage: 5.0 MiB read, 0 B/s");
    }

    #[test]
    fn line_reporter_prints_each_tenth_once() {
        let mut out = Vec::new();
        {
            let mut p = LineProgress::new("t", &mut out);
            p.start(Some(100));
            for i in 1..=100 {
                p.advance(i, i * 4);
            }
            p.finish();
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11, "{text}");
        assert!(
            lines[0].starts_with("t: 10 B of 100 B read (10%)"),
            "{text}"
        );
        assert!(
            lines[10].starts_with("t: done, 100 B read, 400 B written"),
            "{text}"
        );
    }
}
