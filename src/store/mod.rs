//! Storage over PostgreSQL (production) and SQLite (the embedded default), behind one enum so that the
//! rest of the program never names a dialect. SQL is written once where the dialects agree; where they
//! differ, both versions sit next to each other.

mod bulk;
mod known_users;
mod messages;
pub mod tokens;
mod users;

use std::{path::PathBuf, str::FromStr, time::Duration};

use sqlx::{
    PgPool, SqlitePool,
    migrate::Migrator,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use bulk::DEFAULT_PURGE_BATCH;
pub use known_users::KnownUsers;
pub use messages::{Committed, ConversationSummary, HistoryPage, SeenReceipt};
pub use tokens::{Family, RefreshTokenRecord, RevokedSessions, Rotation, SessionState};
pub use users::Identity;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The database, whichever it is. Cheap to clone: pools are shared handles.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgPool),
    /// SQLite allows one writer: every write goes through `writer` (one connection), reads use `reader`.
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
    },
}

/// The group commit's way to the database (see [`Store::lane`]).
///
/// On PostgreSQL the lane keeps its connection between commits: the pool pings a connection when it
/// is taken and again when it is given back, two round trips a cycle that were as many as the
/// commit's own. After any failure the connection goes back to the pool (which tests it and rolls
/// back what was left open), and the next commit takes a tested one.
#[derive(Debug)]
pub struct Lane {
    store: Store,
    held: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("the database did not answer in time")]
    TimedOut,
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
            sqlx::Error::Database(ref db) if is_transient(db.as_ref()) => {
                StoreError::Unavailable(error)
            }
            sqlx::Error::Database(ref db) if db.is_unique_violation() => {
                StoreError::Conflict(db.message().to_owned())
            }
            other => StoreError::Other(other),
        }
    }
}

impl StoreError {
    /// The database could not answer (down, locked, timed out): trying the same work again later may
    /// succeed, and splitting it up will not.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::TimedOut)
    }
}

/// Errors that say nothing about the statement, only about the database's state right now.
fn is_transient(error: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = error.code() else {
        return false;
    };
    if error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        // The low byte of a result code is the primary code: BUSY, LOCKED, IOERR, FULL, CANTOPEN.
        return code
            .parse::<i32>()
            .is_ok_and(|code| matches!(code & 0xff, 5 | 6 | 10 | 13 | 14));
    }
    // PostgreSQL's SQLSTATE: connection exceptions, insufficient resources, operator intervention
    // (57014 is a statement_timeout), lock_not_available, serialization failure, deadlock.
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
        || matches!(code.as_ref(), "55P03" | "40001" | "40P01")
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Why [`Store::connect_existing`] has no database to work on.
#[derive(Debug, thiserror::Error)]
pub enum ExistingError {
    /// The SQLite file is not there (and was not created).
    #[error("there is no database file at {}", .0.display())]
    NoFile(PathBuf),
    /// The database answers, but `pending` of the `known` migrations of this teachlyd are not
    /// applied (all of them: it was never migrated).
    #[error("{pending} of {known} migrations are not applied")]
    Unmigrated { pending: usize, known: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs `$body` with `$pool` bound to the pool that serves reads (`read`) or writes (`write`).
/// The body is compiled once per backend, so the same query text serves both.
macro_rules! on_pool {
    ($store:expr, read, |$pool:ident| $body:expr) => {
        match $store {
            $crate::store::Store::Postgres($pool) => $body,
            $crate::store::Store::Sqlite { reader: $pool, .. } => $body,
        }
    };
    ($store:expr, write, |$pool:ident| $body:expr) => {
        match $store {
            $crate::store::Store::Postgres($pool) => $body,
            $crate::store::Store::Sqlite { writer: $pool, .. } => $body,
        }
    };
}
pub(crate) use on_pool;

/// How many database connections are open, how many are lent out, and how many may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    pub open: usize,
    pub in_use: usize,
    pub max: usize,
}

/// One migration and whether it has been applied, for `teachlyd migrate --status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

impl Store {
    /// Opens the database named by `url`; a SQLite file is created if missing. `write_timeout` bounds
    /// how long SQLite's one writer waits for a lock held by another process.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        write_timeout: Duration,
    ) -> StoreResult<Self> {
        if url.starts_with("sqlite:") {
            Self::connect_sqlite(url, max_connections, write_timeout).await
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            Ok(Store::Postgres(pool))
        }
    }

    /// Opens a database that exists and carries every migration of this teachlyd, for the operator
    /// commands that work on stored data: nothing is created or migrated, unlike [`Store::connect`]
    /// (a mistyped path must not leave an empty database behind, nor change a schema in passing).
    pub async fn connect_existing(
        url: &str,
        max_connections: u32,
        write_timeout: Duration,
    ) -> Result<Self, ExistingError> {
        let store = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url).map_err(StoreError::from)?;
            let path = options.get_filename();
            if !path.exists() {
                return Err(ExistingError::NoFile(path.to_owned()));
            }
            Self::connect_sqlite_with(options, max_connections, write_timeout).await?
        } else {
            Self::connect(url, max_connections, write_timeout).await?
        };
        let migrations = match store.migration_status().await {
            Ok(migrations) => migrations,
            Err(error) => {
                store.close().await;
                return Err(error.into());
            }
        };
        let pending = migrations.iter().filter(|m| !m.applied).count();
        if pending > 0 {
            store.close().await;
            return Err(ExistingError::Unmigrated {
                pending,
                known: migrations.len(),
            });
        }
        Ok(store)
    }

    async fn connect_sqlite(
        url: &str,
        max_connections: u32,
        write_timeout: Duration,
    ) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
        Self::connect_sqlite_with(options, max_connections, write_timeout).await
    }

    async fn connect_sqlite_with(
        options: SqliteConnectOptions,
        max_connections: u32,
        write_timeout: Duration,
    ) -> StoreResult<Self> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit acknowledged to a sender survives a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(write_timeout)
            .foreign_keys(true);
        // A SQLite connection is a file handle that cannot drop like a network connection, so the
        // pool's liveness ping when it hands one out only costs a hop to the driver's thread (the
        // one it sends when a connection comes back stays: it flushes a rollback left behind).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Store::Sqlite { writer, reader })
    }

    /// A connection of its own for a task that writes in batches (the group commit): it never waits
    /// behind request handlers for a pooled connection, and each of its statements is cancelled by
    /// the database after `statement_timeout`. SQLite already writes through one connection, so there
    /// the lane writes through the store itself.
    pub async fn lane(&self, statement_timeout: Duration) -> StoreResult<Lane> {
        match self {
            Store::Postgres(pool) => {
                let millis = statement_timeout.as_millis().to_string();
                let options = (*pool.connect_options())
                    .clone()
                    .options([("statement_timeout", millis.as_str())]);
                let lane = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(statement_timeout)
                    .connect_with(options)
                    .await?;
                Ok(Lane {
                    store: Store::Postgres(lane),
                    held: None,
                })
            }
            Store::Sqlite { .. } => Ok(Lane {
                store: self.clone(),
                held: None,
            }),
        }
    }

    fn migrator(&self) -> &'static Migrator {
        match self {
            Store::Postgres(_) => &POSTGRES_MIGRATIONS,
            Store::Sqlite { .. } => &SQLITE_MIGRATIONS,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite { .. } => "sqlite",
        }
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        let migrator = self.migrator();
        on_pool!(self, write, |pool| {
            migrator.run(pool).await?;
        });
        Ok(())
    }

    pub async fn migration_status(&self) -> StoreResult<Vec<MigrationState>> {
        let exists_sql = match self {
            Store::Postgres(_) => "SELECT to_regclass('_sqlx_migrations') IS NOT NULL",
            Store::Sqlite { .. } => {
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')"
            }
        };
        let table_exists: bool = on_pool!(self, read, |pool| sqlx::query_scalar(exists_sql)
            .fetch_one(pool)
            .await?);
        let applied: Vec<i64> = if table_exists {
            let sql = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
            on_pool!(self, read, |pool| sqlx::query_scalar(sql)
                .fetch_all(pool)
                .await?)
        } else {
            Vec::new()
        };
        Ok(self
            .migrator()
            .iter()
            .filter(|migration| !migration.migration_type.is_down_migration())
            .map(|migration| MigrationState {
                version: migration.version,
                description: migration.description.to_string(),
                applied: applied.contains(&migration.version),
            })
            .collect())
    }

    /// Connections the pools hold open, and how many of those are lent out right now.
    pub fn pool_usage(&self) -> PoolUsage {
        let (open, idle, max) = match self {
            Store::Postgres(pool) => (
                pool.size(),
                pool.num_idle(),
                pool.options().get_max_connections(),
            ),
            Store::Sqlite { writer, reader } => (
                writer.size() + reader.size(),
                writer.num_idle() + reader.num_idle(),
                writer.options().get_max_connections() + reader.options().get_max_connections(),
            ),
        };
        PoolUsage {
            open: open as usize,
            in_use: (open as usize).saturating_sub(idle),
            max: max as usize,
        }
    }

    /// Answers when the database does (for `/ready`).
    pub async fn ping(&self) -> StoreResult<()> {
        on_pool!(self, read, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Store::Postgres(pool) => pool.close().await,
            Store::Sqlite { writer, reader } => {
                reader.close().await;
                writer.close().await;
            }
        }
    }
}
