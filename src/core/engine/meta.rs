//! The meta store's layout: one key per definition (`kind/project/id`, metrics with a
//! zero-padded version so keys sort by version), JSON values. The only place that knows it.

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// A stored definition's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey<'a> {
    Project(&'a str),
    EventType { project: &'a str, name: &'a str },
    Metric { project: &'a str, key: &'a str, version: u32 },
    Goal { project: &'a str, id: &'a str },
    Cohort { project: &'a str, id: &'a str },
    Experiment { project: &'a str, key: &'a str },
    Holdout { project: &'a str, key: &'a str },
    ApiKey { project: &'a str, id: &'a str },
}

/// The kinds of stored definitions, as key prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKind {
    Project,
    EventType,
    Metric,
    Goal,
    Cohort,
    Experiment,
    Holdout,
    ApiKey,
}

impl MetaKind {
    /// Every key of this kind starts with this prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            MetaKind::Project => "project/",
            MetaKind::EventType => "event_type/",
            MetaKind::Metric => "metric/",
            MetaKind::Goal => "goal/",
            MetaKind::Cohort => "cohort/",
            MetaKind::Experiment => "experiment/",
            MetaKind::Holdout => "holdout/",
            MetaKind::ApiKey => "api_key/",
        }
    }

    /// The project a key of a per-project kind belongs to.
    pub fn project_of(key: &str) -> &str {
        key.split('/').nth(1).unwrap_or_default()
    }
}

impl MetaKey<'_> {
    pub fn path(&self) -> String {
        match *self {
            MetaKey::Project(id) => format!("project/{id}"),
            MetaKey::EventType { project, name } => format!("event_type/{project}/{name}"),
            MetaKey::Metric { project, key, version } => format!("metric/{project}/{key}/{version:010}"),
            MetaKey::Goal { project, id } => format!("goal/{project}/{id}"),
            MetaKey::Cohort { project, id } => format!("cohort/{project}/{id}"),
            MetaKey::Experiment { project, key } => format!("experiment/{project}/{key}"),
            MetaKey::Holdout { project, key } => format!("holdout/{project}/{key}"),
            MetaKey::ApiKey { project, id } => format!("api_key/{project}/{id}"),
        }
    }
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(format!("encode meta: {e}")))
}

pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Storage(format!("decode {key}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_start_with_their_kind_and_versions_sort() {
        let keys = [
            (MetaKey::Project("p"), MetaKind::Project),
            (MetaKey::EventType { project: "p", name: "signup" }, MetaKind::EventType),
            (MetaKey::Metric { project: "p", key: "dau", version: 2 }, MetaKind::Metric),
            (MetaKey::Goal { project: "p", id: "g" }, MetaKind::Goal),
            (MetaKey::Cohort { project: "p", id: "c" }, MetaKind::Cohort),
            (MetaKey::Experiment { project: "p", key: "e" }, MetaKind::Experiment),
            (MetaKey::Holdout { project: "p", key: "h" }, MetaKind::Holdout),
            (MetaKey::ApiKey { project: "p", id: "k" }, MetaKind::ApiKey),
        ];
        for (key, kind) in keys {
            assert!(key.path().starts_with(kind.prefix()), "{key:?}");
            if kind != MetaKind::Project {
                assert_eq!(MetaKind::project_of(&key.path()), "p");
            }
        }
        let v = |version| MetaKey::Metric { project: "p", key: "m", version }.path();
        assert!(v(9) < v(10) && v(10) < v(100));
    }

    #[test]
    fn corrupt_values_name_their_key() {
        let err = decode::<u32>("goal/p/g", b"{").unwrap_err();
        assert!(err.to_string().contains("goal/p/g"), "{err}");
    }
}
