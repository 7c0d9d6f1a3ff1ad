//! Which statement shape commits messages fastest, on the real schema (migrations, indexes and all).
//! Prints rows per second; asserts nothing.
//!
//! cargo bench --bench write_shapes -- [--backend sqlite|postgres|both] [--rows 20000]
//!
//! Each shape commits `rows` messages in batches of 1, 16, 128 and 512 rows, one transaction per
//! batch, as the group-commit writer would. The `+delivered` shapes also mark the previous batch
//! delivered, either in the same transaction (one commit, one fsync per cycle) or in a second one
//! (what a separate receipt batcher costs).

use std::time::Instant;

use sqlx::{AssertSqlSafe, Connection, Executor, PgPool, SqlitePool};
use teachlyd::store::Store;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

const BATCHES: [usize; 4] = [1, 16, 128, 512];
const USERS: i64 = 200;

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// One prepared INSERT per row, in one transaction per batch.
    RowByRow,
    /// Multi-row `VALUES` statements of up to 64 rows.
    Values64,
    /// One statement per batch: the rows as a JSON array read by `json_each`.
    JsonEach,
    /// `JsonEach`, and the previous batch marked delivered in the same transaction.
    JsonEachDeliveredTogether,
    /// `JsonEach`, and the previous batch marked delivered in a transaction of its own.
    JsonEachDeliveredApart,
}

#[derive(Clone, Copy, Debug)]
enum PgShape {
    /// Ids from the sequence, then one `UNNEST` insert, in one transaction.
    Unnest,
    /// `Unnest`, and the previous batch marked delivered in the same transaction.
    UnnestDeliveredTogether,
    /// `Unnest`, and the previous batch marked delivered in a transaction of its own.
    UnnestDeliveredApart,
}

struct Row {
    from: i64,
    to: i64,
    content: String,
    client_id: String,
}

fn rows(count: usize, run: usize) -> Vec<Row> {
    (0..count)
        .map(|n| Row {
            from: 1 + (n as i64 % USERS),
            to: 1 + ((n as i64 + 1) % USERS),
            content: format!("see you after lunch for the fractions review, bring notes {n}"),
            client_id: format!("{run}-{n}"),
        })
        .collect()
}

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap()
}

async fn sqlite_shape(
    pool: &SqlitePool,
    shape: Shape,
    batch: &[Row],
    delivered: &[i64],
) -> Vec<i64> {
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let at = now();
    let base: i64 = sqlx::query_scalar(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let ids: Vec<i64> = (1..=batch.len() as i64).map(|n| base + n).collect();
    match shape {
        Shape::RowByRow => {
            for (row, id) in batch.iter().zip(&ids) {
                sqlx::query(
                    "INSERT INTO messages (id, from_id, to_id, content, timestamp, client_id) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (from_id, client_id) DO NOTHING",
                )
                .bind(id)
                .bind(row.from)
                .bind(row.to)
                .bind(&row.content)
                .bind(&at)
                .bind(&row.client_id)
                .execute(&mut *tx)
                .await
                .unwrap();
            }
        }
        Shape::Values64 => {
            for (chunk, chunk_ids) in batch.chunks(64).zip(ids.chunks(64)) {
                let values = vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
                let sql = format!(
                    "INSERT INTO messages (id, from_id, to_id, content, timestamp, client_id) \
                     VALUES {values} ON CONFLICT (from_id, client_id) DO NOTHING"
                );
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for (row, id) in chunk.iter().zip(chunk_ids) {
                    query = query
                        .bind(*id)
                        .bind(row.from)
                        .bind(row.to)
                        .bind(row.content.clone())
                        .bind(at.clone())
                        .bind(row.client_id.clone());
                }
                query.execute(&mut *tx).await.unwrap();
            }
        }
        Shape::JsonEach | Shape::JsonEachDeliveredTogether | Shape::JsonEachDeliveredApart => {
            let json: Vec<serde_json::Value> = batch
                .iter()
                .zip(&ids)
                .map(|(row, id)| {
                    serde_json::json!([id, row.from, row.to, row.content, at, row.client_id])
                })
                .collect();
            sqlx::query(
                "INSERT INTO messages (id, from_id, to_id, content, timestamp, client_id) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 \
                 FROM json_each($1) WHERE true ON CONFLICT (from_id, client_id) DO NOTHING",
            )
            .bind(serde_json::to_string(&json).unwrap())
            .execute(&mut *tx)
            .await
            .unwrap();
        }
    }
    let mark = "UPDATE messages SET delivered_at = $2 \
                WHERE id IN (SELECT value FROM json_each($1)) AND delivered_at IS NULL RETURNING id";
    let delivered_json = serde_json::to_string(delivered).unwrap();
    if matches!(shape, Shape::JsonEachDeliveredTogether) {
        sqlx::query(mark)
            .bind(&delivered_json)
            .bind(&at)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    if matches!(shape, Shape::JsonEachDeliveredApart) {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query(mark)
            .bind(&delivered_json)
            .bind(&at)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    ids
}

async fn postgres_shape(
    pool: &PgPool,
    shape: PgShape,
    batch: &[Row],
    delivered: &[i64],
) -> Vec<i64> {
    let at = OffsetDateTime::now_utc();
    let mark = "UPDATE messages SET delivered_at = $2 \
                WHERE id = ANY($1) AND delivered_at IS NULL RETURNING id";
    let mut tx = pool.begin().await.unwrap();
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT nextval('messages_id_seq') FROM generate_series(1, $1)")
            .bind(batch.len() as i64)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    let from: Vec<i64> = batch.iter().map(|r| r.from).collect();
    let to: Vec<i64> = batch.iter().map(|r| r.to).collect();
    let content: Vec<&str> = batch.iter().map(|r| r.content.as_str()).collect();
    let stamps = vec![at; batch.len()];
    let client_ids: Vec<&str> = batch.iter().map(|r| r.client_id.as_str()).collect();
    sqlx::query(
        "INSERT INTO messages (id, from_id, to_id, content, timestamp, client_id) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], \
                              $5::timestamptz[], $6::text[]) \
         ON CONFLICT (from_id, client_id) DO NOTHING RETURNING id",
    )
    .bind(&ids)
    .bind(&from)
    .bind(&to)
    .bind(&content)
    .bind(&stamps)
    .bind(&client_ids)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    if matches!(shape, PgShape::UnnestDeliveredTogether) {
        sqlx::query(mark)
            .bind(delivered)
            .bind(at)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    if matches!(shape, PgShape::UnnestDeliveredApart) {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(mark)
            .bind(delivered)
            .bind(at)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    ids
}

async fn seed_users(store: &Store) {
    for n in 0..USERS {
        let sql = "INSERT INTO users (google_id, name) VALUES ($1, $2)";
        match store {
            Store::Postgres(pool) => sqlx::query(sql)
                .bind(format!("dev:u{n}"))
                .bind(format!("u{n}"))
                .execute(pool)
                .await
                .map(drop),
            Store::Sqlite { writer, .. } => sqlx::query(sql)
                .bind(format!("dev:u{n}"))
                .bind(format!("u{n}"))
                .execute(writer)
                .await
                .map(drop),
        }
        .unwrap();
    }
}

fn report(backend: &str, shape: &str, batch: usize, rows: usize, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{backend:<9} {shape:<28} batch {batch:>4}   {:>8.0} rows/s   {:>7.1} µs/row",
        rows as f64 / seconds,
        seconds * 1e6 / rows as f64
    );
}

async fn bench_sqlite(total: usize) {
    let dir = std::env::temp_dir().join(format!("teachlyd-shapes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("shapes.db").display());
    let store = Store::connect(&url, 4, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    seed_users(&store).await;
    let Store::Sqlite { writer, .. } = &store else {
        unreachable!()
    };
    let shapes = [
        Shape::RowByRow,
        Shape::Values64,
        Shape::JsonEach,
        Shape::JsonEachDeliveredTogether,
        Shape::JsonEachDeliveredApart,
    ];
    for (run, shape) in shapes.into_iter().enumerate() {
        for batch_size in BATCHES {
            let count = if batch_size == 1 { total / 10 } else { total };
            let all = rows(count, run * 10 + batch_size);
            let started = Instant::now();
            let mut delivered = Vec::new();
            for batch in all.chunks(batch_size) {
                delivered = sqlite_shape(writer, shape, batch, &delivered).await;
            }
            report("sqlite", &format!("{shape:?}"), batch_size, count, started);
        }
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn bench_postgres(total: usize) {
    let admin = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("teachlyd_shapes_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL");
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let store = Store::connect(&url, 4, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    seed_users(&store).await;
    let Store::Postgres(pool) = &store else {
        unreachable!()
    };
    let shapes = [
        PgShape::Unnest,
        PgShape::UnnestDeliveredTogether,
        PgShape::UnnestDeliveredApart,
    ];
    for (run, shape) in shapes.into_iter().enumerate() {
        for batch_size in BATCHES {
            let count = if batch_size == 1 { total / 10 } else { total };
            let all = rows(count, run * 10 + batch_size);
            let started = Instant::now();
            let mut delivered = Vec::new();
            for batch in all.chunks(batch_size) {
                delivered = postgres_shape(pool, shape, batch, &delivered).await;
            }
            report(
                "postgres",
                &format!("{shape:?}"),
                batch_size,
                count,
                started,
            );
        }
    }
    store.close().await;
    let _ = conn
        .execute(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await;
}

#[tokio::main]
async fn main() {
    let mut backend = "both".to_owned();
    let mut total = 20_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--backend" => backend = args.next().expect("--backend sqlite|postgres|both"),
            "--rows" => total = args.next().and_then(|n| n.parse().ok()).expect("--rows N"),
            _ => {}
        }
    }
    if backend != "postgres" {
        bench_sqlite(total).await;
    }
    if backend != "sqlite" {
        bench_postgres(total).await;
    }
}
