//! The server under load: the URLs given, or a teachlyd this tool starts on loopback with a fresh
//! database and stops (SIGTERM) and cleans up afterwards, on success and on error alike.

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use sqlx::{Connection, Executor, PgConnection};
use tokio::process::{Child, Command};

use crate::{UsageError, api::BaseUrl, cli::Common, measure::Processes};

const DEFAULT_BINARY: &str = "target/release/teachlyd";
const DEFAULT_POSTGRES_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The longest a started server may take to answer /health.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);
/// SIGTERM's bound: the server's default shutdown grace (10 s) + 5 s, and a margin.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);

pub struct Target {
    /// Where senders sign in and connect.
    pub senders: BaseUrl,
    /// Where recipients connect (the last --url; the same as `senders` with one).
    pub recipients: BaseUrl,
    pub processes: Processes,
    /// `sqlite`, `postgres`, a database URL (spawned), or `external` (--url).
    pub database: String,
    spawned: Option<Spawned>,
}

struct Spawned {
    child: Child,
    dir: PathBuf,
    postgres: Option<FreshDatabase>,
}

struct FreshDatabase {
    admin: String,
    name: String,
}

impl Target {
    /// `/metrics` of each server the run talks to.
    pub fn metrics_urls(&self) -> Vec<String> {
        let mut urls = vec![self.senders.http("/metrics")];
        if self.recipients.http("/metrics") != urls[0] {
            urls.push(self.recipients.http("/metrics"));
        }
        urls
    }

    pub async fn start(common: &Common) -> anyhow::Result<Target> {
        if !common.urls.is_empty() {
            let urls = common
                .urls
                .iter()
                .map(|url| BaseUrl::parse(url))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Target {
                senders: urls[0].clone(),
                recipients: urls[urls.len() - 1].clone(),
                processes: Processes::new(common.pids.clone()),
                database: "external".into(),
                spawned: None,
            });
        }
        let database = common.database.clone().unwrap_or_else(|| "sqlite".into());
        let known = matches!(database.as_str(), "sqlite" | "postgres")
            || ["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|scheme| database.starts_with(scheme));
        if !known {
            return Err(UsageError(format!(
                "--database `{database}` must be sqlite, postgres, or a sqlite:/postgres:// URL"
            ))
            .into());
        }
        let binary = common
            .spawn
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY));
        if !binary.is_file() {
            return Err(UsageError(format!(
                "no teachlyd at {}: build it (cargo build --release -p teachlyd), or pass --spawn PATH \
                 or --url URL",
                binary.display()
            ))
            .into());
        }
        let dir = std::env::temp_dir().join(format!(
            "teachly-load-{}-{:08x}",
            std::process::id(),
            crate::random_u64() as u32
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the temporary directory {}", dir.display()))?;
        match spawn(common, &binary, &database, &dir).await {
            Ok((spawned, base)) => {
                let mut pids = common.pids.clone();
                if let Some(pid) = spawned.child.id() {
                    pids.insert(0, pid);
                }
                Ok(Target {
                    senders: base.clone(),
                    recipients: base,
                    processes: Processes::new(pids),
                    database,
                    spawned: Some(spawned),
                })
            }
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(error)
            }
        }
    }

    /// Stops what this tool started and removes its database and files. Answers how the server
    /// exited, or `None` when it was not ours.
    pub async fn stop(self) -> Option<String> {
        let spawned = self.spawned?;
        Some(spawned.stop().await)
    }
}

async fn spawn(
    common: &Common,
    binary: &Path,
    database: &str,
    dir: &Path,
) -> anyhow::Result<(Spawned, BaseUrl)> {
    let (database_url, fresh) = match database {
        "sqlite" => (format!("sqlite://{}", dir.join("load.db").display()), None),
        "postgres" => {
            let admin = common
                .postgres_admin
                .clone()
                .or_else(|| std::env::var("TEST_POSTGRES_URL").ok())
                .unwrap_or_else(|| DEFAULT_POSTGRES_ADMIN.into());
            let fresh = FreshDatabase::create(admin).await?;
            (fresh.url(), Some(fresh))
        }
        url => (url.to_owned(), None),
    };
    let config = dir.join("config.toml");
    let started = async {
        // Every simulated user connects from 127.0.0.1, so the per-address cap must not count.
        std::fs::write(
            &config,
            "[limits]\nmax_connections = 1000000\nmax_connections_per_ip = 1000000\n",
        )
        .context("cannot write the config file")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("no free port on 127.0.0.1")?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(binary)
            .arg("serve")
            .env("TEACHLYD_LISTEN", &listen)
            .env("LOG_LEVEL", "warn")
            .env("TEACHLYD_CONFIG", &config)
            .env("RATE_LIMIT_ENABLED", "false")
            .env("DATABASE_URL", &database_url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        anyhow::Ok((child, BaseUrl::parse(&format!("http://{listen}"))?))
    }
    .await;
    let (child, base) = match started {
        Ok(started) => started,
        Err(error) => {
            if let Some(fresh) = fresh {
                fresh.drop_it().await;
            }
            return Err(error);
        }
    };
    let mut spawned = Spawned {
        child,
        dir: dir.to_owned(),
        postgres: fresh,
    };
    if let Err(error) = spawned.wait_healthy(&base).await {
        spawned.stop().await;
        return Err(error);
    }
    Ok((spawned, base))
}

impl Spawned {
    async fn wait_healthy(&mut self, base: &BaseUrl) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let url = base.http("/health");
        let deadline = Instant::now() + STARTUP_LIMIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("teachlyd exited at start ({status}); its log is above");
            }
            let answer = http.get(&url).timeout(Duration::from_secs(1)).send().await;
            if answer.is_ok_and(|answer| answer.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(anyhow!(
            "teachlyd did not answer {url} within {STARTUP_LIMIT:?}"
        ))
    }

    async fn stop(mut self) -> String {
        let started = Instant::now();
        let exit = match self.child.id() {
            Some(pid) => {
                // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                match tokio::time::timeout(SHUTDOWN_LIMIT, self.child.wait()).await {
                    Ok(Ok(status)) => describe(status, started.elapsed()),
                    Ok(Err(error)) => format!("could not be waited for: {error}"),
                    Err(_) => {
                        let _ = self.child.kill().await;
                        format!("still ran {SHUTDOWN_LIMIT:?} after SIGTERM and was killed")
                    }
                }
            }
            None => match self.child.try_wait() {
                Ok(Some(status)) => format!("had already exited ({status})"),
                _ => "had already exited".into(),
            },
        };
        if let Some(fresh) = self.postgres.take() {
            fresh.drop_it().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        exit
    }
}

fn describe(status: ExitStatus, took: Duration) -> String {
    format!(
        "exited {} {:.1} s after SIGTERM",
        match status.code() {
            Some(code) => format!("with code {code}"),
            None => format!("by signal ({status})"),
        },
        took.as_secs_f64()
    )
}

impl FreshDatabase {
    async fn create(admin: String) -> anyhow::Result<FreshDatabase> {
        let name = format!("teachly_load_{:016x}", crate::random_u64());
        let mut connection = PgConnection::connect(&admin)
            .await
            .with_context(|| format!("cannot reach PostgreSQL at {}", mask_password(&admin)))?;
        connection
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        let _ = connection.close().await;
        Ok(FreshDatabase { admin, name })
    }

    fn url(&self) -> String {
        with_database(&self.admin, &self.name)
    }

    async fn drop_it(self) {
        let dropped = async {
            let mut connection = PgConnection::connect(&self.admin).await?;
            connection
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )))
                .await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(error) = dropped {
            eprintln!(
                "teachly-load: could not drop the database {}: {error:#}",
                self.name
            );
        }
    }
}

/// The admin URL with its database name replaced; the query string stays.
fn with_database(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut url = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[scheme_end..];
    match (rest.find('@'), rest.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            )
        }
        _ => url.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fresh_database_replaces_the_admin_one() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
        assert_eq!(
            mask_password("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(mask_password("postgres://u@h/db"), "postgres://u@h/db");
    }
}
