//! `teachlyd messages purge|export`: work on stored messages directly in the database, which a
//! running `serve` may be using at the same time. Neither creates nor migrates a database.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use futures_util::StreamExt;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::{CommandError, load_config, open_existing_store};
use crate::{
    cli::{ExportArgs, ExportFormat, PurgeArgs},
    domain::{
        self, Message, rfc3339,
        selection::{Selection, SelectionError},
    },
};

/// Rows read ahead of the writer: the export's memory does not grow with the table.
const ROWS_IN_FLIGHT: usize = 256;
const OUTPUT_BUFFER: usize = 64 * 1024;
const CSV_HEADER: [&str; 8] = [
    "id",
    "from_id",
    "to_id",
    "content",
    "timestamp",
    "delivered_at",
    "seen_at",
    "client_id",
];

/// Deletes (or with `--dry-run` counts) the messages older than `--older-than`; answers the line
/// to print.
pub async fn purge(args: &PurgeArgs) -> Result<String, CommandError> {
    let selection =
        Selection::older_than(args.user, args.older_than.0, domain::now()).map_err(usage)?;
    let (config, _) = load_config(&args.file)?;
    let store = open_existing_store(&config).await?;
    let outcome = if args.dry_run {
        store
            .count_messages(&selection)
            .await
            .map(|n| format!("would purge {} (dry run)\n", messages(n)))
    } else {
        store
            .purge_messages(&selection, args.batch_size)
            .await
            .map(|n| format!("purged {}\n", messages(n)))
    };
    store.close().await;
    Ok(outcome?)
}

/// Streams the selected messages to `--output` (or standard output) as they are read. The rows
/// are written on a blocking thread of their own, fed through a short channel, so the runtime
/// never blocks on a slow pipe and memory stays flat whatever the table's size.
pub async fn export(args: &ExportArgs) -> Result<(), CommandError> {
    let selection = Selection::between(args.user, args.since, args.until).map_err(usage)?;
    let (config, _) = load_config(&args.file)?;
    let store = open_existing_store(&config).await?;
    let outcome = export_to(&store, &selection, args).await;
    store.close().await;
    outcome
}

async fn export_to(
    store: &crate::store::Store,
    selection: &Selection,
    args: &ExportArgs,
) -> Result<(), CommandError> {
    let output = Output::open(args.output.as_deref())?;
    let rows = store.export_messages(selection)?;
    let (sender, receiver) = mpsc::channel(ROWS_IN_FLIGHT);
    let format = args.format;
    let writer = tokio::task::spawn_blocking(move || output.write_all(receiver, format));
    let read = forward(rows, sender).await;
    let written = writer
        .await
        .map_err(|error| CommandError::Runtime(format!("the export's writer failed: {error}")))?;
    // A writer that stopped (a full disk) is why the reading stopped: its error comes first.
    written?;
    read.map_err(|error| match CommandError::from(error) {
        CommandError::Runtime(error) => {
            CommandError::Runtime(format!("reading the messages failed: {error}"))
        }
        other => other,
    })
}

/// Hands each row to the writer until the rows end, the writer stops taking them, or a read fails.
async fn forward(
    mut rows: futures_util::stream::BoxStream<'_, crate::store::StoreResult<Message>>,
    sender: mpsc::Sender<Message>,
) -> crate::store::StoreResult<()> {
    while let Some(row) = rows.next().await {
        if sender.send(row?).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Where the export goes: standard output, or a file created (or truncated) for it.
struct Output {
    sink: Box<dyn Write + Send>,
    name: String,
}

impl Output {
    fn open(path: Option<&Path>) -> Result<Self, CommandError> {
        match path {
            None => Ok(Self::stdout()),
            Some(path) if path == Path::new("-") => Ok(Self::stdout()),
            Some(path) => {
                let file = File::create(path).map_err(|error| {
                    CommandError::Runtime(format!(
                        "cannot create {}: {error}; give --output a path you can write",
                        path.display()
                    ))
                })?;
                Ok(Self {
                    sink: Box::new(file),
                    name: PathBuf::from(path).display().to_string(),
                })
            }
        }
    }

    fn stdout() -> Self {
        Self {
            sink: Box::new(io::stdout()),
            name: "standard output".to_owned(),
        }
    }

    /// Writes every row `rows` brings. A reader that went away (`| head`: a broken pipe) ends the
    /// export quietly and successfully, as it does for other Unix tools; any other failure names
    /// the output.
    fn write_all(
        self,
        rows: mpsc::Receiver<Message>,
        format: ExportFormat,
    ) -> Result<(), CommandError> {
        let out = BufWriter::with_capacity(OUTPUT_BUFFER, self.sink);
        let written = match format {
            ExportFormat::Jsonl => write_jsonl(out, rows),
            ExportFormat::Csv => write_csv(out, rows),
        };
        match written {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            Err(error) => Err(CommandError::Runtime(format!(
                "cannot write to {}: {error}",
                self.name
            ))),
        }
    }
}

fn write_jsonl(mut out: impl Write, mut rows: mpsc::Receiver<Message>) -> io::Result<()> {
    while let Some(message) = rows.blocking_recv() {
        serde_json::to_writer(&mut out, &in_utc(message))?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn write_csv(out: impl Write, rows: mpsc::Receiver<Message>) -> io::Result<()> {
    write_csv_records(out, rows).map_err(|error| {
        // Keep the kind of an I/O failure: a broken pipe is a reader that went away.
        let kind = match error.kind() {
            csv::ErrorKind::Io(io) => io.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    })
}

fn write_csv_records(out: impl Write, mut rows: mpsc::Receiver<Message>) -> csv::Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(CSV_HEADER)?;
    while let Some(message) = rows.blocking_recv() {
        let message = in_utc(message);
        let time = |at: Option<OffsetDateTime>| at.map(rfc3339).unwrap_or_default();
        csv.write_record([
            message.id.to_string().as_str(),
            &message.from_id.to_string(),
            &message.to_id.to_string(),
            &message.content,
            &rfc3339(message.timestamp),
            &time(message.delivered_at),
            &time(message.seen_at),
            message.client_id.as_deref().unwrap_or_default(),
        ])?;
    }
    Ok(csv.flush()?)
}

/// Every timestamp of `message` in UTC (SQLite hands back whatever offset the text carried).
fn in_utc(message: Message) -> Message {
    Message {
        timestamp: domain::in_utc(message.timestamp),
        delivered_at: message.delivered_at.map(domain::in_utc),
        seen_at: message.seen_at.map(domain::in_utc),
        ..message
    }
}

fn messages(n: u64) -> String {
    match n {
        1 => "1 message".to_owned(),
        n => format!("{n} messages"),
    }
}

fn usage(error: SelectionError) -> CommandError {
    CommandError::Usage(error.to_string())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn message(content: &str) -> Message {
        Message {
            id: 7,
            from_id: 1,
            to_id: 2,
            content: content.to_owned(),
            timestamp: datetime!(2026-01-31 13:00:00.000001 +01:00),
            delivered_at: Some(datetime!(2026-01-31 12:00:01 UTC)),
            seen_at: None,
            client_id: None,
        }
    }

    fn rows(messages: Vec<Message>) -> mpsc::Receiver<Message> {
        let (sender, receiver) = mpsc::channel(messages.len().max(1));
        for message in messages {
            sender.try_send(message).unwrap();
        }
        receiver
    }

    #[test]
    fn jsonl_is_one_object_per_line_in_utc() {
        let mut out = Vec::new();
        write_jsonl(&mut out, rows(vec![message("a\nb \"c\""), message("d")])).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["content"], "a\nb \"c\"");
        assert_eq!(first["timestamp"], "2026-01-31T12:00:00.000001Z");
        assert_eq!(first["seen_at"], serde_json::Value::Null);
    }

    #[test]
    fn csv_quotes_per_rfc_4180_and_leaves_null_empty() {
        let mut out = Vec::new();
        write_csv(&mut out, rows(vec![message("say \"hi\", then\nleave")])).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id,from_id,to_id,content,timestamp,delivered_at,seen_at,client_id\n\
             7,1,2,\"say \"\"hi\"\", then\nleave\",2026-01-31T12:00:00.000001Z,\
             2026-01-31T12:00:01Z,,\n"
        );
    }

    #[test]
    fn counts_read_naturally() {
        assert_eq!(messages(0), "0 messages");
        assert_eq!(messages(1), "1 message");
        assert_eq!(messages(1000), "1000 messages");
    }
}
