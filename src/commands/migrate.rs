use crate::cli::MigrateArgs;

use super::{CommandError, load_config, open_store};

/// Applies pending migrations, or lists every migration and whether it is applied.
pub async fn run(args: &MigrateArgs) -> Result<String, CommandError> {
    let (config, _) = load_config(&args.file)?;
    let store = open_store(&config).await?;
    let before = store.migration_status().await?;
    let output = if args.status {
        before
            .iter()
            .map(|m| {
                let state = if m.applied { "applied" } else { "pending" };
                format!("{:>4}  {state:<8} {}\n", m.version, m.description)
            })
            .collect()
    } else {
        store.migrate().await?;
        let applied = before.iter().filter(|m| !m.applied).count();
        format!(
            "applied {applied} migration(s); the {} database is up to date\n",
            store.backend_name()
        )
    };
    store.close().await;
    Ok(output)
}
