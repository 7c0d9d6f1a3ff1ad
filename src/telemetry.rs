//! Logging: the systemd journal, text on stderr or JSON lines, filtered by `log.level`.
//!
//! `log.level` (`LOG_LEVEL`) is teachlyd's own level: a plain level such as `debug` applies to
//! teachlyd, while every other crate stays at `warn`. A filter expression (`teachlyd=debug,sqlx=info`)
//! is taken as written. Either way, the crates that write payloads into their debug and trace lines
//! stay at `warn`: html5ever (through ammonia) logs the characters of every message it parses,
//! tungstenite whole frames, hyper and warp request lines (with `?access_token=`) and headers. No
//! level may put message text or a token into a log.

use std::{io::IsTerminal, sync::OnceLock};

use tracing::{Level, Metadata};
use tracing_subscriber::{
    EnvFilter, Layer, Registry, filter::FilterFn, fmt, layer::SubscriberExt, registry::LookupSpan,
    reload, util::SubscriberInitExt,
};

use crate::config::{LogConfig, LogFormat};

/// Crates that log what they parse, send or receive.
const PAYLOAD_LOGGERS: [&str; 11] = [
    "html5ever",
    "markup5ever",
    "ammonia",
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "h2",
    "warp",
    "reqwest",
    "rustls",
];

/// Installs the global subscriber once; later calls (tests) change nothing.
///
/// The journal gets each event as structured fields (its level as the priority, so `journalctl -p`
/// works); it is used with `log.format = "journald"`, or with `auto` when systemd connected the
/// output to the journal (`JOURNAL_STREAM`). A journal that cannot be reached falls back to text
/// on stderr, and says so.
pub fn init(config: &LogConfig) {
    let wants_journal = match config.format {
        LogFormat::Journald => true,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
        LogFormat::Text | LogFormat::Json => false,
    };
    let mut unreachable_journal = None;
    let sink = match wants_journal.then(tracing_journald::layer) {
        Some(Ok(journal)) => journal
            .with_syslog_identifier("teachlyd".to_owned())
            .with_priority_mappings(syslog_priorities())
            .boxed(),
        Some(Err(error)) => {
            unreachable_journal = Some(error);
            text_lines(config.format)
        }
        None => text_lines(config.format),
    };
    let (filter, handle) = reload::Layer::new(levels::<Registry>(&config.level));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(sink)
        .try_init();
    if installed.is_ok() {
        let _ = SET_LEVEL.set(Box::new(move |level| {
            handle
                .reload(levels::<Registry>(level))
                .map_err(|error| error.to_string())
        }));
    }
    if let Some(error) = unreachable_journal {
        tracing::warn!(%error, "cannot write to the journal; logging to stderr instead");
    }
}

/// Changes the level of the installed subscriber (SIGHUP), as `log.level` would at start.
pub fn set_level(level: &str) -> Result<(), String> {
    match SET_LEVEL.get() {
        Some(set) => set(level),
        None => Err("no log subscriber of teachlyd's is installed".to_owned()),
    }
}

type LevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Swaps the global filter of the subscriber `init` installed.
static SET_LEVEL: OnceLock<LevelSetter> = OnceLock::new();

/// Each level at the syslog priority of the same name, so `journalctl -p info` shows info and
/// above (tracing-journald's own mapping puts info at notice and debug at info).
fn syslog_priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

fn text_lines<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    // Colour codes only for a person at a terminal, never in a file, a pipe or the journal.
    let lines = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => lines.json().boxed(),
        LogFormat::Text | LogFormat::Auto | LogFormat::Journald => lines.boxed(),
    }
}

/// The global filter: what `level` lets through, payload loggers capped at `warn`. (A global filter,
/// not a per-layer one: per-layer filters combined with `and` dropped the event after a disabled one.)
pub fn levels<S>(level: &str) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    own_level(level).and_then(payload_loggers_quiet())
}

fn own_level(level: &str) -> EnvFilter {
    let is_expression = level.contains('=') || level.contains(',');
    let directives = match level.trim().parse::<tracing::level_filters::LevelFilter>() {
        Ok(plain) if !is_expression && plain > tracing::level_filters::LevelFilter::WARN => {
            format!("warn,teachlyd={plain}")
        }
        _ => level.to_owned(),
    };
    // The level was validated with the config; a filter that still fails to parse logs at info.
    EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("warn,teachlyd=info"))
}

fn payload_loggers_quiet() -> FilterFn<fn(&Metadata<'_>) -> bool> {
    FilterFn::new(|metadata| *metadata.level() <= Level::WARN || !logs_payloads(metadata.target()))
}

fn logs_payloads(target: &str) -> bool {
    PAYLOAD_LOGGERS.iter().any(|name| {
        target
            .strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::Registry;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(level: &str) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let lines = fmt::layer().with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry()
            .with(levels::<Registry>(level))
            .with(lines);
        tracing::subscriber::with_default(subscriber, || {
            // A disabled event must not take the next one with it.
            tracing::debug!(target: "sqlx::postgres::notice", "disabled");
            tracing::warn!(target: "teachlyd::auth", "right after a disabled one");
            tracing::trace!(target: "teachlyd::chat", "own trace line");
            tracing::debug!(target: "sqlx::query", "a statement");
            tracing::trace!(target: "tungstenite::protocol", "frame payload: hello bob");
            tracing::debug!(target: "html5ever::tokenizer", "processing in state Data: 'secret'");
            tracing::debug!(target: "hyper::proto::h1", "GET /ws?access_token=abc");
            tracing::warn!(target: "hyper::proto::h1", "a warning from hyper");
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_plain_level_is_teachlyds_own() {
        let log = logged("trace");
        assert!(log.contains("own trace line"), "{log}");
        assert!(log.contains("right after a disabled one"), "{log}");
        assert!(logged("info").contains("right after a disabled one"));
        assert!(
            !log.contains("a statement"),
            "other crates stay at warn: {log}"
        );
        assert!(log.contains("a warning from hyper"), "{log}");
        assert!(!logged("info").contains("own trace line"));
    }

    #[test]
    fn payload_loggers_stay_quiet_whatever_the_filter_says() {
        for level in [
            "trace",
            "trace,tungstenite=trace,html5ever=trace,hyper=trace",
            "tungstenite::protocol=trace,html5ever::tokenizer=trace,hyper::proto=trace",
        ] {
            let log = logged(level);
            for payload in ["hello bob", "secret", "access_token"] {
                assert!(!log.contains(payload), "{level}: {log}");
            }
        }
        assert!(logged("teachlyd=info,sqlx=debug").contains("a statement"));
    }

    #[test]
    fn payload_loggers_are_matched_by_crate() {
        assert!(logs_payloads("tungstenite"));
        assert!(logs_payloads("tokio_tungstenite::compat"));
        assert!(logs_payloads("html5ever::tree_builder"));
        assert!(!logs_payloads("hyperlink"));
        assert!(!logs_payloads("teachlyd::ws"));
    }
}
