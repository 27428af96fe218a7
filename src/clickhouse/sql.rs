//! Every statement the ClickHouse backend sends, built here (DDL text in `schema.rs`), so that
//! `every_statement` can list them for the check against a current ClickHouse
//! (`tests/reference/clickhouse_sql_vs_chdb.py` runs them on chDB), beside the CI cluster's
//! 18.16. Values are bound by the `clickhouse` crate, which escapes them; names (database,
//! cluster) are checked identifiers. Inserts are `INSERT INTO t FORMAT RowBinary`, which the
//! crate writes.

use clickhouse::Client;
use clickhouse::query::Query;
use serde::Serialize;

use super::{Fetch, schema};

/// How many shards the cluster has, as this server's `remote_servers` says.
pub fn cluster_shards(client: &Client, cluster: &str) -> Query {
    client.query("SELECT uniqExact(shard_num) FROM system.clusters WHERE cluster = ?").bind(cluster)
}

pub fn create_database(client: &Client, database: &str) -> Query {
    client.query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
}

pub fn drop_database(client: &Client, database: &str) -> Query {
    client.query(&format!("DROP DATABASE IF EXISTS {database}"))
}

pub fn ddl(client: &Client, statement: &str, database: &str, cluster: &str) -> Query {
    client.query(&schema::render(statement, database, cluster))
}

pub fn applied_version(client: &Client) -> Query {
    client.query("SELECT max(version) FROM schema_versions")
}

pub fn record_version(client: &Client, version: u32) -> Query {
    client.query("INSERT INTO schema_versions VALUES (?)").bind(version)
}

/// Which of `ids` the project has stored, on one shard server (the one that owns them).
pub fn known_ids(client: &Client, project: &str, ids: &[&str]) -> Query {
    client
        .query("SELECT event_id FROM event_ids_local WHERE project = ? AND event_id IN ?")
        .bind(project)
        .bind(InList(ids))
        .with_setting("wait_end_of_query", "1")
}

/// The events `fetch` asks for, each credited to the person it counts for, in person order:
/// (owner, is that a user, time, seq, name, event id, property arrays).
///
/// - An anonymous id counts for the user of its latest alias (a GLOBAL join: the alias may sit
///   on another shard); DeleteUser writes an empty alias for each id aliased to the user then,
///   so its later events are its own again, whatever it was aliased to before.
/// - What a deletion covered is left out at once, before the mutations that remove the rows
///   have run: a user's own events from before their latest tombstone, and an anonymous id's
///   events from before its own tombstone (written when it was aliased to a deleted user).
///
/// 18.16 takes one JOIN per SELECT and no joined column in the WHERE of that SELECT, hence the
/// nesting; every joined subquery has a name, which ClickHouse 20 and later require
/// (`joined_subquery_requires_alias`).
pub fn events(client: &Client, project: &str, fetch: &Fetch) -> Query {
    events_with(client, project, fetch, false)
}

/// `events` with each event's user id and anonymous id as sent, last: (…, sender, is that a
/// user id, the anonymous id).
pub fn events_as_sent(client: &Client, project: &str, fetch: &Fetch) -> Query {
    events_with(client, project, fetch, true)
}

fn events_with(client: &Client, project: &str, fetch: &Fetch, as_sent: bool) -> Query {
    let (outer, owned, aliased, inner) = if as_sent {
        (
            ", sender, is_user, sender_anonymous",
            ", sender, sender_anonymous",
            ", person AS sender, anonymous_id AS sender_anonymous",
            ", anonymous_id",
        )
    } else {
        ("", "", "", "")
    };
    let mut sql = format!(
        "SELECT owner, owner_is_user, time, seq, name, event_id, prop_keys, prop_kinds, prop_numbers, prop_strings{outer}
         FROM (
          SELECT owner, owner_is_user, is_user, anonymous_deleted_at, deleted_at, time, seq, name, event_id,
                 prop_keys, prop_kinds, prop_numbers, prop_strings{owned}
          FROM (
           SELECT if(is_user = 1 OR live_user = '', person, live_user) AS owner,
                  toUInt8(is_user = 1 OR live_user != '') AS owner_is_user,
                  is_user, anonymous_deleted_at, time, seq, name, event_id,
                  prop_keys, prop_kinds, prop_numbers, prop_strings{aliased}
           FROM (
            SELECT person, is_user, live_user, time, seq, name, event_id,
                   prop_keys, prop_kinds, prop_numbers, prop_strings{inner}
            FROM events
            GLOBAL ANY LEFT JOIN (
                SELECT anonymous_id AS person, toUInt8(0) AS is_user, argMax(user_id, seq) AS live_user
                FROM aliases WHERE project = ? GROUP BY anonymous_id
            ) AS latest_alias USING (person, is_user)
            WHERE project = ? AND time >= ? AND time < ?",
    );
    if fetch.names.is_some() {
        sql.push_str(" AND has(?, name)");
    }
    sql.push_str(
        ") AS aliased
           ANY LEFT JOIN (
            SELECT anonymous_id AS person, toUInt8(0) AS is_user, max(seq) AS anonymous_deleted_at
            FROM deleted_anonymous WHERE project = ? GROUP BY anonymous_id
           ) AS anonymous_deletion USING (person, is_user)
          ) AS owned
          ANY LEFT JOIN (
            SELECT user_id AS owner, toUInt8(1) AS owner_is_user, max(seq) AS deleted_at
            FROM deleted_users WHERE project = ? GROUP BY user_id
          ) AS owner_deletion USING (owner, owner_is_user)
         ) AS checked
         WHERE (is_user = 1 AND seq >= deleted_at OR is_user = 0 AND seq >= anonymous_deleted_at)",
    );
    if fetch.user.is_some() {
        sql.push_str(" AND owner = ? AND owner_is_user = 1");
    }
    sql.push_str(" ORDER BY owner, owner_is_user, time, seq");
    let mut query = client.query(&sql).bind(project).bind(project).bind(fetch.from).bind(fetch.to);
    if let Some(names) = &fetch.names {
        query = query.bind(names.as_slice());
    }
    query = query.bind(project).bind(project);
    if let Some(user) = &fetch.user {
        query = query.bind(user.as_str());
    }
    query.with_setting("wait_end_of_query", "1")
}

/// The latest row of a definition: (deleted, value).
pub fn meta_get(client: &Client, key: &str) -> Query {
    client
        .query("SELECT deleted, value FROM meta WHERE key = ? ORDER BY version DESC LIMIT 1")
        .bind(key)
        .with_setting("wait_end_of_query", "1")
}

/// The latest row of each definition whose key starts with `prefix`, in key order:
/// (key, deleted, value).
pub fn meta_scan(client: &Client, prefix: &str) -> Query {
    client
        .query(
            "SELECT key, tupleElement(latest, 1), tupleElement(latest, 2) FROM (
                SELECT key, argMax(tuple(deleted, value), version) AS latest FROM meta
                WHERE substring(key, 1, ?) = ? GROUP BY key
             ) ORDER BY key",
        )
        .bind(prefix.len() as u64)
        .bind(prefix)
        .with_setting("wait_end_of_query", "1")
}

/// Every stored record, in the order they were stored.
pub fn records(client: &Client) -> Query {
    client.query("SELECT value FROM records ORDER BY seq").with_setting("wait_end_of_query", "1")
}

/// Moves with every definition change and every record stored (rows are only added).
pub fn generation(client: &Client) -> Query {
    client
        .query("SELECT sum(rows) FROM (SELECT count() AS rows FROM meta UNION ALL SELECT count() AS rows FROM records)")
}

/// Bytes of the database's tables in one server's files.
pub fn bytes_on_disk(client: &Client, database: &str) -> Query {
    client.query("SELECT sum(bytes) FROM system.parts WHERE database = ? AND active").bind(database)
}

/// Removes, on one shard server, a project's events from before `cutoff`.
pub fn expire(client: &Client, project: &str, cutoff: i64) -> Query {
    client.query("ALTER TABLE events_local DELETE WHERE project = ? AND time < ?").bind(project).bind(cutoff)
}

/// A project's trait updates (or one user's), by user then arrival, without a deleted user's
/// updates from before the deletion.
pub fn trait_updates(client: &Client, project: &str, user: Option<&str>) -> Query {
    let only = if user.is_some() { " AND user_id = ?" } else { "" };
    let query = client
        .query(&format!(
            "SELECT user_id, update_json FROM (
                SELECT user_id, seq, update_json, deleted_at
                FROM (SELECT user_id, seq, update_json FROM user_updates WHERE project = ?{only}) AS updates
                ANY LEFT JOIN (
                    SELECT user_id, max(seq) AS deleted_at FROM deleted_users WHERE project = ? GROUP BY user_id
                ) AS deletion USING user_id
             ) AS checked
             WHERE seq >= deleted_at
             ORDER BY user_id, seq"
        ))
        .bind(project);
    let query = match user {
        Some(user) => query.bind(user),
        None => query,
    };
    query.bind(project).with_setting("wait_end_of_query", "1")
}

/// The anonymous ids whose latest alias is `user_id`, in the order they were aliased.
pub fn aliased_to(client: &Client, project: &str, user_id: &str) -> Query {
    client
        .query(
            "SELECT anonymous_id FROM (
                SELECT anonymous_id, argMax(user_id, seq) AS user, max(seq) AS aliased_at
                FROM aliases WHERE project = ? GROUP BY anonymous_id
             ) WHERE user = ? ORDER BY aliased_at",
        )
        .bind(project)
        .bind(user_id)
        .with_setting("wait_end_of_query", "1")
}

/// Removes, on one shard server, the rows a deletion at `seq` covers: the user's events and
/// those of `anonymous` ids credited to them, their trait updates and aliases. ClickHouse runs
/// such a mutation in the background; the tombstone already hides the rows.
pub fn purge_user(client: &Client, project: &str, user_id: &str, anonymous: &[&str], seq: u64) -> Vec<Query> {
    // 18.16 cannot type `has([], x)`: no anonymous ids, no such condition.
    let events = if anonymous.is_empty() {
        client
            .query("ALTER TABLE events_local DELETE WHERE project = ? AND seq < ? AND is_user = 1 AND person = ?")
            .bind(project)
            .bind(seq)
            .bind(user_id)
    } else {
        client
            .query(
                "ALTER TABLE events_local DELETE WHERE project = ? AND seq < ?
                    AND ((is_user = 1 AND person = ?) OR (is_user = 0 AND has(?, person)))",
            )
            .bind(project)
            .bind(seq)
            .bind(user_id)
            .bind(anonymous)
    };
    let updates = client
        .query("ALTER TABLE user_updates_local DELETE WHERE project = ? AND user_id = ? AND seq < ?")
        .bind(project)
        .bind(user_id)
        .bind(seq);
    let aliases = client
        .query("ALTER TABLE aliases_local DELETE WHERE project = ? AND user_id = ? AND seq < ?")
        .bind(project)
        .bind(user_id)
        .bind(seq);
    vec![events, updates, aliases]
}

/// Mutations a shard server has not finished.
pub fn pending_mutations(client: &Client, database: &str) -> Query {
    client.query("SELECT count() FROM system.mutations WHERE database = ? AND is_done = 0").bind(database)
}

/// Strings bound as an SQL tuple, `('a', 'b')`, which `IN` takes (a slice binds as an array).
struct InList<'a>(&'a [&'a str]);

impl Serialize for InList<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(self.0.len())?;
        for id in self.0 {
            tuple.serialize_element(id)?;
        }
        tuple.end()
    }
}

/// Every statement above as sent, with sample values, in an order that runs on an empty
/// server: the database, the versions table, each migration, then the reads.
pub fn every_statement(database: &str, cluster: &str) -> Vec<String> {
    let client = Client::default();
    let mut queries = vec![cluster_shards(&client, cluster), create_database(&client, database)];
    queries.push(ddl(&client, schema::VERSIONS_TABLE, database, cluster));
    queries.push(applied_version(&client));
    for (version, statements) in schema::MIGRATIONS {
        queries.extend(statements.iter().map(|s| ddl(&client, s, database, cluster)));
        queries.push(record_version(&client, *version));
    }
    queries.push(known_ids(&client, "p", &["e1", "it's"]));
    queries.push(events(&client, "p", &Fetch::everything()));
    let named =
        Fetch { names: Some(vec!["signup".into(), "purchase".into()]), from: 0, to: 86_400_000_000, user: None };
    queries.push(events(&client, "p", &named));
    queries.push(events(&client, "p", &Fetch::of_user("u1")));
    queries.push(events_as_sent(&client, "p", &Fetch::everything()));
    queries.push(trait_updates(&client, "p", None));
    queries.push(trait_updates(&client, "p", Some("u1")));
    queries.push(meta_get(&client, "metric/p/m"));
    queries.push(meta_scan(&client, "metric/p/"));
    queries.push(records(&client));
    queries.push(generation(&client));
    queries.push(bytes_on_disk(&client, database));
    queries.push(expire(&client, "p", 86_400_000_000));
    queries.push(aliased_to(&client, "p", "u1"));
    queries.extend(purge_user(&client, "p", "u1", &["a1", "a2"], 7));
    queries.extend(purge_user(&client, "p", "u1", &[], 7));
    queries.push(pending_mutations(&client, database));
    queries.iter().map(|q| q.sql_display().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_has_its_values_bound_and_escaped() {
        let statements = every_statement("db", "cl");
        for statement in &statements {
            assert!(!statement.contains('?'), "unbound: {statement}");
        }
        let ids = statements.iter().find(|s| s.contains("FROM event_ids")).unwrap();
        assert!(ids.contains(r"IN ('e1','it\'s')"), "{ids}");
        let named = statements.iter().find(|s| s.contains("has(")).unwrap();
        assert!(named.contains("has(['signup','purchase'], name)"), "{named}");
        assert!(named.contains("time >= 0 AND time < 86400000000"), "{named}");
    }
}
