//! Cohorts (SPEC §6): named sets of people, static (uploaded ids) or behavioural (conditions
//! on events and traits, evaluated at query time).
//!
//! A member is a canonical person: a user id, or an anonymous id never linked to a user. An
//! evaluated cohort is a `Members` mask indexed by person id, where an aliased anonymous id
//! carries its user's membership, so scans can test any row's person directly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::catalog::validate_slug;
use crate::core::filter::{self, CompiledFilters, EventSelector, Filter};
use crate::core::model::{Micros, Value, now_micros};
use crate::core::store::person_batch::PersonBatch;
use crate::core::store::remote::{CohortCountRequest, CohortCounts, CountedEvents};
use crate::core::store::source::{EventSource, Scan};
use crate::core::store::table::NONE;
use crate::error::{Error, Result, echo};

/// Most ids one static cohort may hold.
pub const MAX_STATIC_IDS: usize = 1_000_000;
/// How deep condition groups may nest.
pub const MAX_DEPTH: usize = 16;
/// Most conditions in one cohort, over all groups.
pub const MAX_CONDITIONS: usize = 256;
const MAX_ID_BYTES: usize = 1024;
const DAY: Micros = 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeFrame {
    All,
    /// Absolute `[from, to)`.
    Range(Micros, Micros),
    /// `[now − N days, now)` at evaluation time.
    LastDays(u32),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Behavioural {
    pub selector: EventSelector,
    /// At least 1.
    pub min_count: u32,
    /// Fewer than `min_count` matching events instead.
    pub did_not: bool,
    pub frame: TimeFrame,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Condition {
    Behavioural(Behavioural),
    /// A filter whose property is `user.<trait>`.
    Trait(Filter),
    Group(ConditionGroup),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionGroup {
    /// OR when true, AND otherwise.
    pub any: bool,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Definition {
    /// Uploaded ids, sorted and unique.
    Static(Vec<String>),
    Conditions(ConditionGroup),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cohort {
    pub id: String,
    pub name: String,
    pub description: String,
    pub definition: Definition,
    pub created: Micros,
}

/// An evaluated cohort: per person id, whether the person (or the user it is aliased to) is
/// a member.
pub type Members = Arc<Vec<bool>>;

impl Cohort {
    /// Checks the definition and normalises static ids (sorted, duplicates removed).
    pub fn validate(&mut self) -> Result<()> {
        validate_slug("cohort.id", &self.id)?;
        super::bounds::check_name("cohort.name", &self.name)?;
        super::bounds::check_text("cohort.description", &self.description)?;
        match &mut self.definition {
            Definition::Static(ids) => {
                if ids.len() > MAX_STATIC_IDS {
                    return Err(Error::invalid(
                        "cohort.static_members.user_ids",
                        format!("at most {MAX_STATIC_IDS} ids, got {}", ids.len()),
                    ));
                }
                for (i, id) in ids.iter().enumerate() {
                    if id.is_empty() || id.len() > MAX_ID_BYTES || id.contains('\0') {
                        return Err(Error::invalid(
                            format!("cohort.static_members.user_ids[{i}]"),
                            format!("must be 1 to {MAX_ID_BYTES} bytes without NUL"),
                        ));
                    }
                }
                ids.sort_unstable();
                ids.dedup();
            }
            Definition::Conditions(group) => {
                let mut count = 0;
                validate_group("cohort.conditions", group, 1, &mut count)?;
            }
        }
        Ok(())
    }

    /// Uploaded ids of a static cohort (0 for dynamic ones).
    pub fn static_size(&self) -> usize {
        match &self.definition {
            Definition::Static(ids) => ids.len(),
            Definition::Conditions(_) => 0,
        }
    }
}

fn validate_group(field: &str, group: &ConditionGroup, depth: usize, count: &mut usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid(field, format!("groups nest at most {MAX_DEPTH} deep")));
    }
    if group.conditions.is_empty() {
        return Err(Error::invalid(format!("{field}.conditions"), "at least one condition is required"));
    }
    for (i, condition) in group.conditions.iter().enumerate() {
        *count += 1;
        if *count > MAX_CONDITIONS {
            return Err(Error::invalid(field, format!("at most {MAX_CONDITIONS} conditions in a cohort")));
        }
        let field = format!("{field}.conditions[{i}]");
        match condition {
            Condition::Behavioural(b) => {
                let field = format!("{field}.behavioural");
                filter::validate_selector(&format!("{field}.event"), &b.selector)?;
                if b.selector.event.is_empty() {
                    return Err(Error::invalid(format!("{field}.event.event"), "required"));
                }
                if b.min_count == 0 {
                    return Err(Error::invalid(format!("{field}.min_count"), "must be at least 1"));
                }
                match b.frame {
                    TimeFrame::Range(from, to) if from >= to => {
                        return Err(Error::invalid(format!("{field}.range"), "to must be after from"));
                    }
                    TimeFrame::LastDays(0) => {
                        return Err(Error::invalid(format!("{field}.last_days"), "must be at least 1"));
                    }
                    TimeFrame::LastDays(days) if days > 36_500 => {
                        return Err(Error::invalid(format!("{field}.last_days"), "at most 36500"));
                    }
                    _ => {}
                }
            }
            Condition::Trait(f) => {
                let field = format!("{field}.trait");
                if !filter::is_trait(&f.property) {
                    return Err(Error::invalid(
                        format!("{field}.property"),
                        format!("must be user.<trait>, got {:?}", f.property),
                    ));
                }
                filter::validate_filter(&field, f)?;
            }
            Condition::Group(inner) => validate_group(&format!("{field}.group"), inner, depth + 1, count)?,
        }
    }
    Ok(())
}

/// Evaluates a cohort at `now` over the project's current state.
pub fn evaluate(source: &impl EventSource, cohort: &Cohort, now: Micros) -> Members {
    let canonical_mask = match &cohort.definition {
        Definition::Static(ids) => {
            let mut mask = vec![false; source.canonical().len()];
            for id in ids {
                // An uploaded id names a user, or else a visitor known only by anonymous id;
                // one whose data was deleted (a user, or an id aliased to them) counts nowhere.
                let person = source.find_person(id);
                if let Some(p) = person
                    && source.canonical()[p as usize] == p
                    && source.known(p)
                {
                    mask[p as usize] = true;
                }
            }
            mask
        }
        Definition::Conditions(group) => {
            let mut mask = evaluate_group(source, group, &mut |b| evaluate_behavioural(source, b, now));
            // Only known people: with events or traits. A deleted user, kept as an id with
            // nothing left, matches no condition, not even "did not".
            for (p, member) in mask.iter_mut().enumerate() {
                *member = *member && source.known(p as u32);
            }
            mask
        }
    };
    Arc::new(source.canonical().iter().map(|&c| canonical_mask[c as usize]).collect())
}

/// What evaluating a cohort's conditions reads: only the events its behavioural conditions
/// name, when every member must have such an event or a trait that is set (the people a
/// narrowed read returns: those with the events read, and every user with traits, which are
/// read only when a condition is on traits). A "did not" condition, or a trait condition that
/// a missing trait passes, can take in people with none of those events: then everything.
pub fn fetch(cohort: &Cohort) -> crate::core::store::remote::Fetch {
    use crate::core::store::remote::Fetch;
    let Definition::Conditions(group) = &cohort.definition else {
        return Fetch::everything();
    };
    if !bounded_group(group) {
        return Fetch::everything();
    }
    let mut names = Vec::new();
    let traits = collect_names(group, &mut names);
    names.sort();
    names.dedup();
    Fetch { names: Some(names), traits, ..Fetch::everything() }
}

/// Whether every member of `group` has an event one of its behavioural conditions counts, or
/// a trait that is set.
fn bounded_group(group: &ConditionGroup) -> bool {
    let bounded = |condition: &Condition| match condition {
        Condition::Behavioural(b) => !b.did_not,
        Condition::Trait(f) => match f.op {
            filter::FilterOp::Eq | filter::FilterOp::In => {
                !f.values.iter().any(|v| matches!(v, crate::core::model::Value::Null))
            }
            filter::FilterOp::Gt
            | filter::FilterOp::Gte
            | filter::FilterOp::Lt
            | filter::FilterOp::Lte
            | filter::FilterOp::Contains
            | filter::FilterOp::IsSet => true,
            filter::FilterOp::Neq | filter::FilterOp::NotIn | filter::FilterOp::IsNotSet => false,
        },
        Condition::Group(inner) => bounded_group(inner),
    };
    if group.any {
        !group.conditions.is_empty() && group.conditions.iter().all(bounded)
    } else {
        group.conditions.iter().any(bounded)
    }
}

/// Collects the events `group` names; true when it reads traits (a trait condition, or a
/// behavioural condition's filter on a trait).
fn collect_names(group: &ConditionGroup, names: &mut Vec<String>) -> bool {
    let mut traits = false;
    for condition in &group.conditions {
        match condition {
            Condition::Behavioural(b) => {
                names.push(b.selector.event.clone());
                traits |= b.selector.filters.iter().any(|f| filter::is_trait(&f.property));
            }
            Condition::Trait(_) => traits = true,
            Condition::Group(inner) => traits |= collect_names(inner, names),
        }
    }
    traits
}

/// Per person id, for canonical people only (other entries are unspecified); `behavioural`
/// says who passes each behavioural condition, called in `behavioural_conditions` order.
fn evaluate_group(
    source: &impl EventSource,
    group: &ConditionGroup,
    behavioural: &mut dyn FnMut(&Behavioural) -> Vec<bool>,
) -> Vec<bool> {
    let people = source.canonical().len();
    let mut result = vec![!group.any; people];
    for condition in &group.conditions {
        let pass = match condition {
            Condition::Behavioural(b) => behavioural(b),
            Condition::Trait(f) => CompiledFilters::compile(source, &[f], None).person_mask(people),
            Condition::Group(inner) => evaluate_group(source, inner, behavioural),
        };
        for (r, p) in result.iter_mut().zip(pass) {
            *r = if group.any { *r || p } else { *r && p };
        }
    }
    result
}

/// The behavioural conditions of a group and the groups in it, depth first (the order
/// `evaluate_group` meets them in).
pub fn behavioural_conditions(group: &ConditionGroup) -> Vec<&Behavioural> {
    fn collect<'a>(group: &'a ConditionGroup, found: &mut Vec<&'a Behavioural>) {
        for condition in &group.conditions {
            match condition {
                Condition::Behavioural(b) => found.push(b),
                Condition::Trait(_) => {}
                Condition::Group(inner) => collect(inner, found),
            }
        }
    }
    let mut found = Vec::new();
    collect(group, &mut found);
    found
}

/// Where a behavioural condition's events lie, evaluated at `now`.
fn frame_bounds(frame: TimeFrame, now: Micros) -> (Micros, Micros) {
    match frame {
        TimeFrame::All => (Micros::MIN, Micros::MAX),
        TimeFrame::Range(from, to) => (from, to),
        TimeFrame::LastDays(days) => (now - i64::from(days) * DAY, now),
    }
}

/// Who passes `b`, from the events `source` holds.
fn evaluate_behavioural(source: &impl EventSource, b: &Behavioural, now: Micros) -> Vec<bool> {
    let (from, to) = frame_bounds(b.frame, now);
    let mut counts = vec![0u32; source.canonical().len()];
    let name = source.names().get(&b.selector.event).unwrap_or(NONE);
    if name != NONE {
        let filters: Vec<&Filter> = b.selector.filters.iter().collect();
        let filters = CompiledFilters::compile(source, &filters, None);
        source.for_each(Scan::named(&[name]).within(from, to), |person, events| {
            if !filters.person_passes(person) {
                return;
            }
            // A source may return events outside the range too.
            let first = events.times.partition_point(|&t| t < from);
            let end = events.times.partition_point(|&t| t < to);
            let matching =
                events.rows[first..end].iter().filter(|&&row| filters.row_passes(source, row as usize)).count();
            counts[person as usize] = u32::try_from(matching).unwrap_or(u32::MAX);
        });
    }
    counts.into_iter().map(|c| (c >= b.min_count) != b.did_not).collect()
}

/// What a remote engine counts to evaluate `cohort` at `now` (`members_from_counts` finishes
/// it): `None` for filter values too large for a statement. A static cohort's ids say who is
/// in it, but only among the people known: it asks for everyone (with events, or users with
/// traits), which is a list of people, not their events.
pub fn count_request(cohort: &Cohort, now: Micros, not_before: Micros) -> Option<CohortCountRequest> {
    let group = match &cohort.definition {
        Definition::Conditions(group) => group,
        Definition::Static(_) => {
            return Some(CohortCountRequest { conditions: Vec::new(), everyone: true, with_traits: true, not_before });
        }
    };
    let conditions = behavioural_conditions(group);
    if !crate::core::metric::scan::fits_statement(conditions.iter().flat_map(|b| &b.selector.filters)) {
        return None;
    }
    let reads_traits = collect_names(group, &mut Vec::new());
    let everyone = !bounded_group(group);
    Some(CohortCountRequest {
        conditions: conditions
            .iter()
            .map(|b| {
                let (from, to) = frame_bounds(b.frame, now);
                CountedEvents {
                    name: b.selector.event.clone(),
                    from,
                    to,
                    filters: b.selector.filters.iter().filter(|f| !filter::is_trait(&f.property)).cloned().collect(),
                }
            })
            .collect(),
        everyone,
        // Everyone known: users with traits only too.
        with_traits: everyone || reads_traits,
        not_before,
    })
}

/// A cohort's members from what a remote engine counted for `count_request(cohort, …)`: its
/// people (all known: with events, or users with traits) and their counts.
pub fn members_from_counts(cohort: &Cohort, counted: CohortCounts) -> Result<MemberIds> {
    let group = match &cohort.definition {
        Definition::Conditions(group) => group,
        Definition::Static(ids) => return Ok(static_members(ids, counted)),
    };
    let conditions = behavioural_conditions(group);
    let mut traits: HashMap<String, Vec<(String, Value)>> =
        counted.traits.into_iter().filter(|(_, traits)| !traits.is_empty()).collect();
    let mut people = PersonBatch::default();
    let mut counts = vec![Vec::with_capacity(counted.people.len()); conditions.len()];
    for person in counted.people {
        let traits = if person.is_user { traits.remove(&person.id).unwrap_or_default() } else { Vec::new() };
        people.add_person(&person.id, person.is_user, traits)?;
        for (i, column) in counts.iter_mut().enumerate() {
            column.push(person.counts.get(i).copied().unwrap_or(0));
        }
    }
    for (user, traits) in traits {
        people.add_person(&user, true, traits)?;
        counts.iter_mut().for_each(|column| column.push(0));
    }
    let mut next = 0;
    let mask = evaluate_group(&people, group, &mut |b| {
        let counts = &counts[next];
        next += 1;
        let trait_filters: Vec<&Filter> = b.selector.filters.iter().filter(|f| filter::is_trait(&f.property)).collect();
        let people_pass = CompiledFilters::compile(&people, &trait_filters, None);
        let min_count = u64::from(b.min_count);
        (0..counts.len() as u32)
            .map(|p| {
                let count = if people_pass.person_passes(p) { counts[p as usize] } else { 0 };
                (count >= min_count) != b.did_not
            })
            .collect()
    });
    let mut members = MemberIds::default();
    for p in (0..mask.len() as u32).filter(|&p| mask[p as usize]) {
        members.insert(people.person_name(p), people.is_user(p));
    }
    Ok(members)
}

/// A static cohort's members among the people known (`count_request`), as `evaluate` finds
/// them: each id names a user, or else a visitor known only by that anonymous id (one aliased
/// to a user is not among the people: its events are the user's).
fn static_members(ids: &[String], counted: CohortCounts) -> MemberIds {
    let mut known = MemberIds::default();
    for person in &counted.people {
        known.insert(&person.id, person.is_user);
    }
    for (user, traits) in &counted.traits {
        if !traits.is_empty() {
            known.insert(user, true);
        }
    }
    let mut members = MemberIds::default();
    for id in ids {
        if known.contains(id, true) {
            members.insert(id, true);
        } else if known.contains(id, false) {
            members.insert(id, false);
        }
    }
    members
}

/// A cohort's members by id (`members_from_counts`): user ids, and anonymous ids no user
/// claimed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MemberIds {
    users: HashSet<String>,
    anonymous: HashSet<String>,
}

impl MemberIds {
    pub fn insert(&mut self, id: &str, is_user: bool) {
        let set = if is_user { &mut self.users } else { &mut self.anonymous };
        set.insert(id.to_owned());
    }

    pub fn contains(&self, id: &str, is_user: bool) -> bool {
        if is_user { self.users.contains(id) } else { self.anonymous.contains(id) }
    }

    pub fn len(&self) -> usize {
        self.users.len() + self.anonymous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every member's id, sorted (as `member_ids` lists them).
    pub fn sorted(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.users.iter().chain(&self.anonymous).cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// The members among `source`'s people: a person is one when the person its events count
    /// for is.
    pub fn on(&self, source: &impl EventSource) -> Members {
        let canonical = source.canonical();
        let is_member: Vec<bool> =
            (0..canonical.len() as u32).map(|p| self.contains(source.person_name(p), source.is_user(p))).collect();
        Arc::new(canonical.iter().map(|&c| is_member[c as usize]).collect())
    }
}

/// Canonical people of a mask, by id.
pub(crate) fn member_ids(source: &impl EventSource, mask: &[bool]) -> Vec<String> {
    let mut ids: Vec<String> = (0..source.canonical().len() as u32)
        .filter(|&p| source.canonical()[p as usize] == p && mask[p as usize])
        .map(|p| source.person_name(p).to_owned())
        .collect();
    ids.sort_unstable();
    ids
}

/// A project's cohorts by id.
pub type Cohorts = BTreeMap<String, Cohort>;

/// Resolves an optional `cohort_id` of a query into its members, evaluated now.
pub fn resolve(source: &impl EventSource, cohorts: &Cohorts, field: &str, cohort_id: &str) -> Result<Option<Members>> {
    if cohort_id.is_empty() {
        return Ok(None);
    }
    validate_slug(field, cohort_id)?;
    let cohort = cohorts.get(cohort_id).ok_or_else(|| {
        Error::NotFound(format!("{field}: cohort {cohort_id} not found", cohort_id = echo(cohort_id)))
    })?;
    if let Some(members) = source.counted_cohort(cohort_id) {
        return Ok(Some(members.on(source)));
    }
    Ok(Some(evaluate(source, cohort, now_micros())))
}
