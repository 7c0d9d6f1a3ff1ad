//! One database per test: a SQLite file in its own directory, or a PostgreSQL database created on the
//! server at `TEST_POSTGRES_URL` (default: the local trust-auth server) and dropped afterwards.

use std::path::PathBuf;

use sqlx::{Connection, Executor, PgConnection, SqliteConnection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestDb {
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Directory(PathBuf),
    Database { admin_url: String, name: String },
}

fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A name no other test of any run picks: `prefix` with the process, the clock and a counter.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestDb {
    pub async fn create(backend: Backend) -> Self {
        let name = unique_name("teachlyd_test");
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).expect("create a temporary directory");
                Self {
                    url: format!("sqlite://{}", dir.join("chat.db").display()),
                    cleanup: Cleanup::Directory(dir),
                }
            }
            Backend::Postgres => {
                let admin_url = admin_url();
                let mut admin = PgConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|error| {
                        panic!(
                            "PostgreSQL is not reachable at {admin_url} ({error}); start it \
                         (pg_ctlcluster 15 main start) or set TEST_POSTGRES_URL"
                        )
                    });
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .expect("create the test database");
                let base = admin_url
                    .rsplit_once('/')
                    .map_or(admin_url.as_str(), |(base, _)| base);
                Self {
                    url: format!("{base}/{name}"),
                    cleanup: Cleanup::Database { admin_url, name },
                }
            }
        }
    }
}

/// A connection of the test's own to the server's database, for doing to it what an operator, a
/// migration or another process might: locking a table, deleting a row, changing the schema.
pub enum DbConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

impl TestDb {
    pub fn backend(&self) -> Backend {
        match self.cleanup {
            Cleanup::Directory(_) => Backend::Sqlite,
            Cleanup::Database { .. } => Backend::Postgres,
        }
    }

    pub async fn connect(&self) -> DbConnection {
        match self.backend() {
            Backend::Postgres => DbConnection::Postgres(
                PgConnection::connect(&self.url)
                    .await
                    .expect("connect to the test database"),
            ),
            Backend::Sqlite => DbConnection::Sqlite(
                SqliteConnection::connect(&self.url)
                    .await
                    .expect("open the test database"),
            ),
        }
    }

    /// Runs statements (separated by `;`) on a connection of their own.
    pub async fn execute(&self, sql: &str) {
        let mut connection = self.connect().await;
        connection.execute(sql).await;
        connection.close().await;
    }

    /// Holds the lock that stops every message from being written, until `release`: on PostgreSQL
    /// `LOCK TABLE messages IN EXCLUSIVE MODE` (reads still pass), on SQLite the database's one write
    /// lock (`BEGIN IMMEDIATE`).
    pub async fn lock_writes(&self) -> DbConnection {
        let mut connection = self.connect().await;
        match self.backend() {
            Backend::Postgres => {
                connection
                    .execute("BEGIN; LOCK TABLE messages IN EXCLUSIVE MODE")
                    .await
            }
            Backend::Sqlite => connection.execute("BEGIN IMMEDIATE").await,
        }
        connection
    }
}

impl DbConnection {
    pub async fn execute(&mut self, sql: &str) {
        let result = match self {
            DbConnection::Postgres(connection) => {
                connection.execute(sqlx::AssertSqlSafe(sql)).await.map(drop)
            }
            DbConnection::Sqlite(connection) => {
                connection.execute(sqlx::AssertSqlSafe(sql)).await.map(drop)
            }
        };
        result.unwrap_or_else(|error| panic!("{sql}: {error}"));
    }

    /// The id of every message stored.
    pub async fn message_ids(&mut self) -> Vec<i64> {
        let sql = "SELECT id FROM messages ORDER BY id";
        let ids = match self {
            DbConnection::Postgres(connection) => {
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_all(connection)
                    .await
            }
            DbConnection::Sqlite(connection) => {
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_all(connection)
                    .await
            }
        };
        ids.expect("the messages can be read")
    }

    /// Ends whatever the connection held (a lock, a transaction) by closing it.
    pub async fn close(self) {
        let _ = match self {
            DbConnection::Postgres(connection) => connection.close().await,
            DbConnection::Sqlite(connection) => connection.close().await,
        };
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Directory(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Database { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs outside any runtime guarantee: use a thread with a runtime of its own.
                let _ = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime for cleanup");
                    runtime.block_on(async {
                        if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                            let _ = admin
                                .execute(sqlx::AssertSqlSafe(format!(
                                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                                )))
                                .await;
                        }
                    });
                })
                .join();
            }
        }
    }
}
