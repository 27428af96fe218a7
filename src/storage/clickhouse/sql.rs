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

pub fn cluster_known(client: &Client, cluster: &str) -> Query {
    client.query("SELECT count() FROM system.clusters WHERE cluster = ?").bind(cluster)
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

/// Which of `ids` the project has stored.
pub fn known_ids(client: &Client, project: &str, ids: &[&str]) -> Query {
    client
        .query("SELECT event_id FROM event_ids WHERE project = ? AND event_id IN ?")
        .bind(project)
        .bind(InList(ids))
        .with_setting("wait_end_of_query", "1")
}

/// The events `fetch` asks for, each credited to the person it counts for (an anonymous id's
/// latest alias, by a GLOBAL join since the alias may sit on another shard), in person order:
/// (owner, is that a user, time, seq, name, event id, property arrays). The joined subquery
/// has a name: ClickHouse 20 and later require one (`joined_subquery_requires_alias`).
pub fn events(client: &Client, project: &str, fetch: &Fetch) -> Query {
    let mut sql = String::from(
        "SELECT owner, owner_is_user, time, seq, name, event_id, prop_keys, prop_kinds, prop_numbers, prop_strings
         FROM (
            SELECT if(is_user = 1 OR alias_user = '', person, alias_user) AS owner,
                   toUInt8(is_user = 1 OR alias_user != '') AS owner_is_user,
                   time, seq, name, event_id, prop_keys, prop_kinds, prop_numbers, prop_strings
            FROM events
            GLOBAL ANY LEFT JOIN (
                SELECT anonymous_id AS person, toUInt8(0) AS is_user, argMax(user_id, seq) AS alias_user
                FROM aliases WHERE project = ? GROUP BY anonymous_id
            ) AS latest_alias USING (person, is_user)
            WHERE project = ? AND time >= ? AND time < ?",
    );
    if fetch.names.is_some() {
        sql.push_str(" AND has(?, name)");
    }
    sql.push_str(") ORDER BY owner, owner_is_user, time, seq");
    let mut query = client.query(&sql).bind(project).bind(project).bind(fetch.from).bind(fetch.to);
    if let Some(names) = &fetch.names {
        query = query.bind(names.as_slice());
    }
    query.with_setting("wait_end_of_query", "1")
}

/// A project's trait updates, by user then arrival.
pub fn trait_updates(client: &Client, project: &str) -> Query {
    client
        .query("SELECT user_id, update_json FROM user_updates WHERE project = ? ORDER BY user_id, seq")
        .bind(project)
        .with_setting("wait_end_of_query", "1")
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
    let mut queries = vec![cluster_known(&client, cluster), create_database(&client, database)];
    queries.push(ddl(&client, schema::VERSIONS_TABLE, database, cluster));
    queries.push(applied_version(&client));
    for (version, statements) in schema::MIGRATIONS {
        queries.extend(statements.iter().map(|s| ddl(&client, s, database, cluster)));
        queries.push(record_version(&client, *version));
    }
    queries.push(known_ids(&client, "p", &["e1", "it's"]));
    queries.push(events(&client, "p", &Fetch::everything()));
    let named = Fetch { names: Some(vec!["signup".into(), "purchase".into()]), from: 0, to: 86_400_000_000 };
    queries.push(events(&client, "p", &named));
    queries.push(trait_updates(&client, "p"));
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
