//! Every statement the ClickHouse backend sends, built here (DDL text in `schema.rs`), so that
//! `every_statement` can list them for the check against a current ClickHouse
//! (`tests/reference/clickhouse_sql_vs_chdb.py` runs them on chDB), beside the CI cluster's
//! 18.16. Values are bound by the `clickhouse` crate, which escapes them; names (database,
//! cluster) are checked identifiers. Inserts are `INSERT INTO t FORMAT RowBinary`, which the
//! crate writes.

use clickhouse::Client;
use clickhouse::query::Query;
use serde::Serialize;

use super::{Fetch, external, schema};
use crate::core::filter::{Filter, FilterOp};
use crate::core::model::{Micros, Value};
use crate::core::store::remote::{AggregateRequest, CellValues, CohortCountRequest, CountedEvents};

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

/// Which of the ids in the external table `external::TABLE` the project has stored, on one
/// shard server (the one that owns them).
pub fn known_ids(client: &Client, project: &str) -> Query {
    client
        .query(&format!("SELECT event_id FROM event_ids_local WHERE project = ? AND event_id IN {}", external::TABLE))
        .bind(project)
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
///
/// `Scope::Shard` reads the server's own rows only (`events_local`; the alias and deletion
/// tables still whole): a person's rows are then split across the shards' answers only when
/// their anonymous ids sit on other shards, and the caller merges them (`ShardRows`).
pub fn events(client: &Client, project: &str, fetch: &Fetch, scope: Scope) -> Query {
    events_with(client, project, fetch, false, scope)
}

/// `events` with each event's user id and anonymous id as sent, last: (…, sender, is that a
/// user id, the anonymous id).
pub fn events_as_sent(client: &Client, project: &str, fetch: &Fetch, scope: Scope) -> Query {
    events_with(client, project, fetch, true, scope)
}

/// Which events a read covers: every shard's (through the `Distributed` table, the server it
/// is sent to merging), or the server's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Shard,
}

fn events_with(client: &Client, project: &str, fetch: &Fetch, as_sent: bool, scope: Scope) -> Query {
    let mut sql = checked_events(project, fetch, as_sent, scope);
    sql.text.push_str(" ORDER BY owner, owner_is_user, time, seq");
    sql.query(client).with_setting("wait_end_of_query", "1")
}

/// The SELECT of `events` without its order: (owner, owner_is_user, time, seq, name, event_id,
/// property arrays[, sender, is_user, sender_anonymous]).
fn checked_events(project: &str, fetch: &Fetch, as_sent: bool, scope: Scope) -> Sql {
    let table = match scope {
        Scope::Cluster => "events",
        Scope::Shard => "events_local",
    };
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
    let mut sql = Sql::default();
    sql.push(&format!(
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
            FROM {table}
            GLOBAL ANY LEFT JOIN (
                SELECT anonymous_id AS person, toUInt8(0) AS is_user, argMax(user_id, seq) AS live_user
                FROM aliases WHERE project = "
    ));
    sql.arg(project);
    sql.push(
        " GROUP BY anonymous_id
            ) AS latest_alias USING (person, is_user)
            WHERE project = ",
    );
    sql.arg(project);
    sql.push(" AND time >= ");
    sql.arg(fetch.from);
    sql.push(" AND time < ");
    sql.arg(fetch.to);
    match &fetch.names {
        // 18.16 cannot type `has([], name)`: no names, no events.
        Some(names) if names.is_empty() => sql.push(" AND 0"),
        Some(names) => {
            sql.push(" AND has(");
            sql.arg(names.clone());
            sql.push(", name)");
        }
        None => {}
    }
    sql.push(
        ") AS aliased
           ANY LEFT JOIN (
            SELECT anonymous_id AS person, toUInt8(0) AS is_user, max(seq) AS anonymous_deleted_at
            FROM deleted_anonymous WHERE project = ",
    );
    sql.arg(project);
    sql.push(
        " GROUP BY anonymous_id
           ) AS anonymous_deletion USING (person, is_user)
          ) AS owned
          ANY LEFT JOIN (
            SELECT user_id AS owner, toUInt8(1) AS owner_is_user, max(seq) AS deleted_at
            FROM deleted_users WHERE project = ",
    );
    sql.arg(project);
    sql.push(
        " GROUP BY user_id
          ) AS owner_deletion USING (owner, owner_is_user)
         ) AS checked
         WHERE (is_user = 1 AND seq >= deleted_at OR is_user = 0 AND seq >= anonymous_deleted_at)",
    );
    if let Some(user) = &fetch.user {
        sql.push(" AND owner = ");
        sql.arg(user.as_str());
        sql.push(" AND owner_is_user = 1");
    }
    sql
}

/// The earliest and latest time of the events `events` reads, and how many there are.
pub fn time_span(client: &Client, project: &str, fetch: &Fetch) -> Query {
    over_events(client, project, fetch, "SELECT min(time), max(time), count()", "")
}

/// Per event name, how many of the events `events` reads there are and their earliest and
/// latest time: (name, count, min time, max time), by name. Each id counts once, as its
/// earliest copy (`person_batch` keeps that one).
pub fn name_counts(client: &Client, project: &str, fetch: &Fetch) -> Query {
    let select = "SELECT name, count(), min(time), max(time) FROM (SELECT owner, owner_is_user, event_id, name, time";
    let rest = "ORDER BY seq LIMIT 1 BY owner, owner_is_user, event_id) GROUP BY name ORDER BY name";
    over_events(client, project, fetch, select, rest)
}

/// Per person with any of the events `events` reads, the time of their first: (owner,
/// owner_is_user, time). Each id counts once, as its earliest copy (`person_batch` keeps that
/// one).
pub fn first_seen(client: &Client, project: &str, fetch: &Fetch) -> Query {
    let select = "SELECT owner, owner_is_user, min(time) FROM (SELECT owner, owner_is_user, event_id, time";
    let rest = "ORDER BY seq LIMIT 1 BY owner, owner_is_user, event_id) GROUP BY owner, owner_is_user";
    over_events(client, project, fetch, select, rest)
}

/// The users who have any of the events `events` reads.
pub fn users_with_events(client: &Client, project: &str, fetch: &Fetch) -> Query {
    over_events(client, project, fetch, "SELECT DISTINCT owner", "WHERE owner_is_user = 1")
}

/// `select FROM (the rows `events` reads, from every shard) rest`.
fn over_events(client: &Client, project: &str, fetch: &Fetch, select: &str, rest: &str) -> Query {
    let mut sql = Sql::default();
    sql.push(select);
    sql.push(" FROM (");
    sql.append(checked_events(project, fetch, false, Scope::Cluster));
    sql.push(") ");
    sql.push(rest);
    sql.query(client).with_setting("wait_end_of_query", "1")
}

/// An event aggregate's partial cells, one row per person: (owner, owner_is_user, and per
/// cell: bucket, breakdown value as kind/number/string, count, sum, min, max).
///
/// The events are those `events` reads, each id once (the earliest copy of a person's id, as
/// `person_batch` keeps: copies are dropped before the filters look, since a later copy may
/// differ). Filters follow `core::filter`: a missing or null property matches only NEQ,
/// NOT_IN and IS_NOT_SET; comparisons take numbers and timestamps; a value is a number.
pub fn aggregate(client: &Client, project: &str, request: &AggregateRequest) -> Query {
    let fetch =
        Fetch { names: Some(vec![request.name.clone()]), from: request.from, to: request.to, ..Fetch::everything() };
    let mut sql = Sql::default();
    // Only the columns the caller reads: the rest are sent as empty arrays.
    let column = |wanted: bool, name: &str, empty: &str| {
        if wanted { format!("groupArray({name})") } else { format!("emptyArray{empty}()") }
    };
    let grouped = request.breakdown_property.is_some();
    let values = request.values;
    let no_values = "emptyArrayUInt64(), emptyArrayFloat64(), emptyArrayFloat64(), emptyArrayFloat64()";
    let no_groups = "emptyArrayUInt8(), emptyArrayFloat64(), emptyArrayString()";
    // One GROUP BY per person where it suffices (a distinct count, or a count, without a
    // breakdown property): the two-level form costs about half again as much. (`sumMap` only
    // for counts, which are never 0: it may leave out keys whose sum is.)
    let only = |values: CellValues| request.values == values && !grouped;
    let single = if only(CellValues::default()) {
        Some(format!("groupUniqArray(bucket), {no_groups}, {no_values}"))
    } else if only(CellValues { count: true, ..CellValues::default() }) {
        let counts = "sumMap([bucket], [toUInt64(1)])";
        Some(format!(
            "tupleElement({counts}, 1), {no_groups}, tupleElement({counts}, 2), emptyArrayFloat64(), \
             emptyArrayFloat64(), emptyArrayFloat64()"
        ))
    } else {
        None
    };
    match &single {
        Some(columns) => {
            sql.push(&format!("SELECT owner, owner_is_user, {columns} FROM (SELECT owner, owner_is_user, "))
        }
        None => {
            let columns = [
                column(grouped, "group_kind", "UInt8"),
                column(grouped, "group_number", "Float64"),
                column(grouped, "group_string", "String"),
                column(values.count, "events", "UInt64"),
                column(values.sum, "total", "Float64"),
                column(values.min, "low", "Float64"),
                column(values.max, "high", "Float64"),
            ];
            sql.push(&format!("SELECT owner, owner_is_user, groupArray(bucket), {}", columns.join(", ")));
            sql.push(
                "
         FROM (
          SELECT owner, owner_is_user, bucket, group_kind, group_number, group_string,
                 count() AS events, sum(value) AS total, min(value) AS low, max(value) AS high
          FROM (
           SELECT owner, owner_is_user, ",
            );
        }
    }
    // Buckets are runs of one width (days in a zone split by a DST change, months): within a
    // run, arithmetic. (18.16 loses a subquery's column that only a lambda uses, so no
    // `arrayCount(e -> e <= time, ends)`.)
    let runs = bucket_runs(&request.bounds);
    sql.push("toUInt32(");
    if runs.len() > 1 {
        sql.push("multiIf(");
    }
    for (i, run) in runs.iter().enumerate() {
        let last = i + 1 == runs.len();
        if !last {
            sql.push("time < ");
            sql.arg(run.end);
            sql.push(", ");
        }
        sql.arg(run.first as i64);
        sql.push(" + intDiv(time - ");
        sql.arg(run.start);
        sql.push(", ");
        sql.arg(run.width);
        sql.push(")");
        if !last {
            sql.push(", ");
        }
    }
    if runs.len() > 1 {
        sql.push(")");
    }
    sql.push(")");
    sql.push(" AS bucket, ");
    match &request.breakdown_property {
        Some(key) => {
            sql.property(key, "kinds");
            sql.push(" AS group_kind, ");
            // -0 and 0 are one group, as in `core::analysis::breakdown`.
            sql.push("if(");
            sql.property(key, "numbers");
            sql.push(" = 0, 0, ");
            sql.property(key, "numbers");
            sql.push(") AS group_number, ");
            sql.property(key, "strings");
            sql.push(" AS group_string, ");
        }
        None => sql.push("toUInt8(0) AS group_kind, toFloat64(0) AS group_number, '' AS group_string, "),
    }
    match &request.value_property {
        Some(key) => sql.property(key, "numbers"),
        None => sql.push("toFloat64(0)"),
    }
    sql.push(" AS value, ");
    let mut conditions = 0;
    if let Some(key) = &request.value_property {
        sql.property(key, "kinds");
        sql.push(&format!(" = {KIND_NUMBER}"));
        conditions += 1;
    }
    for filter in &request.filters {
        if conditions > 0 {
            sql.push(" AND ");
        }
        sql.filter(filter);
        conditions += 1;
    }
    if conditions == 0 {
        sql.push("1");
    }
    sql.push(" AS passes FROM (");
    sql.append(checked_events(project, &fetch, false, Scope::Cluster));
    sql.push(") ORDER BY seq LIMIT 1 BY owner, owner_is_user, event_id) WHERE passes = 1");
    if single.is_none() {
        sql.push(" GROUP BY owner, owner_is_user, bucket, group_kind, group_number, group_string)");
    }
    sql.push(" GROUP BY owner, owner_is_user");
    sql.query(client).with_setting("wait_end_of_query", "1")
}

/// A cohort's behavioural conditions counted per person: (owner, owner_is_user, one count per
/// condition). The events are those `events` reads of the conditions' names, each id once (its
/// earliest copy, as `aggregate` keeps it); filters as in `aggregate`.
pub fn cohort_counts(client: &Client, project: &str, request: &CohortCountRequest) -> Query {
    let mut names: Vec<String> = request.conditions.iter().map(|c| c.name.clone()).collect();
    names.sort();
    names.dedup();
    let from = request.conditions.iter().map(|c| c.from).min().unwrap_or(0).max(request.not_before);
    let to = request.conditions.iter().map(|c| c.to).max().unwrap_or(0);
    let fetch = Fetch { names: Some(names), from, to, ..Fetch::everything() };
    let counts: Vec<String> = (0..request.conditions.len()).map(|i| format!("countIf(c{i})")).collect();
    let mut sql = Sql::default();
    sql.push(&format!("SELECT owner, owner_is_user, [{}] FROM (SELECT owner, owner_is_user", counts.join(", ")));
    for (i, condition) in request.conditions.iter().enumerate() {
        sql.push(", (name = ");
        sql.arg(condition.name.as_str());
        sql.push(" AND time >= ");
        sql.arg(condition.from);
        sql.push(" AND time < ");
        sql.arg(condition.to);
        for filter in &condition.filters {
            sql.push(" AND ");
            sql.filter(filter);
        }
        sql.push(&format!(") AS c{i}"));
    }
    sql.push(" FROM (");
    sql.append(checked_events(project, &fetch, false, Scope::Cluster));
    sql.push(") ORDER BY seq LIMIT 1 BY owner, owner_is_user, event_id) GROUP BY owner, owner_is_user");
    sql.query(client).with_setting("wait_end_of_query", "1")
}

/// Every person with any of the events `events` reads: (owner, owner_is_user).
pub fn people_with_events(client: &Client, project: &str, fetch: &Fetch) -> Query {
    over_events(client, project, fetch, "SELECT DISTINCT owner, owner_is_user", "")
}

/// Consecutive buckets of one width: bucket `first + (t - start) / width` for `t < end`.
#[derive(Debug, PartialEq)]
struct BucketRun {
    first: usize,
    start: Micros,
    width: Micros,
    end: Micros,
}

/// `bounds` (bucket b is `[bounds[b], bounds[b + 1])`) as runs of equal width.
fn bucket_runs(bounds: &[Micros]) -> Vec<BucketRun> {
    let mut runs: Vec<BucketRun> = Vec::new();
    for (b, pair) in bounds.windows(2).enumerate() {
        let width = pair[1] - pair[0];
        match runs.last_mut() {
            Some(run) if run.width == width => run.end = pair[1],
            _ => runs.push(BucketRun { first: b, start: pair[0], width, end: pair[1] }),
        }
    }
    runs
}

/// Property kinds as stored in `prop_kinds`.
pub(super) const KIND_NULL: u8 = 0;
pub(super) const KIND_BOOL: u8 = 1;
pub(super) const KIND_NUMBER: u8 = 2;
pub(super) const KIND_STRING: u8 = 3;
pub(super) const KIND_TIME: u8 = 4;

/// A property value as its kind, number and string columns store it.
pub(super) fn stored(value: &Value) -> (u8, f64, &str) {
    match value {
        Value::Null => (KIND_NULL, 0.0, ""),
        Value::Bool(b) => (KIND_BOOL, f64::from(u8::from(*b)), ""),
        Value::Number(n) => (KIND_NUMBER, *n, ""),
        Value::String(s) => (KIND_STRING, 0.0, s.as_str()),
        // Microseconds since 1970 stay exact in an f64 until the year 2255.
        Value::Timestamp(t) => (KIND_TIME, *t as f64, ""),
    }
}

/// A statement and its values, in the order of their `?`s.
#[derive(Default)]
struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// `other` as a part of this statement (a subquery), with its values.
    fn append(&mut self, other: Sql) {
        self.text.push_str(&other.text);
        self.args.extend(other.args);
    }

    fn arg(&mut self, value: impl Into<Arg>) {
        self.text.push('?');
        self.args.push(value.into());
    }

    /// An event property's column (`kinds`, `numbers` or `strings`): the kind is 0 (null)
    /// when the event has no such property.
    fn property(&mut self, key: &str, column: &str) {
        self.push(&format!("prop_{column}[indexOf(prop_keys, "));
        self.arg(key);
        self.push(")]");
    }

    /// `core::filter::matches` of an event-property filter, in SQL.
    fn filter(&mut self, filter: &Filter) {
        let key = filter.property.as_str();
        let kind_is = |sql: &mut Sql, kind: u8| {
            sql.push("(");
            sql.property(key, "kinds");
            sql.push(&format!(" = {kind}"));
        };
        let equal = |sql: &mut Sql, value: &Value| {
            let (kind, number, string) = stored(value);
            kind_is(sql, kind);
            match kind {
                KIND_NULL => {}
                KIND_STRING => {
                    sql.push(" AND ");
                    sql.property(key, "strings");
                    sql.push(" = ");
                    sql.arg(string);
                }
                _ => {
                    sql.push(" AND ");
                    sql.property(key, "numbers");
                    sql.push(" = ");
                    sql.arg(number);
                }
            }
            sql.push(")");
        };
        let any_equal = |sql: &mut Sql| {
            sql.push("(");
            for (i, value) in filter.values.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                equal(sql, value);
            }
            sql.push(")");
        };
        match filter.op {
            FilterOp::Eq | FilterOp::In => any_equal(self),
            FilterOp::Neq | FilterOp::NotIn => {
                self.push("NOT ");
                any_equal(self);
            }
            FilterOp::Gt | FilterOp::Gte | FilterOp::Lt | FilterOp::Lte => {
                let bound = match filter.values.first() {
                    Some(Value::Number(n)) => Some(*n),
                    Some(Value::Timestamp(t)) => Some(*t as f64),
                    _ => None,
                };
                let Some(bound) = bound else {
                    // Validation refuses it; nothing passes, as in `core::filter`.
                    self.push("0");
                    return;
                };
                let op = match filter.op {
                    FilterOp::Gt => ">",
                    FilterOp::Gte => ">=",
                    FilterOp::Lt => "<",
                    _ => "<=",
                };
                self.push("(");
                self.property(key, "kinds");
                self.push(&format!(" IN ({KIND_NUMBER}, {KIND_TIME}) AND "));
                self.property(key, "numbers");
                self.push(&format!(" {op} "));
                self.arg(bound);
                self.push(")");
            }
            FilterOp::Contains => match filter.values.first() {
                Some(Value::String(needle)) => {
                    kind_is(self, KIND_STRING);
                    if !needle.is_empty() {
                        self.push(" AND position(");
                        self.property(key, "strings");
                        self.push(", ");
                        self.arg(needle.as_str());
                        self.push(") > 0");
                    }
                    self.push(")");
                }
                _ => self.push("0"),
            },
            FilterOp::IsSet => {
                self.push("(");
                self.property(key, "kinds");
                self.push(&format!(" != {KIND_NULL})"));
            }
            FilterOp::IsNotSet => {
                kind_is(self, KIND_NULL);
                self.push(")");
            }
        }
    }

    fn query(self, client: &Client) -> Query {
        self.args.into_iter().fold(client.query(&self.text), |query, arg| query.bind(arg))
    }
}

/// A value bound to a `?`.
enum Arg {
    Str(String),
    Strs(Vec<String>),
    Int(i64),
    Float(f64),
}

impl From<&str> for Arg {
    fn from(value: &str) -> Arg {
        Arg::Str(value.to_owned())
    }
}

impl From<Vec<String>> for Arg {
    fn from(value: Vec<String>) -> Arg {
        Arg::Strs(value)
    }
}

impl From<i64> for Arg {
    fn from(value: i64) -> Arg {
        Arg::Int(value)
    }
}

impl From<f64> for Arg {
    fn from(value: f64) -> Arg {
        Arg::Float(value)
    }
}

impl Serialize for Arg {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Arg::Str(v) => v.serialize(serializer),
            Arg::Strs(v) => v.serialize(serializer),
            Arg::Int(v) => v.serialize(serializer),
            Arg::Float(v) => v.serialize(serializer),
        }
    }
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

/// One shard server's records with a hash of each value, in arrival order: what
/// `rewrite_records` names a record by.
pub fn local_records(client: &Client) -> Query {
    client
        .query("SELECT seq, cityHash64(value), value FROM records_local ORDER BY seq")
        .with_setting("wait_end_of_query", "1")
}

/// Replaces, on one shard server, the values of records named by (seq, hash of the value
/// now) with new ones: a mutation, which runs in the background. A record whose value
/// changed since it was read (another node rewrote it) keeps its value. The number of rows
/// never changes, so `generation` does not move.
pub fn rewrite_records(client: &Client, rewrites: &[(u64, u64, &[u8])]) -> Query {
    let mut sql = String::from("ALTER TABLE records_local UPDATE value = multiIf(");
    for _ in rewrites {
        sql.push_str("seq = ? AND cityHash64(value) = ?, unhex(?), ");
    }
    sql.push_str("value) WHERE seq IN (");
    sql.push_str(&vec!["?"; rewrites.len()].join(", "));
    sql.push(')');
    let mut query = client.query(&sql);
    let mut size = sql.len();
    for (seq, hash, value) in rewrites {
        let hex = hex(value);
        size += hex.len() + 64;
        query = query.bind(seq).bind(hash).bind(hex);
    }
    for (seq, _, _) in rewrites {
        query = query.bind(seq);
    }
    // The new values are in the statement, which the server parses whole.
    query.with_setting("max_query_size", (size + 4096).to_string())
}

/// Bytes as hexadecimal digits (`unhex` reads them back): any bytes fit a string literal.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Moves with every definition change and every record stored (rows are only added; a
/// rewrite of a record keeps its row).
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
    queries.push(known_ids(&client, "it's"));
    let named = Fetch {
        names: Some(vec!["signup".into(), "purchase".into()]),
        from: 0,
        to: 86_400_000_000,
        ..Fetch::everything()
    };
    for scope in [Scope::Cluster, Scope::Shard] {
        queries.push(events(&client, "p", &Fetch::everything(), scope));
        queries.push(events(&client, "p", &named, scope));
        queries.push(events(&client, "p", &Fetch::of_user("u1"), scope));
        queries.push(events_as_sent(&client, "p", &Fetch::everything(), scope));
    }
    queries.extend(sample_aggregates().iter().map(|request| aggregate(&client, "p", request)));
    queries.push(time_span(&client, "p", &Fetch { from: 86_400_000_000, ..Fetch::everything() }));
    queries.push(name_counts(&client, "p", &Fetch { from: 86_400_000_000, ..Fetch::everything() }));
    queries.push(users_with_events(&client, "p", &Fetch::everything()));
    queries.push(first_seen(&client, "p", &Fetch { from: 86_400_000_000, to: 172_800_000_000, ..Fetch::everything() }));
    queries.push(events(&client, "p", &Fetch { names: Some(Vec::new()), ..Fetch::everything() }, Scope::Shard));
    queries.push(people_with_events(&client, "p", &Fetch { from: 86_400_000_000, ..Fetch::everything() }));
    queries.push(cohort_counts(&client, "p", &sample_cohort_counts()));
    queries.push(trait_updates(&client, "p", None));
    queries.push(trait_updates(&client, "p", Some("u1")));
    queries.push(meta_get(&client, "metric/p/m"));
    queries.push(meta_scan(&client, "metric/p/"));
    queries.push(records(&client));
    queries.push(local_records(&client));
    queries.push(rewrite_records(&client, &[(3, 17, b"it's\x00\xff")]));
    queries.push(rewrite_records(&client, &[(3, 17, b""), (5, u64::MAX, b"x")]));
    queries.push(generation(&client));
    queries.push(bytes_on_disk(&client, database));
    queries.push(expire(&client, "p", 86_400_000_000));
    queries.push(aliased_to(&client, "p", "u1"));
    queries.extend(purge_user(&client, "p", "u1", &["a1", "a2"], 7));
    queries.extend(purge_user(&client, "p", "u1", &[], 7));
    queries.push(pending_mutations(&client, database));
    queries.iter().map(|q| q.sql_display().to_string()).collect()
}

/// Aggregate requests that use every part of `aggregate`: both bucket forms, each filter
/// operator and value kind, a value and a breakdown property.
fn sample_aggregates() -> Vec<AggregateRequest> {
    let on = |property: &str, op: FilterOp, values: Vec<Value>| Filter { property: property.into(), op, values };
    let day = 86_400_000_000;
    let plain = AggregateRequest {
        name: "visit".into(),
        from: 0,
        to: 3 * day,
        filters: Vec::new(),
        value_property: None,
        breakdown_property: None,
        bounds: vec![0, day, 2 * day, 3 * day],
        with_traits: false,
        values: CellValues::default(),
    };
    let filtered = AggregateRequest {
        name: "purchase".into(),
        filters: vec![
            on("plan", FilterOp::In, vec![Value::String("it's".into()), Value::Null, Value::Bool(true)]),
            on("plan", FilterOp::NotIn, vec![Value::Number(2.5), Value::Timestamp(day)]),
            on("amount", FilterOp::Gte, vec![Value::Number(10.0)]),
            on("at", FilterOp::Lt, vec![Value::Timestamp(day)]),
            on("plan", FilterOp::Contains, vec![Value::String("pro".into())]),
            on("plan", FilterOp::IsSet, vec![]),
            on("coupon", FilterOp::IsNotSet, vec![]),
        ],
        value_property: Some("amount".into()),
        breakdown_property: Some("plan".into()),
        bounds: vec![0, day, 2 * day + 3_600_000_000],
        values: CellValues { count: true, sum: true, min: true, max: true },
        ..plain.clone()
    };
    let counted = AggregateRequest { values: CellValues { count: true, ..CellValues::default() }, ..plain.clone() };
    vec![plain, counted, filtered]
}

/// Two conditions on one name and one on another, with filters and the retention start.
fn sample_cohort_counts() -> CohortCountRequest {
    let day = 86_400_000_000;
    let purchase = |from, filters| CountedEvents { name: "purchase".into(), from, to: 30 * day, filters };
    CohortCountRequest {
        conditions: vec![
            purchase(0, Vec::new()),
            purchase(
                7 * day,
                vec![Filter { property: "plan".into(), op: FilterOp::Eq, values: vec![Value::String("pro".into())] }],
            ),
            CountedEvents { name: "signup".into(), from: Micros::MIN, to: Micros::MAX, filters: Vec::new() },
        ],
        everyone: false,
        with_traits: false,
        not_before: day,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_runs_of_one_width() {
        let h = 3_600_000_000;
        // Days with a 23-hour one (spring forward), then whole days again.
        let bounds = [0, 24 * h, 48 * h, 71 * h, 95 * h, 119 * h];
        let runs = bucket_runs(&bounds);
        assert_eq!(
            runs,
            vec![
                BucketRun { first: 0, start: 0, width: 24 * h, end: 48 * h },
                BucketRun { first: 2, start: 48 * h, width: 23 * h, end: 71 * h },
                BucketRun { first: 3, start: 71 * h, width: 24 * h, end: 119 * h },
            ]
        );
        // Each time's bucket from its run is the one the bounds give.
        for t in (0..119).map(|x| x * h + 7) {
            let run = runs.iter().find(|r| t < r.end).unwrap();
            let bucket = run.first + ((t - run.start) / run.width) as usize;
            assert_eq!(bucket, bounds.partition_point(|&b| b <= t) - 1, "{t}");
        }
        assert_eq!(bucket_runs(&[5, 9]), vec![BucketRun { first: 0, start: 5, width: 4, end: 9 }]);
    }

    #[test]
    fn every_statement_has_its_values_bound_and_escaped() {
        let statements = every_statement("db", "cl");
        for statement in &statements {
            assert!(!statement.contains('?'), "unbound: {statement}");
        }
        let ids = statements.iter().find(|s| s.contains("FROM event_ids")).unwrap();
        assert!(ids.ends_with(r"project = 'it\'s' AND event_id IN sextant_ids"), "{ids}");
        let named = statements.iter().find(|s| s.contains("has(")).unwrap();
        assert!(named.contains("has(['signup','purchase'], name)"), "{named}");
        assert!(named.contains("time >= 0 AND time < 86400000000"), "{named}");
    }
}
