//! Where log events go. Every event goes to journald when its socket answers, with its
//! priority and the `ABUPDATE_*` fields of [`abupdate_lib::log`]; human-readable lines go to
//! stderr unless stderr already is the journal (a systemd unit's `StandardError=journal`,
//! announced by `$JOURNAL_STREAM`). `$ABUPDATE_LOG` (an `EnvFilter` directive such as `debug`)
//! sets the level of both; the default is `info` for the journal and `warn` for stderr.

use std::fmt;

use abupdate_lib::log::OUTCOME_TARGET;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The environment variable holding the log filter.
pub const LOG_ENV: &str = "ABUPDATE_LOG";

/// What [`init`] set up.
#[derive(Debug, Clone, Copy)]
pub struct Logging {
    /// stderr is connected to the journal: do not print what the journal already gets.
    pub stderr_is_journal: bool,
    /// Events reach journald.
    pub journal: bool,
}

fn env_filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default))
}

/// Installs the global subscriber (once, at start) and a panic hook that logs the panic.
pub fn init() -> Logging {
    let stderr_is_journal = stderr_is_journal();
    let journald = tracing_journald::layer().ok().map(|l| {
        l.with_field_prefix(None)
            .with_syslog_identifier("abupdate".into())
            .with_filter(env_filter("info"))
    });
    let journal = journald.is_some();
    // Without a journal socket, stderr is the only place left, even when it is the journal.
    let human = (!stderr_is_journal || !journal).then(|| {
        tracing_subscriber::fmt::layer()
            .event_format(Human)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .with_filter(env_filter("warn").and(filter_fn(|m| m.target() != OUTCOME_TARGET)))
    });
    tracing_subscriber::registry()
        .with(journald)
        .with(human)
        .init();
    if journal {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            tracing::error!(target: OUTCOME_TARGET, "panic: {info}");
            if !stderr_is_journal {
                default_hook(info);
            }
        }));
    }
    Logging {
        stderr_is_journal,
        journal,
    }
}

/// Whether stderr is the stream systemd connected to the journal: `$JOURNAL_STREAM` names
/// its device and inode (see systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| parse_journal_stream(&v))
    else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr())
        .map(|st| st.st_dev == dev && st.st_ino == ino)
        .unwrap_or(false)
}

/// Parses `$JOURNAL_STREAM`: `DEVICE:INODE`, both decimal.
fn parse_journal_stream(v: &str) -> Option<(u64, u64)> {
    let (dev, ino) = v.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Terminal lines: `abupdate: warning: MESSAGE key=value`, like the error line main prints.
struct Human;

impl<S, N> FormatEvent<S, N> for Human
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        write!(w, "abupdate: {level}: ")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn journal_stream_is_device_and_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:12345\n"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
        assert_eq!(parse_journal_stream(""), None);
    }

    /// A writer that collects what the terminal layer prints.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn terminal_lines_are_human_and_leave_out_outcomes() {
        let buf = Buf::default();
        let out = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .event_format(Human)
            .with_ansi(false)
            .with_writer(move || out.clone())
            .with_filter(EnvFilter::new("warn").and(filter_fn(|m| m.target() != OUTCOME_TARGET)));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let op = abupdate_lib::log::Operation::begin("switch");
            op.in_scope(|| {
                op.record_slot(abupdate_lib::disk::SlotId::B);
                tracing::warn!(device = "/dev/watchdog", "no watchdog device");
                tracing::info!("below the terminal's level");
            });
            op.failed(&abupdate_lib::Error::Refused("slot B is not staged".into()));
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(
            text,
            "abupdate: warning: no watchdog device device=\"/dev/watchdog\"\n"
        );
    }
}
