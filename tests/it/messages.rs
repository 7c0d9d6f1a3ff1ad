//! `teachlyd messages purge|export`, the real binary on both databases: what a purge selects (to
//! the microsecond), that it deletes in batches a running `serve` commits between, that an export
//! round-trips any content, filters, survives a closed pipe and streams in constant memory.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read},
    process::{Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use teachlyd::{
    domain::{NewMessage, selection::Selection},
    store::Store,
};
use time::{OffsetDateTime, macros::datetime};

use crate::common::{
    Backend, TestDb, WsClient,
    binary::{command, teachlyd, teachlyd_async, text},
    daemon::Daemon,
};
use crate::on_both_backends;

/// A database with teachlyd's schema and `names` as users 1, 2, …, and the store to fill it.
async fn migrated(backend: Backend, names: &[&str]) -> (TestDb, Store) {
    let db = TestDb::create(backend).await;
    let store = Store::connect(&db.url, 4, Duration::from_secs(5))
        .await
        .expect("the test database opens");
    store.migrate().await.expect("the test database migrates");
    let users: Vec<String> = names
        .iter()
        .map(|name| format!("('dev:{name}', '{name}')"))
        .collect();
    db.execute(&format!(
        "INSERT INTO users (google_id, name) VALUES {}",
        users.join(", ")
    ))
    .await;
    (db, store)
}

/// Stores messages the way `serve` does; answers their ids.
async fn store_messages(store: &Store, messages: &[(i64, i64, &str, OffsetDateTime)]) -> Vec<i64> {
    let batch: Vec<NewMessage> = messages
        .iter()
        .map(|&(from_id, to_id, content, timestamp)| NewMessage {
            from_id,
            to_id,
            content: content.to_owned(),
            client_id: None,
            timestamp,
        })
        .collect();
    store
        .insert_messages(&batch)
        .await
        .expect("the messages are stored")
        .into_iter()
        .map(|id| id.expect("a new row"))
        .collect()
}

fn days_ago(days: i64) -> OffsetDateTime {
    teachlyd::domain::now() - time::Duration::days(days)
}

async fn run_on(db: &TestDb, args: &[&str]) -> Output {
    teachlyd_async(args, &[("DATABASE_URL", &db.url)]).await
}

/// Runs a command that must succeed; answers its standard output.
async fn succeed(db: &TestDb, args: &[&str]) -> String {
    let output = run_on(db, args).await;
    assert!(
        output.status.success(),
        "{args:?}: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

async fn remaining_ids(db: &TestDb) -> Vec<i64> {
    let mut connection = db.connect().await;
    let ids = connection.message_ids().await;
    connection.close().await;
    ids
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db.backend() {
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            n
        }
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            n
        }
    }
}

/// The `content` of every line of a JSON-lines export, in order.
fn jsonl_contents(output: &str) -> Vec<String> {
    output
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).expect("each line is a JSON object");
            row["content"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn one_sentence(output: &Output) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    stderr
}

on_both_backends! {
    async fn a_dry_run_counts_what_the_purge_then_deletes_and_user_limits_both(backend: Backend) {
        let (db, store) = migrated(backend, &["alice", "bob", "carol"]).await;
        let (alice, bob, carol) = (1, 2, 3);
        let old = days_ago(100);
        let young = days_ago(1);
        let old_of_alice = store_messages(&store, &[
            (alice, bob, "old 1", old), (alice, bob, "old 2", old), (bob, alice, "old 3", old),
            (carol, alice, "old 4", old), (carol, alice, "old 5", old),
        ]).await;
        let old_of_others = store_messages(&store, &[
            (bob, carol, "old 6", old), (bob, carol, "old 7", old), (carol, bob, "old 8", old),
            (carol, bob, "old 9", old),
        ]).await;
        let young_ids = store_messages(&store, &[
            (alice, bob, "young 1", young), (bob, carol, "young 2", young), (carol, alice, "young 3", young),
        ]).await;
        let all = remaining_ids(&db).await;

        let dry = succeed(&db, &["messages", "purge", "--older-than", "90d", "--user", "1", "--dry-run"]).await;
        assert_eq!(dry, "would purge 5 messages (dry run)\n");
        assert_eq!(remaining_ids(&db).await, all, "a dry run deletes nothing");
        let purged = succeed(&db, &["messages", "purge", "--older-than", "90d", "--user", "1"]).await;
        assert_eq!(purged, "purged 5 messages\n");
        let left: BTreeSet<i64> = remaining_ids(&db).await.into_iter().collect();
        assert!(old_of_alice.iter().all(|id| !left.contains(id)), "{left:?}");
        assert!(old_of_others.iter().chain(&young_ids).all(|id| left.contains(id)), "{left:?}");

        let dry = succeed(&db, &["messages", "purge", "--older-than", "90d", "--dry-run"]).await;
        assert_eq!(dry, "would purge 4 messages (dry run)\n");
        // Two at a time: the last batch is short, and nothing young is touched on the way.
        let purged = succeed(&db, &["messages", "purge", "--older-than", "90d", "--batch-size", "2"]).await;
        assert_eq!(purged, "purged 4 messages\n");
        assert_eq!(remaining_ids(&db).await, young_ids);
        let again = succeed(&db, &["messages", "purge", "--older-than", "90d"]).await;
        assert_eq!(again, "purged 0 messages\n");
        let one = succeed(&db, &["messages", "purge", "--older-than", "12h", "--user", "3", "--dry-run"]).await;
        assert_eq!(one, "would purge 2 messages (dry run)\n");
        if backend == Backend::Postgres {
            // The delivery queue went with the messages, and still holds the young ones.
            let orphans = count(&db, "SELECT COUNT(*) FROM undelivered u \
                                       WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = u.message_id)").await;
            assert_eq!(orphans, 0);
            assert_eq!(count(&db, "SELECT COUNT(*) FROM undelivered").await, 3);
        }
        store.close().await;
    }

    async fn the_cut_is_exact_to_the_microsecond(backend: Backend) {
        let (db, store) = migrated(backend, &["alice", "bob"]).await;
        // Times as SQLite may hold them: fractions of every length (SQLite's own default writes
        // milliseconds), no offset, other offsets, a space for the T. PostgreSQL reads them all.
        let stored = [
            ("a", "2026-01-01T00:00:00Z"),
            ("b", "2026-01-01T00:00:00.9Z"),
            ("c", "2026-01-01T00:00:00.999999Z"),
            ("d", "2026-01-01 00:00:00.999"),
            ("e", "2026-01-01T01:00:00.999999+01:00"),
            ("f", "2026-01-01T00:00:01Z"),
            ("g", "2026-01-01T00:00:01.000001Z"),
            ("h", "2026-01-01T00:00:01.1Z"),
            ("i", "2025-12-31T23:00:01.000000-01:00"),
        ];
        let rows: Vec<String> = stored
            .iter()
            .map(|(content, at)| format!("(1, 2, '{content}', '{at}')"))
            .collect();
        db.execute(&format!(
            "INSERT INTO messages (from_id, to_id, content, timestamp) VALUES {}",
            rows.join(", ")
        ))
        .await;
        let cut = datetime!(2026-01-01 00:00:01 UTC);
        let before_cut = Selection::between(None, None, Some(cut)).unwrap();
        let from_cut = Selection::between(None, Some(cut), None).unwrap();
        assert_eq!(store.count_messages(&before_cut).await.unwrap(), 5);
        assert_eq!(store.count_messages(&from_cut).await.unwrap(), 4);

        let export = |args: &'static [&'static str]| {
            let db = &db;
            async move { jsonl_contents(&succeed(db, args).await).join("") }
        };
        assert_eq!(export(&["messages", "export", "--until", "2026-01-01T00:00:01Z"]).await, "abcde");
        assert_eq!(export(&["messages", "export", "--since", "2026-01-01T00:00:01Z"]).await, "fghi");
        assert_eq!(export(&["messages", "export", "--until", "2026-01-01T00:00:00.999999Z"]).await, "abd");
        assert_eq!(export(&["messages", "export", "--since", "2026-01-01T00:00:00.999999Z"]).await, "cefghi");
        assert_eq!(
            export(&["messages", "export", "--since", "2026-01-01T01:00:01.000001+01:00", "--until", "2026-01-01T00:00:01.1Z"]).await,
            "g"
        );
        // Every time leaves in UTC.
        let all = succeed(&db, &["messages", "export"]).await;
        let times: Vec<String> = all
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["timestamp"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(times[4], "2026-01-01T00:00:00.999999Z");
        assert_eq!(times[8], "2026-01-01T00:00:01Z");

        assert_eq!(store.purge_messages(&before_cut, 2).await.unwrap(), 5);
        assert_eq!(export(&["messages", "export"]).await, "fghi");
        store.close().await;
    }

    async fn any_stored_form_of_a_time_compares_exactly(backend: Backend) {
        let (db, store) = migrated(backend, &["alice", "bob"]).await;
        // Instants a few microseconds to seconds around one moment, each written in one of the
        // forms a SQLite database may hold: fractions trimmed or not, offsets, no offset and a
        // space (a naive time means the session's zone on PostgreSQL: SQLite only).
        let base = datetime!(2026-03-01 12:00:00 UTC);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        let forms = if backend == Backend::Sqlite { 4 } else { 3 };
        let mut instants = Vec::new();
        let mut rows = Vec::new();
        for n in 0..400 {
            let micros = match next(3) {
                0 => next(20) as i64 - 10,
                1 => (next(2000) as i64 - 1000) * 1000,
                _ => next(6_000_000) as i64 - 3_000_000,
            };
            let at = base + time::Duration::microseconds(micros);
            let text = match next(forms) {
                0 => at.format(&time::format_description::well_known::Rfc3339).unwrap(),
                1 => {
                    let minutes = [-600, -60, 0, 330, 60][next(5) as usize];
                    let offset = time::UtcOffset::from_whole_seconds(minutes * 60).unwrap();
                    at.to_offset(offset).format(&time::format_description::well_known::Rfc3339).unwrap()
                }
                2 => at.format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z")).unwrap(),
                _ => at.format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]")).unwrap(),
            };
            instants.push(at);
            rows.push(format!("(1, 2, 'm{n}', '{text}')"));
        }
        db.execute(&format!(
            "INSERT INTO messages (from_id, to_id, content, timestamp) VALUES {}",
            rows.join(", ")
        ))
        .await;
        for n in 0..40 {
            // Half the cuts fall exactly on a stored instant.
            let cut = if n % 2 == 0 {
                instants[next(instants.len() as u64) as usize]
            } else {
                base + time::Duration::microseconds(next(6_000_000) as i64 - 3_000_000)
            };
            for selection in [
                Selection::between(None, None, Some(cut)).unwrap(),
                Selection::between(None, Some(cut), None).unwrap(),
            ] {
                let expected = instants.iter().filter(|&&at| selection.selects(1, 2, at)).count() as u64;
                assert_eq!(store.count_messages(&selection).await.unwrap(), expected, "{selection:?}");
            }
        }
        store.close().await;
    }

    async fn purge_and_export_refuse_a_missing_or_unmigrated_database(backend: Backend) {
        let db = TestDb::create(backend).await;
        let missing = match backend {
            Backend::Sqlite => db.url.clone(),
            Backend::Postgres => format!("{}_absent", db.url),
        };
        for args in [
            &["messages", "purge", "--older-than", "30d"][..],
            &["messages", "export"][..],
        ] {
            let output = teachlyd_async(args, &[("DATABASE_URL", &missing)]).await;
            let stderr = one_sentence(&output);
            assert_eq!(output.status.code(), Some(69), "{args:?}: {stderr}");
            assert!(stderr.contains("cannot open"), "{stderr}");
            assert!(output.stdout.is_empty());
        }
        if backend == Backend::Sqlite {
            let path = db.url.trim_start_matches("sqlite://");
            assert!(!std::path::Path::new(path).exists(), "no database was created at {path}");
            // An empty file is an empty SQLite database.
            std::fs::write(path, "").unwrap();
        }
        for args in [
            &["messages", "purge", "--older-than", "30d"][..],
            &["messages", "export", "--format", "csv"][..],
        ] {
            let output = run_on(&db, args).await;
            let stderr = one_sentence(&output);
            assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.contains("run `teachlyd migrate`"), "{stderr}");
        }
        // Nothing was migrated in passing.
        let status = succeed(&db, &["migrate", "--status"]).await;
        assert!(!status.contains("applied "), "{status}");
    }

    async fn purge_while_serve_commits_keeps_every_young_message_and_fails_no_send(backend: Backend) {
        let db = TestDb::create(backend).await;
        // The senders send as fast as the daemon answers, far past a person's rate.
        let daemon = Daemon::start(&db.url, "[rate_limit]\nenabled = false\n", "info").await;
        let alice = daemon.dev_login("alice").await;
        let bob = daemon.dev_login("bob").await;
        let carol = daemon.dev_login("carol").await;
        let dave = daemon.dev_login("dave").await;
        // Old messages: many between carol and dave, and some still undelivered to bob, which his
        // socket receives (and the daemon marks delivered) while the purge deletes them.
        let (old, young) = (30, 1);
        let seed = |from: i64, to: i64, n: i64, days: i64| match backend {
            Backend::Postgres => format!(
                "INSERT INTO messages (from_id, to_id, content, timestamp) \
                 SELECT {from}, {to}, 'seeded ' || i, now() - interval '{days} days' - i * interval '1 millisecond' \
                 FROM generate_series(1, {n}) AS i"
            ),
            Backend::Sqlite => format!(
                "INSERT INTO messages (from_id, to_id, content, timestamp) \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
                 SELECT {from}, {to}, 'seeded ' || i, \
                        strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{days} days', '-' || i || ' seconds') FROM n"
            ),
        };
        db.execute(&seed(carol.id, dave.id, 6000, old)).await;
        db.execute(&seed(alice.id, bob.id, 300, old)).await;
        db.execute(&seed(dave.id, carol.id, 500, young)).await;
        if backend == Backend::Postgres {
            db.execute("INSERT INTO undelivered (to_id, message_id) SELECT to_id, id FROM messages").await;
        }
        let young_seeded: Vec<i64> = {
            let all = remaining_ids(&db).await;
            all[all.len() - 500..].to_vec()
        };

        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let senders: Vec<_> = [(&alice, bob.id), (&bob, alice.id)]
            .into_iter()
            .map(|(user, to)| {
                let url = daemon.ws_url("");
                let token = user.access_token.clone();
                let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
                tokio::spawn(async move {
                    let mut socket = WsClient::connect(&url, Some(&token)).await.unwrap();
                    let (mut ids, mut refused) = (Vec::new(), Vec::new());
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let frame = json!({"event": "message", "to": to, "message": format!("live {n} to {to}"), "client_id": format!("c{n}")});
                        socket.send_json(&frame).await;
                        let answer = socket.until_any(&["message_sent", "error"]).await;
                        if answer["event"] == "message_sent" {
                            ids.push(answer["message"]["id"].as_i64().unwrap());
                            acked.fetch_add(1, Ordering::Relaxed);
                        } else {
                            refused.push(answer);
                        }
                    }
                    (ids, refused)
                })
            })
            .collect();
        while acked.load(Ordering::Relaxed) < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Dave comes online as the purge starts: the daemon delivers his backlog of old messages
        // (marking them delivered, taking them off the queue) while the purge deletes them.
        let dave_url = daemon.ws_url("");
        let dave_token = dave.access_token.clone();
        let dave_reads = tokio::spawn(async move {
            let mut socket = WsClient::connect(&dave_url, Some(&dave_token)).await.unwrap();
            let mut received = 0;
            while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), socket.next_frame()).await {
                received += usize::from(event["event"] == "new_message");
            }
            received
        });
        let before = acked.load(Ordering::Relaxed);
        let started = Instant::now();
        let output = run_on(&db, &["messages", "purge", "--older-than", "7d", "--batch-size", "100"]).await;
        let took = started.elapsed();
        let during = acked.load(Ordering::Relaxed) - before;
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert_eq!(text(&output.stdout), "purged 6300 messages\n");
        let dave_received = dave_reads.await.unwrap();
        eprintln!("{backend:?}: purge of 6300 in batches of 100 took {took:?}; {during} sends acknowledged meanwhile; dave received {dave_received} old messages");
        assert!(during > 0, "the daemon kept committing while the purge ran");

        let mut acknowledged = Vec::new();
        for sender in senders {
            let (ids, refused) = sender.await.unwrap();
            assert!(refused.is_empty(), "every send is acknowledged: {refused:?}");
            acknowledged.extend(ids);
        }
        let left: BTreeSet<i64> = remaining_ids(&db).await.into_iter().collect();
        let lost: Vec<_> = acknowledged.iter().chain(&young_seeded).filter(|id| !left.contains(id)).collect();
        assert!(lost.is_empty(), "young messages purged: {lost:?}");
        assert_eq!(left.len(), acknowledged.len() + young_seeded.len(), "every old message is gone");
        if backend == Backend::Postgres {
            let orphans = count(&db, "SELECT COUNT(*) FROM undelivered u \
                                       WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = u.message_id)").await;
            assert_eq!(orphans, 0, "the delivery queue holds no purged message");
        }
        let (status, _, log) = daemon.terminate().await;
        assert!(status.success(), "{log}");
    }

    async fn export_round_trips_tricky_content_as_jsonl_and_csv(backend: Backend) {
        let (db, store) = migrated(backend, &["alice", "bob"]).await;
        let tricky = [
            "line one\nline \"two\", with commas, and a tab\there",
            "Zoë 学生 🎓 — &lt;script&gt;alert(1)&lt;/script&gt; &amp; <b>bold</b> <i>it</i>",
            "\"quoted\"",
            "  leading and trailing spaces  ",
            "crlf\r\ninside, and a lone \r too",
            "=SUM(A1:A2),'single'",
        ];
        let at = datetime!(2026-02-03 04:05:06.789012 UTC);
        let rows: Vec<_> = tricky.iter().enumerate().map(|(n, content)| (1 + n as i64 % 2, 2 - n as i64 % 2, *content, at)).collect();
        let ids = store_messages(&store, &rows).await;
        let delivered = datetime!(2026-02-03 04:05:07 UTC);
        store.mark_delivered(&ids[..1], delivered).await.unwrap();

        let jsonl = succeed(&db, &["messages", "export"]).await;
        let parsed: Vec<Value> = jsonl.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(parsed.len(), tricky.len(), "{jsonl}");
        for ((row, content), id) in parsed.iter().zip(tricky).zip(&ids) {
            assert_eq!(row["content"], content);
            assert_eq!(row["id"], *id);
            assert_eq!(row["timestamp"], "2026-02-03T04:05:06.789012Z");
            assert_eq!(row["seen_at"], Value::Null);
            assert_eq!(row["client_id"], Value::Null);
            let keys: Vec<&String> = row.as_object().unwrap().keys().collect();
            assert_eq!(keys.len(), 8, "{row}");
        }
        assert_eq!(parsed[0]["delivered_at"], "2026-02-03T04:05:07Z");
        assert_eq!(parsed[1]["delivered_at"], Value::Null);
        assert_eq!((parsed[1]["from_id"].as_i64(), parsed[1]["to_id"].as_i64()), (Some(2), Some(1)));

        // The same rows as CSV, into a file, read back by a CSV parser.
        let dir = crate::common::daemon::tempdir::Dir::new("export");
        let file = dir.0.join("out.csv");
        let printed = succeed(&db, &["messages", "export", "--format", "csv", "--output", file.to_str().unwrap()]).await;
        assert!(printed.is_empty(), "--output leaves standard output empty: {printed}");
        let mut reader = csv::Reader::from_path(&file).unwrap();
        assert_eq!(
            reader.headers().unwrap().iter().collect::<Vec<_>>(),
            ["id", "from_id", "to_id", "content", "timestamp", "delivered_at", "seen_at", "client_id"]
        );
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), tricky.len());
        for ((record, content), id) in records.iter().zip(tricky).zip(&ids) {
            assert_eq!(&record[0], id.to_string());
            assert_eq!(&record[3], content);
            assert_eq!(&record[4], "2026-02-03T04:05:06.789012Z");
            assert_eq!(&record[6], "");
        }
        assert_eq!(&records[0][5], "2026-02-03T04:05:07Z");
        // `-` is standard output, and a file is truncated, not appended to.
        let stdout_csv = succeed(&db, &["messages", "export", "--format", "csv", "--output", "-"]).await;
        assert_eq!(stdout_csv, std::fs::read_to_string(&file).unwrap());
        let json_file = dir.0.join("out.jsonl");
        std::fs::write(&json_file, "x".repeat(100_000)).unwrap();
        succeed(&db, &["messages", "export", "-o", json_file.to_str().unwrap()]).await;
        assert_eq!(std::fs::read_to_string(&json_file).unwrap(), jsonl);
        // A file that cannot be written names its path.
        let nowhere = dir.0.join("no/such/dir/out.csv");
        let output = run_on(&db, &["messages", "export", "--output", nowhere.to_str().unwrap()]).await;
        assert_eq!(output.status.code(), Some(1));
        assert!(one_sentence(&output).contains(nowhere.to_str().unwrap()));
        store.close().await;
    }

    async fn export_filters_by_user_since_and_until(backend: Backend) {
        let (db, store) = migrated(backend, &["alice", "bob", "carol"]).await;
        let day = |d: u8| OffsetDateTime::new_utc(time::Date::from_calendar_date(2026, time::Month::January, d).unwrap(), time::Time::MIDNIGHT);
        store_messages(&store, &[
            (1, 2, "a>b 30", day(30)), (2, 3, "b>c 30", day(30)), (3, 1, "c>a 31", day(31)),
            (2, 3, "b>c 31", day(31)), (1, 2, "a>b 31 noon", day(31) + time::Duration::hours(12)),
        ]).await;
        let export = |args: &'static [&'static str]| {
            let db = &db;
            async move { jsonl_contents(&succeed(db, args).await) }
        };
        assert_eq!(export(&["messages", "export", "--user", "1"]).await, ["a>b 30", "c>a 31", "a>b 31 noon"]);
        assert_eq!(export(&["messages", "export", "--since", "2026-01-31"]).await, ["c>a 31", "b>c 31", "a>b 31 noon"]);
        assert_eq!(export(&["messages", "export", "--until", "2026-01-31"]).await, ["a>b 30", "b>c 30"]);
        assert_eq!(
            export(&["messages", "export", "--user", "3", "--since", "2026-01-30T00:00:00.000001Z", "--until", "2026-02-01"]).await,
            ["c>a 31", "b>c 31"]
        );
        assert!(export(&["messages", "export", "--user", "9"]).await.is_empty());
        assert!(export(&["messages", "export", "--since", "2026-01-31", "--until", "2026-01-31"]).await.is_empty());
        let csv = succeed(&db, &["messages", "export", "--format", "csv", "--user", "2", "--until", "2026-01-31"]).await;
        assert_eq!(csv.lines().count(), 3, "a header and two rows: {csv}");
        store.close().await;
    }

    async fn export_into_a_closed_pipe_ends_quietly(backend: Backend) {
        let (db, store) = migrated(backend, &["alice", "bob"]).await;
        let at = days_ago(2);
        let rows: Vec<(i64, i64, &str, OffsetDateTime)> = (0..3000).map(|_| (1, 2, "a message long enough that three thousand of them fill any pipe's buffer, several times over", at)).collect();
        store_messages(&store, &rows).await;
        for format in ["jsonl", "csv"] {
            // `teachlyd messages export | head -1`: the reader takes one line and goes away.
            let url = db.url.clone();
            let output = tokio::task::spawn_blocking(move || {
                let mut child = command(&["messages", "export", "--format", format], &[("DATABASE_URL", &url)])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut first = String::new();
                BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
                let mut stderr = String::new();
                child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
                (first, child.wait().unwrap(), stderr)
            })
            .await
            .unwrap();
            let (first, status, stderr) = output;
            assert!(!first.is_empty());
            assert_eq!(status.code(), Some(0), "{format}: {stderr}");
            assert!(stderr.is_empty(), "{format}: {stderr}");
        }
        store.close().await;
    }

    async fn export_of_a_million_messages_stays_under_64_mib(backend: Backend) {
        const MESSAGES: u64 = 1_000_000;
        const CEILING_KIB: u64 = 64 * 1024;
        let (db, store) = migrated(backend, &["alice", "bob"]).await;
        let started = Instant::now();
        let content = "'message ' || i || ' of a long conversation about algebra, geometry and the homework due on Friday'";
        db.execute(&match backend {
            Backend::Postgres => format!(
                "INSERT INTO messages (from_id, to_id, content, timestamp, delivered_at) \
                 SELECT 1 + i % 2, 2 - i % 2, {content}, now() - interval '1 day' + i * interval '1 millisecond', \
                        now() - interval '1 day' + i * interval '1 millisecond' \
                 FROM generate_series(1, {MESSAGES}) AS i"
            ),
            Backend::Sqlite => format!(
                "INSERT INTO messages (from_id, to_id, content, timestamp, delivered_at) \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {MESSAGES}) \
                 SELECT 1 + i % 2, 2 - i % 2, {content}, \
                        strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day', '+' || (i / 1000.0) || ' seconds'), \
                        strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day', '+' || (i / 1000.0) || ' seconds') \
                 FROM n"
            ),
        })
        .await;
        let seeded = started.elapsed();
        let time = std::path::Path::new("/usr/bin/time");
        assert!(time.exists(), "GNU time is missing: apt-get install time (.ci/run installs it)");
        let dir = crate::common::daemon::tempdir::Dir::new("export-memory");
        let report = dir.0.join("peak-rss-kib");
        let url = db.url.clone();
        let report_path = report.clone();
        let started = Instant::now();
        let (status, lines, stderr) = tokio::task::spawn_blocking(move || {
            let inner = command(&["messages", "export"], &[("DATABASE_URL", &url)]);
            let mut child = std::process::Command::new("/usr/bin/time")
                .arg("-f")
                .arg("%M")
                .arg("-o")
                .arg(&report_path)
                .arg(inner.get_program())
                .args(inner.get_args())
                .env_clear()
                .envs(inner.get_envs().filter_map(|(key, value)| Some((key, value?))))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Read as it comes (counting lines), as a consumer of the export would.
            let mut lines = 0u64;
            let mut stdout = child.stdout.take().unwrap();
            let mut buffer = vec![0; 1 << 16];
            loop {
                let n = stdout.read(&mut buffer).unwrap();
                if n == 0 {
                    break;
                }
                lines += buffer[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            }
            let mut stderr = String::new();
            child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            (child.wait().unwrap(), lines, stderr)
        })
        .await
        .unwrap();
        let exported = started.elapsed();
        assert!(status.success(), "{stderr}");
        assert_eq!(lines, MESSAGES, "every message is exported");
        let peak_kib: u64 = std::fs::read_to_string(&report).unwrap().trim().parse().expect("GNU time's %M");
        eprintln!(
            "{backend:?}: export of {MESSAGES} messages: peak RSS {peak_kib} KiB ({:.1} MiB); seeded in {seeded:?}, exported in {exported:?}",
            peak_kib as f64 / 1024.0
        );
        assert!(peak_kib < CEILING_KIB, "peak RSS {peak_kib} KiB is over {CEILING_KIB} KiB");
        store.close().await;
    }
}

#[test]
fn usage_errors_exit_2_with_a_sentence_naming_the_fix() {
    let cases: [(&[&str], &str); 8] = [
        (
            &["messages", "purge", "--older-than", "5w"],
            "not a duration",
        ),
        (
            &["messages", "purge", "--older-than", "1.5h"],
            "not a duration",
        ),
        (&["messages", "purge"], "--older-than"),
        (
            &["messages", "purge", "--older-than", "1d", "--user", "0"],
            "--user",
        ),
        (
            &["messages", "purge", "--older-than", "99999999999d"],
            "--older-than",
        ),
        (&["messages", "export", "--since", "yesterday"], "RFC 3339"),
        (&["messages", "export", "--format", "xml"], "--format"),
        (
            &[
                "messages",
                "export",
                "--since",
                "2026-02-01",
                "--until",
                "2026-01-31",
            ],
            "--since",
        ),
    ];
    for (args, named) in cases {
        // No database is reachable: a usage error is found before one is needed.
        let output = teachlyd(
            args,
            &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")],
        );
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?} names {named}: {stderr}");
    }
}
