//! Events, aliases and traits on a ClickHouse cluster, read back as person-ordered batches for
//! the query seam (`core::store::source`): the first part of the scale-out backend.
//!
//! Events go straight to their person's shard server (`events_local`), the other writes through
//! the `Distributed` tables with `insert_distributed_sync=1`, so a write that returns has its
//! rows on their shards (read-your-writes). Reads ask every shard server at once for its own
//! rows an analysis needs (event names, time range), with each anonymous id's events credited
//! to the user it was last aliased to (the alias table read whole, since an anonymous id and its
//! user may sit on different shards), ordered by (person, time, arrival); Sextant merges the
//! shards' streams by person (`ShardRows`) into a `PersonBatch`, together with each user's
//! traits, folded from their updates in arrival order with the embedded engine's own `Traits`.
//! Event aggregates and time spans go through the first server's `Distributed` table.
//!
//! Every write carries a `seq`: one counter per project that only grows, shared by events,
//! aliases, trait updates and deletions, since reads compare them (ties in time, the latest
//! alias, what a deletion covered). The caller owns it; the tests number writes in order.
//!
//! The client is the `clickhouse` crate over HTTP with RowBinary. Validation is off (the
//! 18.16 servers CI runs lack `RowBinaryWithNamesAndTypes`), so the row structs below must
//! match the column order of `schema.rs` exactly; fetches set `wait_end_of_query=1`, so an error
//! part-way through a result is an error, not a truncated answer.

pub mod external;
pub mod schema;
pub mod sql;
pub mod storage;

use std::collections::HashMap;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use crate::core::model::{Event, Micros, UserUpdate, Value};
use crate::core::store::person_batch::PersonBatch;
use crate::core::store::remote::{
    AggregateRequest, Aggregated, CohortCountRequest, CohortCounts, EventStats, PartialCell, PersonCells, PersonCounts,
};
use crate::core::store::table::ValueRef;
use crate::core::store::traits::Traits;
use crate::error::{Error, Result};

/// Where the cluster is and what to call things there.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    /// One HTTP URL per shard server; the first takes the distributed aggregates and writes.
    pub urls: Vec<String>,
    pub database: String,
    /// The `remote_servers` cluster the `Distributed` tables spread over.
    pub cluster: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// See `external::http_client`.
    pub timeout: std::time::Duration,
}

/// A connected cluster with the current schema.
#[derive(Clone)]
pub struct ClickHouse {
    /// One client per shard server (DDL runs on each), bound to the database.
    servers: Vec<Client>,
    /// The same servers, for statements that take external data (id lookups).
    external: Vec<external::ExternalData>,
    database: String,
}

pub use crate::core::store::remote::Fetch;

#[derive(Row, Serialize)]
struct EventRow<'a> {
    project: &'a str,
    person: &'a str,
    is_user: u8,
    anonymous_id: &'a str,
    time: i64,
    seq: u64,
    name: &'a str,
    event_id: &'a str,
    prop_keys: Vec<&'a str>,
    prop_kinds: Vec<u8>,
    prop_numbers: Vec<f64>,
    prop_strings: Vec<&'a str>,
}

#[derive(Row, Serialize)]
struct EventIdRow<'a> {
    project: &'a str,
    event_id: &'a str,
    seq: u64,
}

#[derive(Row, Serialize)]
struct DeletedUserRow<'a> {
    project: &'a str,
    user_id: &'a str,
    seq: u64,
}

#[derive(Row, Serialize)]
struct DeletedAnonymousRow<'a> {
    project: &'a str,
    anonymous_id: &'a str,
    seq: u64,
}

#[derive(Row, Serialize)]
struct AliasRow<'a> {
    project: &'a str,
    anonymous_id: &'a str,
    user_id: &'a str,
    seq: u64,
}

#[derive(Row, Serialize)]
struct UserUpdateRow<'a> {
    project: &'a str,
    user_id: &'a str,
    seq: u64,
    update_json: String,
}

#[derive(Row, Serialize)]
struct MetaRowRef<'a> {
    key: &'a str,
    version: u64,
    deleted: u8,
    #[serde(with = "serde_bytes")]
    value: &'a [u8],
}

#[derive(Row, Deserialize)]
struct MetaRow {
    deleted: u8,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
}

#[derive(Row, Deserialize)]
struct KeyedMetaRow {
    key: String,
    deleted: u8,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
}

#[derive(Row, Serialize)]
struct RecordRow<'a> {
    seq: u64,
    #[serde(with = "serde_bytes")]
    value: &'a [u8],
}

#[derive(Row, Deserialize)]
struct StoredRecord {
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
}

/// A record as one shard server holds it, with a hash of its value (`sql::rewrite_records`).
#[derive(Row, Deserialize)]
pub struct LocalRecord {
    pub seq: u64,
    pub hash: u64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// An event as a read returns it: the person it counts for, and whether that is a user.
#[derive(Row, Deserialize)]
struct FetchedEvent {
    owner: String,
    owner_is_user: u8,
    time: i64,
    seq: u64,
    name: String,
    event_id: String,
    prop_keys: Vec<String>,
    prop_kinds: Vec<u8>,
    prop_numbers: Vec<f64>,
    prop_strings: Vec<String>,
}

/// `FetchedEvent` with the user id (when `is_user`) or anonymous id it was sent with; RowBinary
/// reads the nested struct's columns first, in order.
#[derive(Row, Deserialize)]
struct FetchedSent {
    event: FetchedEvent,
    sender: String,
    is_user: u8,
    sender_anonymous: String,
}

/// A fetched event row, as `ShardRows` and `drop_later_copies` see it.
trait FetchedRow: clickhouse::RowOwned + clickhouse::RowRead + Send {
    fn event(&self) -> &FetchedEvent;
}

impl FetchedRow for FetchedEvent {
    fn event(&self) -> &FetchedEvent {
        self
    }
}

impl FetchedRow for FetchedSent {
    fn event(&self) -> &FetchedEvent {
        &self.event
    }
}

/// The shards' answers to one read, each in person order, merged into one person order: a
/// person's rows come from one shard but for anonymous ids aliased to them that sit on another
/// (the `Distributed` table's merge, done here so the shards answer at once and no server
/// merges for the others).
struct ShardRows<R> {
    cursors: Vec<clickhouse::query::RowCursor<R>>,
    /// Each cursor's next row; `None` once it is done.
    heads: Vec<Option<R>>,
}

impl<R: FetchedRow> ShardRows<R> {
    /// The next person (id, is a user) and all their rows in (time, seq) order, in `rows`
    /// (cleared first); `None` when every shard is done.
    async fn next_person(&mut self, rows: &mut Vec<R>) -> clickhouse::error::Result<Option<(String, bool)>> {
        rows.clear();
        let person = |row: &R| (row.event().owner.clone(), row.event().owner_is_user);
        let Some((owner, is_user)) = self.heads.iter().flatten().map(person).min() else {
            return Ok(None);
        };
        let mut from_shards = 0;
        for (cursor, head) in self.cursors.iter_mut().zip(self.heads.iter_mut()) {
            let mut took = false;
            while let Some(row) = head.take_if(|row| row.event().owner == owner && row.event().owner_is_user == is_user)
            {
                rows.push(row);
                *head = cursor.next().await?;
                took = true;
            }
            from_shards += usize::from(took);
        }
        if from_shards > 1 {
            rows.sort_by_key(|row| (row.event().time, row.event().seq));
        }
        Ok(Some((owner, is_user == 1)))
    }
}

#[derive(Row, Deserialize)]
struct FetchedUpdate {
    user_id: String,
    update_json: String,
}

use sql::{KIND_BOOL, KIND_NULL, KIND_NUMBER, KIND_STRING, KIND_TIME};

/// A person's counts of a cohort's conditions, as `sql::cohort_counts` returns them.
#[derive(Row, Deserialize)]
struct FetchedCounts {
    owner: String,
    owner_is_user: u8,
    counts: Vec<u64>,
}

/// A person's partial cells of an event aggregate, as `sql::aggregate` returns them.
#[derive(Row, Deserialize)]
struct FetchedCells {
    owner: String,
    owner_is_user: u8,
    buckets: Vec<u32>,
    group_kinds: Vec<u8>,
    group_numbers: Vec<f64>,
    group_strings: Vec<String>,
    counts: Vec<u64>,
    sums: Vec<f64>,
    mins: Vec<f64>,
    maxs: Vec<f64>,
}

impl ClickHouse {
    /// Connects to every server, checks that each knows the cluster, and brings the schema up
    /// to date. An unreachable server is UNAVAILABLE; a bad name or a missing cluster is a
    /// configuration error naming it.
    pub async fn connect(config: &ClickHouseConfig) -> Result<ClickHouse> {
        if config.urls.is_empty() {
            return Err(Error::invalid("clickhouse_url", "at least one URL is required"));
        }
        for (field, name) in [("clickhouse_database", &config.database), ("clickhouse_cluster", &config.cluster)] {
            if !schema::is_identifier(name) {
                return Err(Error::invalid(
                    field,
                    format!("{name:?} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
        }
        let (mut servers, mut external) = (Vec::new(), Vec::new());
        for url in &config.urls {
            let mut client = Client::with_http_client(external::http_client(config.timeout))
                .with_url(url.as_str())
                .with_validation(false);
            if let Some(user) = &config.user {
                client = client.with_user(user.as_str());
            }
            if let Some(password) = &config.password {
                client = client.with_password(password.as_str());
            }
            let shards: u64 =
                sql::cluster_shards(&client, &config.cluster).fetch_one().await.map_err(|e| backend_error(url, &e))?;
            if shards == 0 {
                return Err(Error::FailedPrecondition(format!(
                    "clickhouse_cluster: {url} has no cluster {:?} in its remote_servers",
                    config.cluster
                )));
            }
            // Events are written straight to their shard's server (`person_shard`).
            if shards != config.urls.len() as u64 {
                return Err(Error::FailedPrecondition(format!(
                    "clickhouse_url: {} URLs for cluster {:?} of {shards} shards: give one URL per shard",
                    config.urls.len(),
                    config.cluster
                )));
            }
            sql::create_database(&client, &config.database).execute().await.map_err(|e| backend_error(url, &e))?;
            servers.push(client.with_database(config.database.as_str()));
            let (user, password) = (config.user.as_deref(), config.password.as_deref());
            external.push(external::ExternalData::new(url, &config.database, user, password, config.timeout));
        }
        let store = ClickHouse { servers, external, database: config.database.clone() };
        for (url, server) in config.urls.iter().zip(&store.servers) {
            store.migrate(url, server, &config.cluster).await?;
        }
        Ok(store)
    }

    async fn migrate(&self, url: &str, server: &Client, cluster: &str) -> Result<()> {
        let ddl = |statement: &str| sql::ddl(server, statement, &self.database, cluster);
        ddl(schema::VERSIONS_TABLE).execute().await.map_err(|e| backend_error(url, &e))?;
        let applied: u32 = sql::applied_version(server).fetch_one().await.map_err(|e| backend_error(url, &e))?;
        for (version, statements) in schema::MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
            for statement in *statements {
                ddl(statement).execute().await.map_err(|e| backend_error(url, &e))?;
            }
            sql::record_version(server, *version).execute().await.map_err(|e| backend_error(url, &e))?;
            tracing::info!(url, version, "clickhouse schema migrated");
        }
        Ok(())
    }

    /// The server that takes distributed reads and writes.
    fn front(&self) -> &Client {
        &self.servers[0]
    }

    /// Stores the events whose ids are new (to the project and to the batch, the first of a
    /// repeated id wins), numbered from `first_seq` in arrival order, and says which were new.
    /// Returns when every stored row is on its shard: the ack point.
    ///
    /// Exactly once: a batch's ids are looked up in `event_ids` (by primary key, on the shards
    /// that own them) and only unknown ones are stored, events first and then their ids, so a
    /// crash between the two leaves an event that a resend stores again rather than one that
    /// is lost. Such a second copy, or one from two nodes storing the same id at once, is
    /// dropped when read (`person_batch` keeps the earliest copy of an id).
    pub async fn store_events(&self, project: &str, events: &[Event], first_seq: u64) -> Result<Vec<bool>> {
        let mut new = vec![true; events.len()];
        let mut in_batch = std::collections::HashSet::new();
        for (i, event) in events.iter().enumerate() {
            new[i] = in_batch.insert(event.event_id.as_str());
        }
        let ids: Vec<&str> = in_batch.into_iter().collect();
        let known = self.stored_ids(project, &ids).await?;
        for (i, event) in events.iter().enumerate() {
            new[i] = new[i] && !known.contains(&event.event_id);
        }
        let stored: Vec<(u64, &Event)> =
            events.iter().enumerate().filter(|(i, _)| new[*i]).map(|(i, e)| (first_seq + i as u64, e)).collect();
        if stored.is_empty() {
            return Ok(new);
        }
        self.insert_event_rows(project, &stored).await?;
        // Each id on the shard server that owns it (see `id_shard`), the shards at once.
        let mut by_shard: Vec<Vec<EventIdRow<'_>>> = self.servers.iter().map(|_| Vec::new()).collect();
        for &(seq, event) in &stored {
            by_shard[self.id_shard(project, &event.event_id)].push(EventIdRow {
                project,
                event_id: &event.event_id,
                seq,
            });
        }
        let inserts = by_shard.into_iter().enumerate().filter(|(_, rows)| !rows.is_empty());
        futures::future::try_join_all(
            inserts.map(|(shard, rows)| self.insert_local::<EventIdRow<'_>>(shard, "event_ids_local", rows)),
        )
        .await?;
        Ok(new)
    }

    /// Which of `ids` the project has stored: each looked up by primary key on the shard
    /// server that owns it, the shards at once, one statement each (the ids as external data).
    pub async fn stored_ids(&self, project: &str, ids: &[&str]) -> Result<std::collections::HashSet<String>> {
        let mut by_shard: Vec<Vec<&str>> = self.servers.iter().map(|_| Vec::new()).collect();
        for id in ids {
            by_shard[self.id_shard(project, id)].push(id);
        }
        let lookups = by_shard.iter().enumerate().filter(|(_, ids)| !ids.is_empty()).map(|(shard, ids)| async move {
            let statement = sql::known_ids(&self.servers[shard], project).sql_display().to_string();
            self.external[shard].strings(&statement, ids).await.map_err(|e| self.failed(&e))
        });
        Ok(futures::future::try_join_all(lookups).await?.into_iter().flatten().collect())
    }

    /// Writes event rows as given (each with its seq), without looking at their ids: each on
    /// its person's shard server (see `person_shard`), the shards at once.
    async fn insert_event_rows(&self, project: &str, events: &[(u64, &Event)]) -> Result<()> {
        let mut by_shard: Vec<Vec<EventRow<'_>>> = self.servers.iter().map(|_| Vec::new()).collect();
        for &(seq, event) in events {
            let row = event_row(project, seq, event);
            by_shard[self.person_shard(row.person)].push(row);
        }
        let inserts = by_shard.into_iter().enumerate().filter(|(_, rows)| !rows.is_empty());
        futures::future::try_join_all(
            inserts.map(|(shard, rows)| self.insert_local::<EventRow<'_>>(shard, "events_local", rows)),
        )
        .await?;
        Ok(())
    }

    /// Inserts rows into one shard server's local table: when it returns they are in that
    /// server's files, with no `Distributed` table forwarding them (the ack point).
    async fn insert_local<T>(&self, shard: usize, table: &str, rows: Vec<T::Value<'_>>) -> Result<()>
    where
        T: Row,
        for<'r> T::Value<'r>: Serialize,
    {
        let mut insert = self.servers[shard].insert::<T>(table).await.map_err(|e| self.failed(&e))?;
        for row in &rows {
            insert.write(row).await.map_err(|e| self.failed(&e))?;
        }
        insert.end().await.map_err(|e| self.failed(&e))
    }

    /// The shard server a person's events live on: a stable hash (xxh3) of the person, so a
    /// person's events sit on one shard whichever node writes them.
    fn person_shard(&self, person: &str) -> usize {
        (xxhash_rust::xxh3::xxh3_64(person.as_bytes()) % self.servers.len() as u64) as usize
    }

    /// The shard server that keeps an event id (for the write-time lookup).
    fn id_shard(&self, project: &str, event_id: &str) -> usize {
        (crate::core::store::record::event_key(project, event_id) % self.servers.len() as u128) as usize
    }

    /// Stores aliases (anonymous id, user id) in order, numbered from `first_seq`.
    pub async fn insert_aliases(&self, project: &str, pairs: &[(String, String)], first_seq: u64) -> Result<()> {
        let numbered: Vec<_> = pairs.iter().cloned().zip(first_seq..).collect();
        self.write_aliases(project, &numbered).await
    }

    /// Aliases all at `seq` (DeleteUser's unlinking: an empty user id).
    async fn insert_aliases_at(&self, project: &str, pairs: &[(String, String)], seq: u64) -> Result<()> {
        let numbered: Vec<_> = pairs.iter().cloned().zip(std::iter::repeat(seq)).collect();
        self.write_aliases(project, &numbered).await
    }

    /// Stores aliases ((anonymous id, user id), write number) in one insert.
    pub async fn write_aliases(&self, project: &str, rows: &[((String, String), u64)]) -> Result<()> {
        let mut insert = self.insert::<AliasRow<'_>>("aliases").await?;
        for ((anonymous_id, user_id), seq) in rows {
            let row = AliasRow { project, anonymous_id, user_id, seq: *seq };
            insert.write(&row).await.map_err(|e| self.failed(&e))?;
        }
        insert.end().await.map_err(|e| self.failed(&e))
    }

    /// Stores trait updates in order, numbered from `first_seq`.
    pub async fn insert_user_updates(&self, project: &str, updates: &[UserUpdate], first_seq: u64) -> Result<()> {
        let numbered: Vec<_> = updates.iter().cloned().zip(first_seq..).collect();
        self.write_user_updates(project, &numbered).await
    }

    /// Stores trait updates (each with its write number) in one insert.
    pub async fn write_user_updates(&self, project: &str, updates: &[(UserUpdate, u64)]) -> Result<()> {
        let mut insert = self.insert::<UserUpdateRow<'_>>("user_updates").await?;
        for (update, seq) in updates {
            let update_json = serde_json::to_string(update).map_err(|e| Error::Internal(e.to_string()))?;
            let row = UserUpdateRow { project, user_id: &update.user_id, seq: *seq, update_json };
            insert.write(&row).await.map_err(|e| self.failed(&e))?;
        }
        insert.end().await.map_err(|e| self.failed(&e))
    }

    /// DeleteUser at arrival position `seq`: from now on no read sees the user's events from
    /// before it (nor those of anonymous ids credited to them), their traits or aliases; a
    /// tombstone does that at once, then each shard is asked to remove the rows (ClickHouse
    /// mutations, which run in the background). Event ids stay known, so a resent event of
    /// the user is still a duplicate.
    /// Returns the anonymous ids it unlinked (those credited to the user then).
    pub async fn delete_user(&self, project: &str, user_id: &str, seq: u64) -> Result<Vec<String>> {
        let anonymous = self.anonymous_ids(project, user_id).await?;
        // The anonymous ids first: a deletion cut short here hides their events and unlinks
        // them; the user's own tombstone (last) completes it, and a retry does it all again.
        if !anonymous.is_empty() {
            let mut insert = self.insert::<DeletedAnonymousRow<'_>>("deleted_anonymous").await?;
            for anonymous_id in &anonymous {
                let row = DeletedAnonymousRow { project, anonymous_id, seq };
                insert.write(&row).await.map_err(|e| self.failed(&e))?;
            }
            insert.end().await.map_err(|e| self.failed(&e))?;
            let unlinked: Vec<(String, String)> = anonymous.iter().map(|a| (a.clone(), String::new())).collect();
            self.insert_aliases_at(project, &unlinked, seq).await?;
        }
        let mut insert = self.insert::<DeletedUserRow<'_>>("deleted_users").await?;
        insert.write(&DeletedUserRow { project, user_id, seq }).await.map_err(|e| self.failed(&e))?;
        insert.end().await.map_err(|e| self.failed(&e))?;
        let ids: Vec<&str> = anonymous.iter().map(String::as_str).collect();
        for server in &self.servers {
            for mutation in sql::purge_user(server, project, user_id, &ids, seq) {
                mutation.execute().await.map_err(|e| self.failed(&e))?;
            }
        }
        Ok(anonymous)
    }

    /// Waits until every shard server has finished its mutations (the rows DeleteUser removes
    /// are then gone from its files), up to `timeout`; says whether they finished.
    pub async fn mutations_done(&self, timeout: std::time::Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        for server in &self.servers {
            loop {
                let pending: u64 =
                    sql::pending_mutations(server, &self.database).fetch_one().await.map_err(|e| self.failed(&e))?;
                if pending == 0 {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Ok(true)
    }

    async fn insert<T: Row>(&self, table: &str) -> Result<clickhouse::insert::Insert<T>> {
        let insert = self.front().insert::<T>(table).await.map_err(|e| self.failed(&e))?;
        Ok(insert.with_setting("insert_distributed_sync", "1"))
    }

    /// The events `fetch` asks for and every user's traits, in person order: what the
    /// analyses read through the query seam.
    pub async fn person_batch(&self, project: &str, fetch: &Fetch) -> Result<PersonBatch> {
        // The shards' reads and the traits at once.
        let traits = async {
            match fetch.traits {
                true => self.traits(project, fetch.user.as_deref()).await,
                false => Ok(Vec::new()),
            }
        };
        let (mut shards, users) = futures::try_join!(self.shard_rows::<FetchedEvent>(project, fetch, false), traits)?;
        let mut users = users.into_iter().peekable();
        let mut batch = PersonBatch::default();
        let mut rows: Vec<FetchedEvent> = Vec::new();
        while let Some((id, is_user)) = shards.next_person(&mut rows).await.map_err(|e| self.failed(&e))? {
            // Users with traits who sort before this person come first.
            while users.peek().is_some_and(|(user, _)| (user.as_str(), true) < (id.as_str(), is_user)) {
                let (user, traits) = users.next().unwrap_or_default();
                batch.add_person(&user, true, traits)?;
            }
            let traits = match users.peek() {
                Some((user, _)) if is_user && *user == id => users.next().map(|u| u.1).unwrap_or_default(),
                _ => Vec::new(),
            };
            batch.add_person(&id, is_user, traits)?;
            drop_later_copies(&mut rows);
            for row in rows.drain(..) {
                batch.add_row(&row.name, &row.event_id, row.time, row.properties()?)?;
            }
        }
        for (id, traits) in users {
            batch.add_person(&id, true, traits)?;
        }
        Ok(batch)
    }

    /// Sends the read of `fetch`'s events to every shard server at once and returns once each
    /// has answered (`wait_end_of_query`: a server's error comes before its first row).
    async fn shard_rows<R: FetchedRow>(&self, project: &str, fetch: &Fetch, as_sent: bool) -> Result<ShardRows<R>> {
        let opened = self.servers.iter().map(|server| async move {
            let query = match as_sent {
                true => sql::events_as_sent(server, project, fetch, sql::Scope::Shard),
                false => sql::events(server, project, fetch, sql::Scope::Shard),
            };
            let mut cursor = query.fetch::<R>().map_err(|e| self.failed(&e))?;
            let head = cursor.next().await.map_err(|e| self.failed(&e))?;
            Ok::<_, Error>((cursor, head))
        });
        let (cursors, heads) = futures::future::try_join_all(opened).await?.into_iter().unzip();
        Ok(ShardRows { cursors, heads })
    }

    /// The earliest and latest time of the events `fetch` asks for, if any.
    pub async fn time_span(&self, project: &str, fetch: &Fetch) -> Result<Option<(Micros, Micros)>> {
        let (first, last, events) = sql::time_span(self.front(), project, fetch)
            .fetch_one::<(i64, i64, u64)>()
            .await
            .map_err(|e| self.failed(&e))?;
        Ok((events > 0).then_some((first, last)))
    }

    /// Per person with any of `fetch`'s events, the time of their first (`sql::first_seen`).
    pub async fn first_seen(&self, project: &str, fetch: &Fetch) -> Result<Vec<(String, bool, Micros)>> {
        let query = sql::first_seen(self.front(), project, fetch);
        let rows: Vec<(String, u8, i64)> = query.fetch_all().await.map_err(|e| self.failed(&e))?;
        Ok(rows.into_iter().map(|(id, is_user, time)| (id, is_user == 1, time)).collect())
    }

    /// The numbers of `fetch`'s events GetProjectStats gives, without reading them: counts
    /// and times per name, and the users with events or traits.
    pub async fn event_stats(&self, project: &str, fetch: &Fetch) -> Result<EventStats> {
        let counts = async {
            let query = sql::name_counts(self.front(), project, fetch);
            query.fetch_all::<(String, u64, i64, i64)>().await.map_err(|e| self.failed(&e))
        };
        let owners = async {
            let query = sql::users_with_events(self.front(), project, fetch);
            query.fetch_all::<String>().await.map_err(|e| self.failed(&e))
        };
        let (counts, owners, traits) = futures::try_join!(counts, owners, self.traits(project, None))?;
        let mut users: std::collections::HashSet<String> = owners.into_iter().collect();
        users.extend(traits.into_iter().filter(|(_, traits)| !traits.is_empty()).map(|(user, _)| user));
        let span = counts.iter().map(|&(_, _, first, last)| (first, last)).reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
        Ok(EventStats {
            by_name: counts.into_iter().map(|(name, n, _, _)| (name, n)).collect(),
            span,
            users: users.len() as u64,
        })
    }

    /// An event aggregate's partial cells per person, and every user's traits when asked.
    pub async fn aggregate(&self, project: &str, request: &AggregateRequest) -> Result<Aggregated> {
        let started = std::time::Instant::now();
        let query = sql::aggregate(self.front(), project, request);
        tracing::trace!(sql = %query.sql_display(), "aggregate");
        let rows: Vec<FetchedCells> = query.fetch_all().await.map_err(|e| self.failed(&e))?;
        let fetched = started.elapsed();
        let mut people = Vec::with_capacity(rows.len());
        for row in rows {
            let n = row.buckets.len();
            // Columns not asked for come back empty.
            let lengths = [row.group_kinds.len(), row.group_numbers.len(), row.group_strings.len(), row.counts.len()];
            let values = [row.sums.len(), row.mins.len(), row.maxs.len()];
            if lengths.iter().chain(&values).any(|&len| len != n && len != 0) {
                return Err(Error::Storage(format!("clickhouse: person {:?}: cells of unequal length", row.owner)));
            }
            let mut strings = row.group_strings.into_iter();
            let cells = (0..n)
                .map(|i| {
                    let group = match row.group_kinds.get(i) {
                        Some(&kind) => {
                            let number = row.group_numbers.get(i).copied().unwrap_or(0.0);
                            property_value(kind, number, &strings.next().unwrap_or_default())?
                        }
                        None => Value::Null,
                    };
                    Ok(PartialCell {
                        bucket: row.buckets[i],
                        group,
                        count: row.counts.get(i).copied().unwrap_or(0),
                        sum: row.sums.get(i).copied().unwrap_or(0.0),
                        min: row.mins.get(i).copied().unwrap_or(f64::INFINITY),
                        max: row.maxs.get(i).copied().unwrap_or(f64::NEG_INFINITY),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            people.push(PersonCells { id: row.owner, is_user: row.owner_is_user == 1, cells });
        }
        let traits = if request.with_traits { self.traits(project, None).await? } else { Vec::new() };
        tracing::debug!(
            project,
            event = %request.name,
            people = people.len(),
            fetched_ms = fetched.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "event aggregate computed in clickhouse"
        );
        Ok(Aggregated { people, traits })
    }

    /// A cohort's conditions counted per person, the people with any event when asked, and
    /// every user's traits when asked.
    pub async fn cohort_counts(&self, project: &str, request: &CohortCountRequest) -> Result<CohortCounts> {
        let started = std::time::Instant::now();
        let counted = async {
            if request.conditions.is_empty() {
                return Ok(Vec::new());
            }
            let query = sql::cohort_counts(self.front(), project, request);
            tracing::trace!(sql = %query.sql_display(), "cohort counts");
            query.fetch_all::<FetchedCounts>().await.map_err(|e| self.failed(&e))
        };
        let everyone = async {
            if !request.everyone {
                return Ok(Vec::new());
            }
            let fetch = Fetch { from: request.not_before, ..Fetch::everything() };
            let query = sql::people_with_events(self.front(), project, &fetch);
            query.fetch_all::<(String, u8)>().await.map_err(|e| self.failed(&e))
        };
        let traits = async { if request.with_traits { self.traits(project, None).await } else { Ok(Vec::new()) } };
        let (counted, everyone, traits) = futures::try_join!(counted, everyone, traits)?;
        let mut people = Vec::with_capacity(counted.len().max(everyone.len()));
        let mut seen = std::collections::HashSet::with_capacity(counted.len());
        for FetchedCounts { owner: id, owner_is_user: is_user, counts } in counted {
            if counts.len() != request.conditions.len() {
                return Err(Error::Storage(format!("clickhouse: person {id:?}: {} counts", counts.len())));
            }
            if request.everyone {
                seen.insert((id.clone(), is_user));
            }
            people.push(PersonCounts { id, is_user: is_user == 1, counts });
        }
        for (id, is_user) in everyone {
            if !seen.contains(&(id.clone(), is_user)) {
                people.push(PersonCounts { id, is_user: is_user == 1, counts: Vec::new() });
            }
        }
        tracing::debug!(
            project,
            conditions = request.conditions.len(),
            people = people.len(),
            total_ms = started.elapsed().as_millis() as u64,
            "cohort counted in clickhouse"
        );
        Ok(CohortCounts { people, traits })
    }

    /// The latest value of a definition; `None` when it was never stored or was deleted.
    pub async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let rows: Vec<MetaRow> = sql::meta_get(self.front(), key).fetch_all().await.map_err(|e| self.failed(&e))?;
        Ok(rows.into_iter().next().filter(|row| row.deleted == 0).map(|row| row.value))
    }

    /// Stores a definition's value (or its deletion) as version `version`.
    pub async fn meta_put(&self, key: &str, version: u64, value: Option<&[u8]>) -> Result<()> {
        let mut insert = self.insert::<MetaRowRef<'_>>("meta").await?;
        let row = MetaRowRef { key, version, deleted: u8::from(value.is_none()), value: value.unwrap_or_default() };
        insert.write(&row).await.map_err(|e| self.failed(&e))?;
        insert.end().await.map_err(|e| self.failed(&e))
    }

    /// Every live definition whose key starts with `prefix`, in key order.
    pub async fn meta_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let rows: Vec<KeyedMetaRow> =
            sql::meta_scan(self.front(), prefix).fetch_all().await.map_err(|e| self.failed(&e))?;
        Ok(rows.into_iter().filter(|row| row.deleted == 0).map(|row| (row.key, row.value)).collect())
    }

    /// Stores records numbered from `first_seq`.
    pub async fn append_records(&self, values: &[Vec<u8>], first_seq: u64) -> Result<()> {
        let mut insert = self.insert::<RecordRow<'_>>("records").await?;
        for (i, value) in values.iter().enumerate() {
            insert.write(&RecordRow { seq: first_seq + i as u64, value }).await.map_err(|e| self.failed(&e))?;
        }
        insert.end().await.map_err(|e| self.failed(&e))
    }

    /// Every stored record in order.
    pub async fn records(&self) -> Result<Vec<Vec<u8>>> {
        let rows: Vec<StoredRecord> = sql::records(self.front()).fetch_all().await.map_err(|e| self.failed(&e))?;
        Ok(rows.into_iter().map(|row| row.value).collect())
    }

    /// Every shard server's records, each with the server's index, in arrival order.
    pub async fn local_records(&self) -> Result<Vec<(usize, LocalRecord)>> {
        let reads = self.servers.iter().map(|server| sql::local_records(server).fetch_all::<LocalRecord>());
        let shards = futures::future::try_join_all(reads).await.map_err(|e| self.failed(&e))?;
        let mut records: Vec<(usize, LocalRecord)> =
            shards.into_iter().enumerate().flat_map(|(i, rows)| rows.into_iter().map(move |r| (i, r))).collect();
        records.sort_by_key(|(_, record)| record.seq);
        Ok(records)
    }

    /// Replaces records' values in place: (server index, seq, hash of the value read, new
    /// value). ClickHouse applies them in the background (`mutations_done` waits).
    pub async fn rewrite_records(&self, rewrites: &[(usize, u64, u64, Vec<u8>)]) -> Result<()> {
        // A statement carries its values: up to 2 MiB of them (twice that as hex) each.
        const STATEMENT_BYTES: usize = 2 << 20;
        for (i, server) in self.servers.iter().enumerate() {
            let mine: Vec<(u64, u64, &[u8])> = rewrites
                .iter()
                .filter(|r| r.0 == i)
                .map(|(_, seq, hash, value)| (*seq, *hash, value.as_slice()))
                .collect();
            let mut start = 0;
            while start < mine.len() {
                let mut end = start + 1;
                let mut bytes = mine[start].2.len();
                while end < mine.len() && bytes + mine[end].2.len() <= STATEMENT_BYTES {
                    bytes += mine[end].2.len();
                    end += 1;
                }
                sql::rewrite_records(server, &mine[start..end]).execute().await.map_err(|e| self.failed(&e))?;
                start = end;
            }
        }
        Ok(())
    }

    /// See `sql::generation`.
    pub async fn generation(&self) -> Result<u64> {
        sql::generation(self.front()).fetch_one().await.map_err(|e| self.failed(&e))
    }

    /// Bytes of the database in every server's files.
    pub async fn bytes_on_disk(&self) -> Result<u64> {
        let mut total = 0u64;
        for server in &self.servers {
            let bytes: u64 =
                sql::bytes_on_disk(server, &self.database).fetch_one().await.map_err(|e| self.failed(&e))?;
            total += bytes;
        }
        Ok(total)
    }

    /// Asks every shard server to remove a project's events from before `cutoff` (mutations,
    /// run in the background; reads leave such events out meanwhile by their range).
    pub async fn expire(&self, project: &str, cutoff: Micros) -> Result<()> {
        for server in &self.servers {
            sql::expire(server, project, cutoff).execute().await.map_err(|e| self.failed(&e))?;
        }
        Ok(())
    }

    /// The events `fetch` asks for as they were sent (user and anonymous ids included), in
    /// person order, each once.
    pub async fn events_as_sent(&self, project: &str, fetch: &Fetch) -> Result<Vec<(u64, Event)>> {
        let mut shards = self.shard_rows::<FetchedSent>(project, fetch, true).await?;
        let mut events = Vec::new();
        let mut person: Vec<FetchedSent> = Vec::new();
        while shards.next_person(&mut person).await.map_err(|e| self.failed(&e))?.is_some() {
            drop_later_copies(&mut person);
            for sent in person.drain(..) {
                let seq = sent.event.seq;
                let user_id = if sent.is_user == 1 { sent.sender } else { String::new() };
                let event = Event { user_id, anonymous_id: sent.sender_anonymous, ..row_event(sent.event)? };
                events.push((seq, event));
            }
        }
        Ok(events)
    }

    /// The anonymous ids credited to `user_id` now.
    pub async fn anonymous_ids(&self, project: &str, user_id: &str) -> Result<Vec<String>> {
        sql::aliased_to(self.front(), project, user_id).fetch_all().await.map_err(|e| self.failed(&e))
    }

    /// Every user's traits now, by user id in byte order.
    async fn traits(&self, project: &str, user: Option<&str>) -> Result<Vec<(String, Vec<(String, Value)>)>> {
        let mut cursor =
            sql::trait_updates(self.front(), project, user).fetch::<FetchedUpdate>().map_err(|e| self.failed(&e))?;
        let mut users: Vec<(String, Vec<(String, Value)>)> = Vec::new();
        // One user at a time, folded with the embedded engine's own update rules.
        let mut folding = Traits::default();
        while let Some(row) = cursor.next().await.map_err(|e| self.failed(&e))? {
            if users.last().is_none_or(|(id, _)| *id != row.user_id) {
                finish(&mut users, &folding);
                folding = Traits::default();
                users.push((row.user_id.clone(), Vec::new()));
            }
            let update: UserUpdate = serde_json::from_str(&row.update_json)
                .map_err(|e| Error::Storage(format!("clickhouse: user {:?}: bad update: {e}", row.user_id)))?;
            folding.update(0, &update);
        }
        finish(&mut users, &folding);
        Ok(users)
    }

    fn failed(&self, error: &clickhouse::error::Error) -> Error {
        backend_error(&format!("clickhouse database {}", self.database), error)
    }
}

/// An event as its row.
fn event_row<'a>(project: &'a str, seq: u64, event: &'a Event) -> EventRow<'a> {
    let is_user = !event.user_id.is_empty();
    let mut row = EventRow {
        project,
        person: if is_user { &event.user_id } else { &event.anonymous_id },
        is_user: u8::from(is_user),
        anonymous_id: &event.anonymous_id,
        time: event.timestamp,
        seq,
        name: &event.name,
        event_id: &event.event_id,
        prop_keys: Vec::with_capacity(event.properties.len()),
        prop_kinds: Vec::with_capacity(event.properties.len()),
        prop_numbers: Vec::with_capacity(event.properties.len()),
        prop_strings: Vec::with_capacity(event.properties.len()),
    };
    for (key, value) in &event.properties {
        let (kind, number, string) = sql::stored(value);
        row.prop_keys.push(key);
        row.prop_kinds.push(kind);
        row.prop_numbers.push(number);
        row.prop_strings.push(string);
    }
    row
}

/// Drops the later copies (by seq) of a repeated id from one person's rows, keeping the order.
fn drop_later_copies<R: FetchedRow>(rows: &mut Vec<R>) {
    fn id<R: FetchedRow>(row: &R) -> &str {
        &row.event().event_id
    }
    // Copies are rare and a person's rows few: a check without allocating comes first.
    let repeated = if rows.len() <= 32 {
        rows.iter().enumerate().any(|(i, a)| rows[..i].iter().any(|b| id(b) == id(a)))
    } else {
        let mut seen = std::collections::HashSet::with_capacity(rows.len());
        !rows.iter().all(|row| seen.insert(id(row)))
    };
    if !repeated {
        return;
    }
    let mut first: HashMap<String, u64> = HashMap::new();
    for row in rows.iter() {
        let seq = first.entry(id(row).to_owned()).or_insert(row.event().seq);
        *seq = (*seq).min(row.event().seq);
    }
    // The earliest copy, once even if two copies share a seq.
    rows.retain(|row| first.get(id(row)) == Some(&row.event().seq) && first.remove(id(row)).is_some());
}

fn row_event(row: FetchedEvent) -> Result<Event> {
    let properties = row.properties()?.into_iter().map(|(key, value)| (key.to_owned(), value.into())).collect();
    Ok(Event {
        event_id: row.event_id,
        name: row.name,
        user_id: String::new(),
        anonymous_id: String::new(),
        timestamp: row.time,
        properties,
    })
}

/// Sets the last user's traits from what was folded for them.
fn finish(users: &mut [(String, Vec<(String, Value)>)], folding: &Traits) {
    if let Some(last) = users.last_mut() {
        last.1 = folding.of(0).unwrap_or_default();
    }
}

/// A stored property value from its kind, number and string columns.
fn property_value(kind: u8, number: f64, string: &str) -> Result<Value> {
    value_ref(kind, number, string).map(Value::from)
}

/// A stored property value, its string borrowed.
fn value_ref(kind: u8, number: f64, string: &str) -> Result<ValueRef<'_>> {
    Ok(match kind {
        KIND_NULL => ValueRef::Null,
        KIND_BOOL => ValueRef::Bool(number != 0.0),
        KIND_NUMBER => ValueRef::Number(number),
        KIND_STRING => ValueRef::Str(string),
        KIND_TIME => ValueRef::Time(number as Micros),
        other => return Err(Error::Storage(format!("clickhouse: unknown property kind {other}"))),
    })
}

impl FetchedEvent {
    /// The row's properties, borrowed (`PersonBatch::add_row`); all checked before any is
    /// returned, so a bad row adds nothing.
    fn properties(&self) -> Result<Vec<(&str, ValueRef<'_>)>> {
        let n = self.prop_keys.len();
        if self.prop_kinds.len() != n || self.prop_numbers.len() != n || self.prop_strings.len() != n {
            return Err(Error::Storage("clickhouse: property arrays of different lengths".into()));
        }
        (0..n)
            .map(|i| {
                let value = value_ref(self.prop_kinds[i], self.prop_numbers[i], &self.prop_strings[i])?;
                Ok((self.prop_keys[i].as_str(), value))
            })
            .collect()
    }
}

/// A ClickHouse failure as the client sees it:
/// - the network, a timeout, or a server saying it cannot now (a shard down, out of memory,
///   too many parts or queries) is UNAVAILABLE: worth retrying;
/// - a server refusing our user or password is a configuration error, named;
/// - anything else (a query it rejects, rows that do not decode) is a storage fault.
fn backend_error(what: &str, error: &clickhouse::error::Error) -> Error {
    use clickhouse::error::Error as Ch;
    match error {
        Ch::Network(_) | Ch::TimedOut if timed_out(error) => Error::BackendUnavailable(format!(
            "{what}: no answer within the timeout (--clickhouse-timeout-secs): {error}"
        )),
        Ch::Network(_) | Ch::TimedOut => Error::BackendUnavailable(format!("{what}: {error}")),
        Ch::BadResponse(message) => match exception_code(message) {
            // NETWORK_ERROR, SOCKET_TIMEOUT, TIMEOUT_EXCEEDED, TOO_MANY_SIMULTANEOUS_QUERIES,
            // MEMORY_LIMIT_EXCEEDED, TOO_MANY_PARTS, ALL_CONNECTION_TRIES_FAILED,
            // ALL_REPLICAS_ARE_STALE, NO_FREE_CONNECTION
            Some(210 | 209 | 159 | 202 | 241 | 252 | 279 | 369 | 203) | None => {
                Error::BackendUnavailable(format!("{what}: {error}"))
            }
            // UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, AUTHENTICATION_FAILED
            Some(192..=194 | 516) => {
                Error::FailedPrecondition(format!("{what}: the server refuses the credentials: {error}"))
            }
            Some(_) => Error::Storage(format!("{what}: {error}")),
        },
        _ => Error::Storage(format!("{what}: {error}")),
    }
}

/// Whether a connection timed out somewhere down `error`'s sources (`external::http_client`).
fn timed_out(error: &clickhouse::error::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = next {
        if cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        next = cause.source();
    }
    matches!(error, clickhouse::error::Error::TimedOut)
}

/// The exception code in a ClickHouse error message (`Code: 210, e.displayText() = …`).
fn exception_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + "Code: ".len()..];
    rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse().ok()
}

#[cfg(test)]
mod tests;
