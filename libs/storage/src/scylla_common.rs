//! What every ScyllaDB adapter shares: connection settings, keyspace creation, embedded versioned
//! migrations, statement preparation with the consistency levels each kind of statement needs,
//! lightweight-transaction outcomes and error mapping. The reasons live in `docs/storage-scylla.md`.

use crate::StoreError;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::serialize::batch::BatchValues;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use time::OffsetDateTime;
use uuid::Uuid;

/// A versioned schema file: `(version, name, cql)`. Versions are unique across every store, so
/// stores may share one keyspace and one ledger; each store applies only its own files.
pub type Migration = (i32, &'static str, &'static str);

/// The migration ledger cannot live in a migration: it must exist before we can ask what ran.
const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version int PRIMARY KEY,
    name text,
    applied_at timestamp
)";

/// Tries of a conditional write whose outcome a timeout left unknown.
pub const LWT_ATTEMPTS: usize = 3;

/// Scylla's keyspace name limit; also keeps the name a plain identifier we may splice into DDL.
const MAX_KEYSPACE_LEN: usize = 48;

/// Connection settings for the ScyllaDB adapters.
#[derive(Clone)]
pub struct ScyllaConfig {
    /// `host:port` contact points.
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Connects, creates the keyspace if it is missing, switches to it and applies the given
/// migrations that are not recorded yet. Returns the session and the (lower-cased) keyspace name.
pub async fn connect(
    config: &ScyllaConfig,
    migrations: &[Migration],
) -> Result<(Cql, String), StoreError> {
    let keyspace = keyspace_name(&config.keyspace)?;
    if config.nodes.is_empty() {
        return Err(StoreError::Unavailable(
            "no ScyllaDB nodes configured".into(),
        ));
    }
    if config.replication_factor == 0 {
        return Err(StoreError::Unavailable(
            "the ScyllaDB replication factor must be at least 1".into(),
        ));
    }
    let mut builder = SessionBuilder::new().known_nodes(&config.nodes);
    match (&config.username, &config.password) {
        (Some(user), Some(password)) => builder = builder.user(user, password),
        (None, None) => {}
        _ => {
            return Err(StoreError::Unavailable(
                "ScyllaDB username and password must be set together".into(),
            ));
        }
    }
    let session = builder
        .build()
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to ScyllaDB: {e}")))?;
    create_keyspace(&session, &keyspace, config.replication_factor).await?;
    session
        .use_keyspace(keyspace.as_str(), false)
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot use keyspace {keyspace}: {e}")))?;
    migrate(&session, &keyspace, migrations).await?;
    Ok((Cql { session }, keyspace))
}

/// How a prepared statement reads or writes, which fixes its consistency levels.
#[derive(Clone, Copy)]
pub enum Mode {
    Read,
    /// A Paxos read: sees every committed and in-flight conditional write.
    SerialRead,
    Write,
    Lwt,
}

/// The session plus the few ways the adapters run statements on it.
pub struct Cql {
    session: Session,
}

impl Cql {
    pub async fn prepare(&self, cql: String, mode: Mode) -> Result<PreparedStatement, StoreError> {
        let mut stmt = self
            .session
            .prepare(cql)
            .await
            .map_err(|e| StoreError::Unavailable(format!("preparing a statement: {e}")))?;
        match mode {
            Mode::Read | Mode::Write => stmt.set_consistency(Consistency::LocalQuorum),
            Mode::SerialRead => stmt.set_consistency(Consistency::Serial),
            Mode::Lwt => {
                // SERIAL, not the driver's LOCAL_SERIAL default: a name, a token or a count must
                // be decided once across every datacenter, not once per datacenter.
                // LOCAL_QUORUM is the commit (learn) level, which is what makes the following
                // LOCAL_QUORUM reads see the write.
                stmt.set_serial_consistency(Some(SerialConsistency::Serial));
                stmt.set_consistency(Consistency::LocalQuorum);
            }
        }
        Ok(stmt)
    }

    /// A conditional batch of prepared statements (all on one partition of one table: Scylla
    /// refuses anything wider), with the levels of [`Mode::Lwt`]; the batch's levels are the
    /// ones that count, not its statements'.
    pub fn lwt_batch_of(statements: &[&PreparedStatement]) -> Batch {
        let mut batch = Batch::new(BatchType::Logged);
        for stmt in statements {
            batch.append_statement((*stmt).clone());
        }
        batch.set_serial_consistency(Some(SerialConsistency::Serial));
        batch.set_consistency(Consistency::LocalQuorum);
        batch
    }

    pub async fn run(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryResult, StoreError> {
        self.session
            .execute_unpaged(stmt, values)
            .await
            .map_err(unavailable)
    }

    /// Runs a single-partition SELECT and decodes its row, if any.
    pub async fn fetch<R>(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let rows = self
            .run(stmt, values)
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        rows.maybe_first_row::<R>().map_err(corrupt)
    }

    /// Runs a single-partition SELECT whose size its `LIMIT` (or the partition) bounds, and
    /// decodes every row.
    pub async fn fetch_all<R>(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let rows = self
            .run(stmt, values)
            .await?
            .into_rows_result()
            .map_err(corrupt)?;
        rows.rows::<R>()
            .map_err(corrupt)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)
    }

    /// Runs a conditional write. `Ok(None)` means its outcome is unknown: Paxos may still have
    /// committed it after a timeout, so the caller must read back before deciding anything.
    pub async fn lwt(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<LwtOutcome>, StoreError> {
        LwtOutcome::from_result(self.session.execute_unpaged(stmt, values).await)
    }

    /// [`Cql::lwt`] for a conditional batch; its answer's first row carries `[applied]`.
    pub async fn lwt_batch(
        &self,
        batch: &Batch,
        values: impl BatchValues,
    ) -> Result<Option<LwtOutcome>, StoreError> {
        LwtOutcome::from_result(self.session.batch(batch, values).await)
    }
}

/// The row a conditional write answers with. Its columns differ between engines and outcomes
/// (Scylla: `[applied]`, the key and the condition's columns, always; Cassandra: only `[applied]`
/// when applied), so it is read by column name, never by a fixed row type.
#[derive(Debug)]
pub struct LwtOutcome {
    pub applied: bool,
    columns: Vec<(String, Option<CqlValue>)>,
}

impl LwtOutcome {
    fn from_result(
        result: Result<QueryResult, ExecutionError>,
    ) -> Result<Option<LwtOutcome>, StoreError> {
        let result = match result {
            Ok(result) => result,
            Err(e) if outcome_unknown(&e) => {
                tracing::warn!(error = %e, "conditional write timed out; reading back its outcome");
                return Ok(None);
            }
            Err(e) => return Err(unavailable(e)),
        };
        let rows = result.into_rows_result().map_err(corrupt)?;
        let names = rows
            .column_specs()
            .iter()
            .map(|spec| spec.name().to_owned())
            .collect();
        let row = rows
            .maybe_first_row::<Row>()
            .map_err(corrupt)?
            .ok_or_else(|| {
                StoreError::Corrupt("a conditional write answered without a row".into())
            })?;
        LwtOutcome::parse(names, row).map(Some)
    }

    pub fn parse(names: Vec<String>, row: Row) -> Result<Self, StoreError> {
        if names.len() != row.columns.len() {
            return Err(StoreError::Corrupt(
                "a conditional write answered with mismatched columns".into(),
            ));
        }
        let columns: Vec<_> = names.into_iter().zip(row.columns).collect();
        let applied = match columns.iter().find(|(name, _)| name == "[applied]") {
            Some((_, Some(CqlValue::Boolean(applied)))) => *applied,
            _ => {
                return Err(StoreError::Corrupt(
                    "a conditional write answered without [applied]".into(),
                ));
            }
        };
        Ok(Self { applied, columns })
    }

    fn value(&self, name: &str) -> Option<&CqlValue> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_ref())
    }

    pub fn uuid(&self, name: &str) -> Result<Option<Uuid>, StoreError> {
        self.value(name)
            .map(|v| {
                v.as_uuid()
                    .ok_or_else(|| StoreError::Corrupt(format!("column {name} is not a uuid")))
            })
            .transpose()
    }

    pub fn bigint(&self, name: &str) -> Result<Option<i64>, StoreError> {
        self.value(name)
            .map(|v| {
                v.as_bigint()
                    .ok_or_else(|| StoreError::Corrupt(format!("column {name} is not a bigint")))
            })
            .transpose()
    }

    pub fn text(&self, name: &str) -> Result<Option<&str>, StoreError> {
        self.value(name)
            .map(|v| {
                v.as_text()
                    .map(String::as_str)
                    .ok_or_else(|| StoreError::Corrupt(format!("column {name} is not text")))
            })
            .transpose()
    }

    pub fn timestamp(&self, name: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        self.value(name)
            .map(|v| {
                let ms = v.as_cql_timestamp().ok_or_else(|| {
                    StoreError::Corrupt(format!("column {name} is not a timestamp"))
                })?;
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms.0) * 1_000_000)
                    .map_err(corrupt)
            })
            .transpose()
    }
}

/// Creates the keyspace on vnodes where the server lets us choose, because Scylla 6.0–2025.3
/// refuse lightweight transactions on tablet keyspaces, their default. Servers that refuse the
/// `tablets` option (pre-tablets releases, clusters enforcing tablets) get the plain statement.
async fn create_keyspace(session: &Session, keyspace: &str, rf: u32) -> Result<(), StoreError> {
    let base = format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
         {{'class': 'NetworkTopologyStrategy', 'replication_factor': {rf}}}"
    );
    match session
        .query_unpaged(format!("{base} AND tablets = {{'enabled': false}}"), ())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if statement_refused(&e) => {
            tracing::info!(error = %e, "keyspace option `tablets` refused; creating with server defaults");
            session
                .query_unpaged(base, ())
                .await
                .map(|_| ())
                .map_err(unavailable)
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// Applies every migration not yet recorded. DDL is `IF NOT EXISTS` (or, for `ALTER TABLE … ADD`,
/// made idempotent by [`run_migration_statement`]), so a crash between a file and its record only
/// re-runs harmless statements; the driver awaits schema agreement after each.
async fn migrate(
    session: &Session,
    keyspace: &str,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    session
        .query_unpaged(MIGRATIONS_TABLE, ())
        .await
        .map_err(unavailable)?;
    let rows = session
        .query_unpaged("SELECT version FROM schema_migrations", ())
        .await
        .map_err(unavailable)?
        .into_rows_result()
        .map_err(corrupt)?;
    let applied = rows
        .rows::<(i32,)>()
        .map_err(corrupt)?
        .map(|row| row.map(|(v,)| v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    for &(version, name, cql) in migrations {
        if applied.contains(&version) {
            continue;
        }
        for statement in split_statements(cql) {
            run_migration_statement(session, keyspace, &statement)
                .await
                .map_err(|e| match e {
                    StoreError::Unavailable(e) => {
                        StoreError::Unavailable(format!("migration {name}: {e}"))
                    }
                    other => other,
                })?;
        }
        session
            .query_unpaged(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, OffsetDateTime::now_utc()),
            )
            .await
            .map_err(unavailable)?;
        tracing::info!(version, name, "applied ScyllaDB migration");
    }
    Ok(())
}

/// Runs one migration statement. Scylla has no `ALTER TABLE … ADD IF NOT EXISTS`, and adding a
/// column that exists is an error, so an `ALTER TABLE <table> ADD <column> <type>` (one column
/// per statement, see [`added_column`]) is skipped when `system_schema.columns` already lists the
/// column: after a crash between the file and its record, and when a concurrent first start added
/// it between our look and our `ALTER`.
async fn run_migration_statement(
    session: &Session,
    keyspace: &str,
    statement: &str,
) -> Result<(), StoreError> {
    let Some((table, column)) = added_column(statement) else {
        return session
            .query_unpaged(statement, ())
            .await
            .map(|_| ())
            .map_err(unavailable);
    };
    if column_exists(session, keyspace, &table, &column).await? {
        return Ok(());
    }
    match session.query_unpaged(statement, ()).await {
        Ok(_) => Ok(()),
        Err(e) if column_exists(session, keyspace, &table, &column).await? => {
            tracing::info!(error = %e, table, column, "column added concurrently");
            Ok(())
        }
        Err(e) => Err(unavailable(e)),
    }
}

async fn column_exists(
    session: &Session,
    keyspace: &str,
    table: &str,
    column: &str,
) -> Result<bool, StoreError> {
    let rows = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
            (keyspace, table, column),
        )
        .await
        .map_err(unavailable)?
        .into_rows_result()
        .map_err(corrupt)?;
    Ok(rows.rows_num() > 0)
}

/// `(table, column)` of a statement shaped `ALTER TABLE <table> ADD <column> <type>` (unqualified
/// table, unquoted names, one column), lower-cased as CQL folds unquoted names; `None` for
/// anything else, including the multi-column `ADD (…)` form, which the runner cannot make
/// idempotent and migrations therefore must not use.
pub fn added_column(statement: &str) -> Option<(String, String)> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let plain = |w: &str| {
        w.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match words.as_slice() {
        [alter, kw_table, table, add, column, _type, ..]
            if alter.eq_ignore_ascii_case("ALTER")
                && kw_table.eq_ignore_ascii_case("TABLE")
                && add.eq_ignore_ascii_case("ADD")
                && plain(table)
                && plain(column)
                && !column.eq_ignore_ascii_case("IF") =>
        {
            Some((table.to_ascii_lowercase(), column.to_ascii_lowercase()))
        }
        _ => None,
    }
}

/// Splits a migration file into statements: `--` comments dropped, then split on `;`.
pub fn split_statements(cql: &str) -> Vec<String> {
    let code: String = cql
        .lines()
        .map(|line| line.split_once("--").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Keyspace names are spliced into DDL and statements, so only plain identifiers are accepted;
/// lower-cased because CQL folds unquoted names and the driver's `USE` must agree.
pub fn keyspace_name(name: &str) -> Result<String, StoreError> {
    let valid = name.len() <= MAX_KEYSPACE_LEN
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(StoreError::Unavailable(format!(
            "invalid ScyllaDB keyspace name {name:?}: want a letter, then letters, digits or _, \
             at most {MAX_KEYSPACE_LEN} in all"
        )))
    }
}

/// Errors after which a conditional write may or may not have been committed.
fn outcome_unknown(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::RequestTimeout(_)
            | ExecutionError::LastAttemptError(
                RequestAttemptError::BrokenConnectionError(_)
                    | RequestAttemptError::DbError(DbError::WriteTimeout { .. }, _)
            )
    )
}

/// The server understood the request and refused it (as opposed to being unreachable).
fn statement_refused(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::SyntaxError | DbError::Invalid | DbError::ConfigError,
            _
        ))
    )
}

pub fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}
