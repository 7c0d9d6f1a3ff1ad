//! `teachlyd admin connections|stats|kick`: one request to the running daemon over its admin
//! socket, printed as a table for people or as JSON with `--json`.

use std::path::PathBuf;

use super::{CommandError, load_config};
use crate::{
    admin::{
        Connection, Kicked, Reply, Request, Stats,
        client::{ClientError, ask},
    },
    cli::{AdminArgs, KickArgs},
};

pub async fn connections(args: &AdminArgs) -> Result<String, CommandError> {
    match request(args, &Request::Connections).await? {
        Reply::Connections(rows) if args.json => to_json(&rows),
        Reply::Connections(rows) => Ok(connections_table(&rows)),
        other => Err(unexpected(&other)),
    }
}

pub async fn stats(args: &AdminArgs) -> Result<String, CommandError> {
    match request(args, &Request::Stats).await? {
        Reply::Stats(stats) if args.json => to_json(&stats),
        Reply::Stats(stats) => Ok(stats_lines(&stats)),
        other => Err(unexpected(&other)),
    }
}

pub async fn kick(args: &KickArgs) -> Result<String, CommandError> {
    let request = Request::Kick {
        user_id: args.user_id,
        revoke: args.revoke,
    };
    match self::request(&args.admin, &request).await? {
        Reply::Kick(kicked) if args.admin.json => to_json(&kicked),
        Reply::Kick(kicked) => Ok(kicked_line(&kicked)),
        other => Err(unexpected(&other)),
    }
}

async fn request(args: &AdminArgs, request: &Request) -> Result<Reply, CommandError> {
    let path = socket_path(args)?;
    ask(&path, request).await.map_err(|error| match error {
        ClientError::NotRunning { .. } => CommandError::Unavailable(error.to_string()),
        ClientError::PermissionDenied { .. } | ClientError::Refused(_) => {
            CommandError::PermissionDenied(error.to_string())
        }
        ClientError::Daemon(_) | ClientError::Broken { .. } => {
            CommandError::Runtime(error.to_string())
        }
    })
}

/// `--socket`, else `admin.socket` of the configuration (whose file an operator may not be allowed
/// to read: `--socket` needs none).
fn socket_path(args: &AdminArgs) -> Result<PathBuf, CommandError> {
    match &args.socket {
        Some(path) => Ok(path.clone()),
        None => Ok(load_config(&args.file)?.0.admin.socket),
    }
}

fn unexpected(reply: &Reply) -> CommandError {
    CommandError::Runtime(format!(
        "the daemon answered something else than asked: {reply:?}"
    ))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, CommandError> {
    serde_json::to_string_pretty(value)
        .map(|json| json + "\n")
        .map_err(|error| CommandError::Runtime(error.to_string()))
}

fn connections_table(rows: &[Connection]) -> String {
    if rows.is_empty() {
        return "no open connections\n".to_owned();
    }
    let header = ["ID", "USER", "NAME", "REMOTE", "PATH", "CONNECTED", "QUEUE"].map(String::from);
    let lines: Vec<[String; 7]> = rows
        .iter()
        .map(|row| {
            [
                row.connection_id.to_string(),
                row.user_id.to_string(),
                row.user_name.as_deref().map_or("-".to_owned(), printable),
                row.remote_addr
                    .map_or("-".to_owned(), |addr| addr.to_string()),
                printable(&row.path),
                timestamp(row.connected_at),
                row.queue_depth.to_string(),
            ]
        })
        .collect();
    table(&header, &lines)
}

fn stats_lines(stats: &Stats) -> String {
    let rows = [
        ("version", stats.version.clone()),
        ("started at", timestamp(stats.started_at)),
        ("uptime", uptime(stats.uptime_seconds)),
        ("connections", stats.connections.to_string()),
        ("online users", stats.online_users.to_string()),
        (
            "messages since start",
            stats.messages_since_start.to_string(),
        ),
        ("database", stats.database.clone()),
    ];
    rows.iter()
        .map(|(name, value)| format!("{name:<22}{value}\n"))
        .collect()
}

fn kicked_line(kicked: &Kicked) -> String {
    let sockets = match kicked.sockets_closed {
        0 => format!("user {} had no open socket", kicked.user_id),
        1 => format!("closed 1 socket of user {}", kicked.user_id),
        n => format!("closed {n} sockets of user {}", kicked.user_id),
    };
    match kicked.refresh_tokens_revoked {
        Some(revoked) => format!("{sockets}; revoked {revoked} refresh token(s)\n"),
        None => format!("{sockets}\n"),
    }
}

/// Columns padded to their widest cell, two spaces apart.
fn table<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let mut widths = header.each_ref().map(|cell| cell.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A user's name is whatever they chose: escape control characters so that no name can move the
/// cursor, change colours or forge a line of the table.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn timestamp(at: time::OffsetDateTime) -> String {
    crate::domain::rfc3339(at.replace_nanosecond(0).unwrap_or(at))
}

fn uptime(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (hours, rest) = (rest / 3600, rest % 3600);
    let (minutes, seconds) = (rest / 60, rest % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m {seconds}s"),
        (0, _, _) => format!("{hours}h {minutes}m {seconds}s"),
        _ => format!("{days}d {hours}h {minutes}m {seconds}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_cannot_forge_lines_or_escape_sequences() {
        assert_eq!(printable("alice"), "alice");
        assert_eq!(printable("Zoë 学生"), "Zoë 学生");
        assert_eq!(printable("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
    }

    #[test]
    fn the_table_aligns_columns() {
        let header = ["A", "LONGER"].map(String::from);
        let rows = [["wide cell".to_owned(), "x".to_owned()]];
        assert_eq!(table(&header, &rows), "A          LONGER\nwide cell  x\n");
    }

    #[test]
    fn uptime_reads_like_a_duration() {
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(3 * 3600 + 61), "3h 1m 1s");
        assert_eq!(uptime(2 * 86_400 + 5), "2d 0h 0m 5s");
    }
}
