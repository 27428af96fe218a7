//! Breakdowns shared by metrics, funnels, retention and cohort tables: how rows map to groups
//! (a trait of the person, or an event property), the default limit, and folding the groups
//! past the limit into `$other`.

use std::sync::Arc;

use hashbrown::HashMap;

use crate::core::filter::TRAIT_PREFIX;
use crate::core::model::Value;
use crate::core::store::source::EventSource;
use crate::core::store::table::{Cell, Interner, NONE, ValueRef};
pub use crate::core::store::trait_groups::{NO_VALUE, TraitGroups, format_number, format_time, label_of_value};

pub const DEFAULT_BREAKDOWN_LIMIT: usize = 10;
pub const OTHER: &str = "$other";

/// A request's breakdown: none when empty, else an event property or `user.<trait>` with a
/// valid name.
pub fn breakdown_of(field: &str, breakdown: String) -> crate::error::Result<Option<String>> {
    if breakdown.is_empty() {
        return Ok(None);
    }
    let name = breakdown.strip_prefix(TRAIT_PREFIX).unwrap_or(&breakdown);
    crate::core::catalog::validate_name(field, name)?;
    Ok(Some(breakdown))
}

/// A request's breakdown limit, 0 meaning the default.
pub fn breakdown_limit_or_default(limit: usize) -> usize {
    if limit == 0 { DEFAULT_BREAKDOWN_LIMIT } else { limit }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum GroupKey {
    Missing,
    Bool(bool),
    Number(u64),
    Str(u32),
    Time(i64),
}

fn group_key(cell: Option<Cell>) -> GroupKey {
    match cell {
        None | Some(Cell::Null) => GroupKey::Missing,
        Some(Cell::Bool(b)) => GroupKey::Bool(b),
        // -0.0 and 0.0 are one group.
        Some(Cell::Number(n)) => GroupKey::Number(if n == 0.0 { 0 } else { n.to_bits() }),
        Some(Cell::Str(s)) => GroupKey::Str(s),
        Some(Cell::Time(t)) => GroupKey::Time(t),
    }
}

/// The group of `row` under a breakdown by event property `key` (a new label on first sight).
fn row_group(
    key: u32,
    ids: &mut HashMap<GroupKey, u32>,
    labels: &mut Vec<String>,
    source: &impl EventSource,
    row: usize,
) -> u32 {
    let cell = if key == NONE { None } else { source.row_props(row).value_of(key) };
    let group_key = group_key(cell);
    *ids.entry(group_key).or_insert_with(|| {
        labels.push(label_of_key(group_key, source));
        labels.len() as u32 - 1
    })
}

fn label_of_key(key: GroupKey, source: &impl EventSource) -> String {
    match key {
        GroupKey::Missing => NO_VALUE.into(),
        GroupKey::Bool(b) => b.to_string(),
        GroupKey::Number(bits) => format_number(f64::from_bits(bits)),
        GroupKey::Str(s) => source.strings().resolve(s).to_owned(),
        GroupKey::Time(t) => format_time(t),
    }
}

/// How rows map to breakdown groups.
pub(crate) enum Groups {
    One,
    /// Per person id (a trait of the canonical user).
    Person(Arc<TraitGroups>),
    /// Per row, by an event property; groups are numbered in order of discovery.
    Row {
        key: u32,
        ids: HashMap<GroupKey, u32>,
        labels: Vec<String>,
        /// The strings of values grouped by `value_group` (their own ids, not the source's).
        values: Box<Interner>,
    },
}

impl Groups {
    pub(crate) fn new(source: &impl EventSource, breakdown: Option<&str>) -> Groups {
        let Some(breakdown) = breakdown else {
            return Groups::One;
        };
        match breakdown.strip_prefix(TRAIT_PREFIX) {
            Some(name) => Groups::Person(source.trait_groups(name)),
            None => Groups::Row {
                key: source.keys().get(breakdown).unwrap_or(NONE),
                ids: HashMap::new(),
                labels: Vec::new(),
                values: Box::default(),
            },
        }
    }

    /// Called per event by the scans: the common cases inline, a property breakdown not.
    #[inline]
    pub(crate) fn group(&mut self, source: &impl EventSource, person: u32, row: usize) -> u32 {
        match self {
            Groups::One => 0,
            Groups::Person(groups) => groups.group_of[person as usize],
            Groups::Row { key, ids, labels, .. } => row_group(*key, ids, labels, source, row),
        }
    }

    /// The group of a person's value of the breakdown property, for cells that carry the
    /// value instead of a row (a remote engine's partial cells). A `Groups` groups rows or
    /// values, never both.
    pub(crate) fn value_group(&mut self, person: u32, value: &Value) -> u32 {
        match self {
            Groups::One => 0,
            Groups::Person(groups) => groups.group_of[person as usize],
            Groups::Row { ids, labels, values, .. } => {
                let key = group_key(Some(ValueRef::from(value).cell(values)));
                *ids.entry(key).or_insert_with(|| {
                    labels.push(label_of_value(Some(value)));
                    labels.len() as u32 - 1
                })
            }
        }
    }

    pub(crate) fn labels(&self) -> Vec<String> {
        match self {
            Groups::One => vec![String::new()],
            Groups::Person(groups) => groups.labels.clone(),
            Groups::Row { labels, .. } => labels.clone(),
        }
    }
}

/// Ranks breakdown groups best first (`better` says which of two is, ties go by label in byte
/// order) and splits them at the breakdown limit (0: the default): the groups kept, in rank
/// order, and the rest, which the caller folds into one `$other` group. Metrics, funnels,
/// retention and cohort tables all rank and cut here.
pub fn top_groups<T, L: Ord>(
    mut groups: Vec<T>,
    limit: usize,
    label: impl Fn(&T) -> L,
    better: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> (Vec<T>, Vec<T>) {
    groups.sort_by(|a, b| better(a, b).then_with(|| label(a).cmp(&label(b))));
    let limit = breakdown_limit_or_default(limit);
    let rest = if groups.len() > limit { groups.split_off(limit) } else { Vec::new() };
    (groups, rest)
}

/// Keeps the first `limit` groups of `ranked` and maps the rest to one `$other` group: the
/// kept labels (with `$other` last when anything was folded) and a raw-group → series map.
/// Unranked groups have no rows in the range, so where they map does not matter.
pub(crate) fn fold_tail(ranked: &[usize], labels: &[String], limit: usize) -> (Vec<String>, Vec<u32>) {
    let mut remap = vec![0u32; labels.len()];
    let mut kept = Vec::new();
    for (position, &group) in ranked.iter().enumerate() {
        remap[group] = position.min(limit) as u32;
        if position < limit {
            kept.push(labels[group].clone());
        }
    }
    if ranked.len() > limit {
        kept.push(OTHER.into());
    }
    (kept, remap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_groups_rank_by_score_then_label_and_cut_at_the_limit() {
        let groups = vec![("b", 5), ("a", 5), ("c", 9), ("d", 1)];
        let (kept, rest) = top_groups(groups.clone(), 2, |g| g.0, |x, y| y.1.cmp(&x.1));
        assert_eq!(kept, vec![("c", 9), ("a", 5)]);
        assert_eq!(rest, vec![("b", 5), ("d", 1)]);
        // 0 is the default limit (10): nothing is folded here.
        let (kept, rest) = top_groups(groups, 0, |g| g.0, |x, y| y.1.cmp(&x.1));
        assert_eq!((kept.len(), rest.len()), (4, 0));
    }
}
