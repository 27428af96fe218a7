//! Every table the ClickHouse backend uses, as versioned migrations: all of its DDL is here.
//!
//! Each shard server gets the same local tables (`…_local`, `MergeTree` ordered by project,
//! person, time) and a `Distributed` table over them, sharded by a hash of the person, so a
//! person's events sit on one shard. DDL runs on every server one by one (`ON CLUSTER` needs
//! ZooKeeper, which a plain cluster has not). The SQL avoids what ClickHouse 18.16 lacks
//! (`DateTime64`, `Map`, `Bool`, query parameters): times are `Int64` microseconds.
//!
//! `{db}` and `{cluster}` are replaced by the configured database and cluster names, both
//! checked to be plain identifiers.

/// (version, statements): applied in order, each version once per server.
pub const MIGRATIONS: &[(u32, &[&str])] = &[
    (
        1,
        &[
            // Events as sent, one row each. `person` is the user id, or the anonymous id when there
            // is none (`is_user` says which); `seq` is the arrival order, which breaks ties in time.
            // Properties are parallel arrays: key, kind (0 null, 1 bool, 2 number, 3 string,
            // 4 timestamp), the number (bools 0/1, timestamps in microseconds) or the string.
            "CREATE TABLE IF NOT EXISTS {db}.events_local (
            project String, person String, is_user UInt8, anonymous_id String, time Int64,
            seq UInt64, name String, event_id String, prop_keys Array(String),
            prop_kinds Array(UInt8), prop_numbers Array(Float64), prop_strings Array(String)
        ) ENGINE = MergeTree() ORDER BY (project, person, time, seq)",
            "CREATE TABLE IF NOT EXISTS {db}.events AS {db}.events_local
            ENGINE = Distributed({cluster}, {db}, events_local, cityHash64(person))",
            // Aliases: the latest (by seq) user of an anonymous id wins.
            "CREATE TABLE IF NOT EXISTS {db}.aliases_local (
            project String, anonymous_id String, user_id String, seq UInt64
        ) ENGINE = MergeTree() ORDER BY (project, anonymous_id, seq)",
            "CREATE TABLE IF NOT EXISTS {db}.aliases AS {db}.aliases_local
            ENGINE = Distributed({cluster}, {db}, aliases_local, cityHash64(anonymous_id))",
            // Trait updates as sent (a JSON `UserUpdate`), folded in seq order when read.
            "CREATE TABLE IF NOT EXISTS {db}.user_updates_local (
            project String, user_id String, seq UInt64, update_json String
        ) ENGINE = MergeTree() ORDER BY (project, user_id, seq)",
            "CREATE TABLE IF NOT EXISTS {db}.user_updates AS {db}.user_updates_local
            ENGINE = Distributed({cluster}, {db}, user_updates_local, cityHash64(user_id))",
        ],
    ),
    (
        2,
        &[
            // Every stored event id, sharded by the id so that a batch's ids are looked up by
            // primary key on the shards that own them: the write-time half of exactly-once.
            "CREATE TABLE IF NOT EXISTS {db}.event_ids_local (project String, event_id String, seq UInt64)
                ENGINE = MergeTree() ORDER BY (project, event_id)",
            "CREATE TABLE IF NOT EXISTS {db}.event_ids AS {db}.event_ids_local
                ENGINE = Distributed({cluster}, {db}, event_ids_local, cityHash64(project, event_id))",
        ],
    ),
    (
        3,
        &[
            // DeleteUser's tombstones: what a user had before `seq` counts nowhere from then on,
            // nor the events before `seq` of each anonymous id aliased to them then.
            "CREATE TABLE IF NOT EXISTS {db}.deleted_users_local (project String, user_id String, seq UInt64)
                ENGINE = MergeTree() ORDER BY (project, user_id, seq)",
            "CREATE TABLE IF NOT EXISTS {db}.deleted_users AS {db}.deleted_users_local
                ENGINE = Distributed({cluster}, {db}, deleted_users_local, cityHash64(user_id))",
            "CREATE TABLE IF NOT EXISTS {db}.deleted_anonymous_local (project String, anonymous_id String, seq UInt64)
                ENGINE = MergeTree() ORDER BY (project, anonymous_id, seq)",
            "CREATE TABLE IF NOT EXISTS {db}.deleted_anonymous AS {db}.deleted_anonymous_local
                ENGINE = Distributed({cluster}, {db}, deleted_anonymous_local, cityHash64(anonymous_id))",
        ],
    ),
    (
        4,
        &[
            // Definitions (projects, keys, tracking plans, metrics, goals, cohorts,
            // experiments) by key: every change is a new row, the highest version wins, and a
            // deletion is a row with `deleted = 1`. Rows are never removed, so the row count
            // moves with every change: nodes rebuild their caches when it does.
            "CREATE TABLE IF NOT EXISTS {db}.meta_local (key String, version UInt64, deleted UInt8, value String)
                ENGINE = MergeTree() ORDER BY (key, version)",
            "CREATE TABLE IF NOT EXISTS {db}.meta AS {db}.meta_local
                ENGINE = Distributed({cluster}, {db}, meta_local, cityHash64(key))",
            // The engine's other records (quarantine changes, MANUAL metric values), encoded as
            // the embedded log's values and replayed in `seq` order.
            "CREATE TABLE IF NOT EXISTS {db}.records_local (seq UInt64, value String)
                ENGINE = MergeTree() ORDER BY seq",
            "CREATE TABLE IF NOT EXISTS {db}.records AS {db}.records_local
                ENGINE = Distributed({cluster}, {db}, records_local, cityHash64(seq))",
        ],
    ),
];

/// Which migrations a server has applied.
pub const VERSIONS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS {db}.schema_versions (version UInt32) ENGINE = MergeTree() ORDER BY version";

/// `statement` for database `db` and cluster `cluster`.
pub fn render(statement: &str, db: &str, cluster: &str) -> String {
    statement.replace("{db}", db).replace("{cluster}", cluster)
}

/// Whether `name` can stand in SQL as a database or cluster name without quoting.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_identifiers_and_fill_every_placeholder() {
        assert!(is_identifier("sextant") && is_identifier("_x1"));
        for bad in ["", "1db", "a-b", "a.b", "a b", "a`b", &"x".repeat(65)] {
            assert!(!is_identifier(bad), "{bad:?}");
        }
        for (_, statements) in MIGRATIONS {
            for statement in *statements {
                let sql = render(statement, "db", "cl");
                assert!(!sql.contains('{') && !sql.contains('}'), "{sql}");
            }
        }
        // Versions are increasing, so each one applies once and in order.
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
