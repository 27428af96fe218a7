//! Funnels (SPEC §7): where people drop out of a sequence of steps.
//!
//! One pass over people, each with their rows in time order (`PersonOrder`), split across
//! the cores in contiguous parts that merge at the end. Per person, every step-1 event
//! in the range starts an attempt; an attempt fills later steps greedily with the earliest
//! unused matching event (which also makes the intervals checked by exclusions as short as
//! possible), within `window` of its step-1 event. A person counts once per step with their
//! furthest valid attempt, the earliest on ties (or every valid attempt in TOTAL_CONVERSIONS
//! mode).
//!
//! Rows are pre-classified once per person into bit masks of the steps and exclusions they
//! match (at most 64 of each), so attempts compare integers only.

use crate::core::analysis::breakdown::{Groups, OTHER, top_groups};
use crate::core::cohort::{self, Cohorts};
use crate::core::filter::{self, CompiledFilters, EventSelector, Filter};
use crate::core::model::Micros;
use crate::core::store::remote::Fetch;
use crate::core::store::source::EventSource;
use crate::core::store::source::{PersonEvents, Scan};
use crate::core::store::table::NONE;
use crate::core::time;
use crate::error::{Error, Result};

pub const MIN_STEPS: usize = 2;
pub const MAX_STEPS: usize = 64;
pub const MAX_EXCLUSIONS: usize = 64;
pub const DEFAULT_WINDOW: Micros = 14 * 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FunnelOrder {
    #[default]
    Ordered,
    Strict,
    Unordered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FunnelMode {
    #[default]
    UniqueUsers,
    TotalConversions,
}

/// An event that invalidates an attempt when it occurs strictly between the attempt's
/// `from_step` and `to_step` events (0-based; up to the last reached step when `to_step` was
/// not reached). For UNORDERED funnels, step k means the k-th step completed in time.
#[derive(Debug, Clone, PartialEq)]
pub struct Exclusion {
    pub selector: EventSelector,
    pub from_step: usize,
    pub to_step: usize,
}

#[derive(Debug, Clone, Default)]
pub struct FunnelQuery {
    pub steps: Vec<EventSelector>,
    pub from: Micros,
    pub to: Micros,
    pub window: Micros,
    pub order: FunnelOrder,
    pub mode: FunnelMode,
    /// A trait (`user.x`) or a step-1 event property.
    pub breakdown: Option<String>,
    pub breakdown_limit: usize,
    pub cohort_id: String,
    pub exclusions: Vec<Exclusion>,
    pub timezone: String,
    /// ANDed to every step.
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FunnelStep {
    pub event: String,
    pub users: u64,
    pub conversion_from_previous: f64,
    pub conversion_from_start: f64,
    pub median_seconds_from_previous: f64,
    pub mean_seconds_from_previous: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct FunnelResult {
    pub steps: Vec<FunnelStep>,
    /// With a breakdown: (value, steps), by step-1 users descending, `$other` last.
    pub breakdowns: Vec<(String, Vec<FunnelStep>)>,
}

impl FunnelQuery {
    pub fn validate(&self) -> Result<()> {
        if self.steps.len() < MIN_STEPS || self.steps.len() > MAX_STEPS {
            return Err(Error::invalid("steps", format!("{MIN_STEPS} to {MAX_STEPS} steps, got {}", self.steps.len())));
        }
        for (i, step) in self.steps.iter().enumerate() {
            filter::validate_selector(&format!("steps[{i}]"), step)?;
        }
        if self.from >= self.to {
            return Err(Error::invalid("range", "to must be after from"));
        }
        if self.window < 0 {
            return Err(Error::invalid("window", "must not be negative"));
        }
        crate::core::bounds::check_window("window", Some(self.window))?;
        if self.exclusions.len() > MAX_EXCLUSIONS {
            return Err(Error::invalid("exclusions", format!("at most {MAX_EXCLUSIONS}")));
        }
        let last = self.steps.len() - 1;
        for (i, exclusion) in self.exclusions.iter().enumerate() {
            filter::validate_selector(&format!("exclusions[{i}].event"), &exclusion.selector)?;
            if exclusion.to_step > last {
                return Err(Error::invalid(
                    format!("exclusions[{i}].to_step"),
                    format!("the funnel has {} steps", self.steps.len()),
                ));
            }
            if exclusion.from_step >= exclusion.to_step {
                return Err(Error::invalid(format!("exclusions[{i}].from_step"), "must be before to_step"));
            }
        }
        for (i, f) in self.filters.iter().enumerate() {
            filter::validate_filter(&format!("filters[{i}]"), f)?;
        }
        if let Some(breakdown) = &self.breakdown {
            let name = breakdown.strip_prefix(filter::TRAIT_PREFIX).unwrap_or(breakdown);
            crate::core::catalog::validate_name("breakdown", name)?;
        }
        time::parse_zone("timezone", &self.timezone)?;
        Ok(())
    }
}

/// Rows matching one selector (plus the query's filters).
struct StepMatcher {
    name: u32,
    filters: CompiledFilters,
}

impl StepMatcher {
    fn new(source: &impl EventSource, selector: &EventSelector, extra: &[Filter], members: Option<&[bool]>) -> Self {
        let filters: Vec<&Filter> = selector.filters.iter().chain(extra).collect();
        StepMatcher {
            name: source.names().get(&selector.event).unwrap_or(NONE),
            filters: CompiledFilters::compile(source, &filters, members),
        }
    }

    /// Whether a row already known to have this step's event name matches the filters.
    fn matches(&self, source: &impl EventSource, person: u32, row: usize) -> bool {
        self.filters.person_passes(person) && self.filters.row_passes(source, row)
    }
}

/// Per breakdown group: people (or attempts) per step and the step-to-step durations.
#[derive(Default, Clone)]
struct GroupCounts {
    users: Vec<u64>,
    /// Per step: microseconds from the previous step, one entry per counted attempt.
    durations: Vec<Vec<Micros>>,
}

impl GroupCounts {
    fn new(steps: usize) -> Self {
        GroupCounts { users: vec![0; steps], durations: vec![Vec::new(); steps] }
    }

    fn add(&mut self, times: &[Micros]) {
        for (k, count) in self.users.iter_mut().enumerate().take(times.len()) {
            *count += 1;
            if k > 0 {
                self.durations[k].push(times[k] - times[k - 1]);
            }
        }
    }

    fn merge(&mut self, other: GroupCounts) {
        for (k, (users, durations)) in other.users.into_iter().zip(other.durations).enumerate() {
            self.users[k] += users;
            self.durations[k].extend(durations);
        }
    }

    fn steps(mut self, events: &[String]) -> Vec<FunnelStep> {
        let first = self.users[0];
        (0..self.users.len())
            .map(|k| {
                let users = self.users[k];
                let previous = if k == 0 { users } else { self.users[k - 1] };
                let (median, mean) = median_and_mean(&mut self.durations[k]);
                FunnelStep {
                    event: events[k].clone(),
                    users,
                    conversion_from_previous: if k == 0 {
                        1.0
                    } else if previous == 0 {
                        0.0
                    } else {
                        users as f64 / previous as f64
                    },
                    conversion_from_start: if first == 0 { 0.0 } else { users as f64 / first as f64 },
                    median_seconds_from_previous: median,
                    mean_seconds_from_previous: mean,
                }
            })
            .collect()
    }
}

/// The median (mean of the two middle values for an even count) and the mean of durations,
/// in seconds; 0 for none. Sums are exact integers, so the mean is rounded once.
fn median_and_mean(durations: &mut [Micros]) -> (f64, f64) {
    if durations.is_empty() {
        return (0.0, 0.0);
    }
    durations.sort_unstable();
    let n = durations.len();
    let median = if n % 2 == 1 {
        durations[n / 2] as f64 / 1e6
    } else {
        (durations[n / 2 - 1] as f64 + durations[n / 2] as f64) / 2.0 / 1e6
    };
    let sum: i128 = durations.iter().map(|&d| i128::from(d)).sum();
    (median, sum as f64 / n as f64 / 1e6)
}

/// A person's rows, pre-classified.
#[derive(Default)]
struct Timeline {
    times: Vec<Micros>,
    rows: Vec<u32>,
    steps: Vec<u64>,
    exclusions: Vec<u64>,
}

/// One attempt's result: the positions in the timeline filling its steps, in step order
/// (in completion order for UNORDERED).
struct Attempt {
    positions: [u32; MAX_STEPS],
    reached: usize,
}

impl Timeline {
    /// The first position whose time is at least `t`.
    fn lower_bound(&self, t: Micros) -> usize {
        self.times.partition_point(|&x| x < t)
    }

    fn attempt(&self, start: usize, n: usize, window: Micros, order: FunnelOrder) -> Attempt {
        let mut attempt = Attempt { positions: [0; MAX_STEPS], reached: 1 };
        attempt.positions[0] = start as u32;
        let t1 = self.times[start];
        let deadline = t1.saturating_add(window);
        let used = |attempt: &Attempt, p: usize| attempt.positions[..attempt.reached].contains(&(p as u32));
        match order {
            FunnelOrder::Ordered | FunnelOrder::Strict => {
                for k in 1..n {
                    let previous = self.times[attempt.positions[k - 1] as usize];
                    // STRICT: nothing strictly between consecutive steps, so step k can be no
                    // later than the person's next event time after step k−1.
                    let latest = if order == FunnelOrder::Strict {
                        let after = self.times.partition_point(|&x| x <= previous);
                        self.times.get(after).copied().unwrap_or(previous).min(deadline)
                    } else {
                        deadline
                    };
                    let bit = 1u64 << k;
                    let found = (self.lower_bound(previous)..self.times.len())
                        .take_while(|&p| self.times[p] <= latest)
                        .find(|&p| self.steps[p] & bit != 0 && !used(&attempt, p));
                    let Some(p) = found else { break };
                    attempt.positions[k] = p as u32;
                    attempt.reached = k + 1;
                }
            }
            FunnelOrder::Unordered => {
                let begin = self.lower_bound(t1);
                for k in 1..n {
                    let bit = 1u64 << k;
                    let found = (begin..self.times.len())
                        .take_while(|&p| self.times[p] <= deadline)
                        .find(|&p| self.steps[p] & bit != 0 && !used(&attempt, p));
                    if let Some(p) = found {
                        attempt.positions[attempt.reached] = p as u32;
                        attempt.reached += 1;
                    }
                }
                // Steps count in the order they were completed.
                attempt.positions[..attempt.reached].sort_unstable_by_key(|&p| (self.times[p as usize], p));
            }
        }
        attempt
    }

    /// Whether an excluded event falls strictly between two of the attempt's steps.
    fn excluded(&self, attempt: &Attempt, exclusions: &[Exclusion]) -> bool {
        exclusions.iter().enumerate().any(|(e, exclusion)| {
            if attempt.reached <= exclusion.from_step + 1 {
                return false;
            }
            let last = exclusion.to_step.min(attempt.reached - 1);
            let after = self.times[attempt.positions[exclusion.from_step] as usize];
            let before = self.times[attempt.positions[last] as usize];
            let bit = 1u64 << e;
            let first = self.times.partition_point(|&x| x <= after);
            (first..self.times.len()).take_while(|&p| self.times[p] < before).any(|p| self.exclusions[p] & bit != 0)
        })
    }

    fn step_times(&self, attempt: &Attempt, out: &mut Vec<Micros>) {
        out.clear();
        out.extend(attempt.positions[..attempt.reached].iter().map(|&p| self.times[p as usize]));
    }
}

/// What `run` reads of the events, for a store that fetches them first (a remote engine): the
/// steps' and exclusions' events from `from` to a window after `to` (see the scan in `run`),
/// with traits only when a filter or the breakdown is on one; or everything when a cohort
/// (unless the remote engine counted its members: `cohort_counted`) or the STRICT order
/// needs other events.
pub fn fetch(query: &FunnelQuery, cohort_counted: bool) -> Fetch {
    let selectors = || query.steps.iter().chain(query.exclusions.iter().map(|e| &e.selector));
    let names: Vec<String> = selectors().map(|s| s.event.clone()).collect();
    let cohort_read = !query.cohort_id.is_empty() && !cohort_counted;
    if cohort_read || query.order == FunnelOrder::Strict || names.iter().any(String::is_empty) {
        return Fetch::everything();
    }
    let filters = selectors().flat_map(|s| &s.filters).chain(&query.filters);
    Fetch {
        names: Some(names),
        from: query.from,
        to: query.to.saturating_add(query.window),
        traits: crate::core::filter::on_traits(filters, query.breakdown.as_deref()),
        ..Fetch::everything()
    }
}

/// Runs a funnel over the project's current state.
pub fn run(source: &impl EventSource, cohorts: &Cohorts, query: &FunnelQuery) -> Result<FunnelResult> {
    let members = cohort::resolve(source, cohorts, "cohort_id", &query.cohort_id)?;
    let members = members.as_ref().map(|m| m.as_slice());
    let n = query.steps.len();
    let steps: Vec<StepMatcher> =
        query.steps.iter().map(|s| StepMatcher::new(source, s, &query.filters, members)).collect();
    let exclusions: Vec<StepMatcher> =
        query.exclusions.iter().map(|e| StepMatcher::new(source, &e.selector, &[], None)).collect();
    // Per event name: the steps and exclusions it may fill, so most rows cost one lookup.
    let names_by_step = |matchers: &[StepMatcher]| {
        let mut masks = vec![0u64; source.names().len()];
        for (k, matcher) in matchers.iter().enumerate() {
            if matcher.name != NONE {
                masks[matcher.name as usize] |= 1 << k;
            }
        }
        masks
    };
    let step_masks = names_by_step(&steps);
    let exclusion_masks = names_by_step(&exclusions);
    // STRICT needs every event (any event breaks the sequence); other orders only the rows
    // that may fill a step or void an attempt.
    let keep_every_row = query.order == FunnelOrder::Strict;
    let matching = |matchers: &[StepMatcher], mut candidates: u64, person: u32, row: usize| {
        let mut bits = 0u64;
        while candidates != 0 {
            let k = candidates.trailing_zeros() as usize;
            if matchers[k].matches(source, person, row) {
                bits |= 1 << k;
            }
            candidates &= candidates - 1;
        }
        bits
    };

    /// One thread's share: its own breakdown groups, counts and scratch space.
    struct Part {
        groups: Groups,
        counts: Vec<GroupCounts>,
        timeline: Timeline,
        times: Vec<Micros>,
    }
    impl Part {
        fn add(&mut self, source: &impl EventSource, person: u32, start: usize, attempt: &Attempt, n: usize) {
            let group = self.groups.group(source, person, self.timeline.rows[start] as usize) as usize;
            if self.counts.len() <= group {
                self.counts.resize(group + 1, GroupCounts::new(n));
            }
            self.timeline.step_times(attempt, &mut self.times);
            self.counts[group].add(&self.times);
        }
    }
    let new_part = || Part {
        groups: Groups::new(source, query.breakdown.as_deref()),
        counts: Vec::new(),
        timeline: Timeline::default(),
        times: Vec::with_capacity(n),
    };
    let visit = |part: &mut Part, person: u32, events: PersonEvents<'_>| {
        if !steps[0].filters.person_passes(person) {
            return;
        }
        let timeline = &mut part.timeline;
        timeline.times.clear();
        timeline.rows.clear();
        timeline.steps.clear();
        timeline.exclusions.clear();
        let mut any_entry = false;
        for (i, &row) in events.rows.iter().enumerate() {
            let name = events.names[i] as usize;
            let (step_candidates, exclusion_candidates) = (step_masks[name], exclusion_masks[name]);
            if step_candidates | exclusion_candidates == 0 && !keep_every_row {
                continue;
            }
            let step_bits = matching(&steps, step_candidates, person, row as usize);
            let exclusion_bits = matching(&exclusions, exclusion_candidates, person, row as usize);
            let t = events.times[i];
            any_entry |= step_bits & 1 != 0 && t >= query.from && t < query.to;
            timeline.times.push(t);
            timeline.rows.push(row);
            timeline.steps.push(step_bits);
            timeline.exclusions.push(exclusion_bits);
        }
        if !any_entry {
            return;
        }
        let mut best: Option<Attempt> = None;
        for start in 0..part.timeline.times.len() {
            let timeline = &part.timeline;
            let t = timeline.times[start];
            if timeline.steps[start] & 1 == 0 || t < query.from || t >= query.to {
                continue;
            }
            let attempt = timeline.attempt(start, n, query.window, query.order);
            if timeline.excluded(&attempt, &query.exclusions) {
                continue;
            }
            if query.mode == FunnelMode::TotalConversions {
                part.add(source, person, start, &attempt, n);
                continue;
            }
            let better = best.as_ref().is_none_or(|b| attempt.reached > b.reached);
            let complete = attempt.reached == n;
            if better {
                best = Some(attempt);
            }
            if complete {
                break;
            }
        }
        if let Some(best) = best {
            part.add(source, person, best.positions[0] as usize, &best, n);
        }
    };
    let parts = if steps[0].name == NONE {
        Vec::new()
    } else {
        // Other orders than STRICT read only the steps' and exclusions' events.
        let names: Vec<u32> = steps.iter().chain(&exclusions).map(|m| m.name).collect();
        let scan = if keep_every_row { Scan::all() } else { Scan::named(&names) };
        // Entries in [from, to), later steps up to a window after the last entry.
        source.fold_parts(scan.within(query.from, query.to.saturating_add(query.window)), new_part, visit)
    };
    // Parts number breakdown values in their own order: merge them by label.
    let mut by_label: hashbrown::HashMap<String, GroupCounts> = hashbrown::HashMap::new();
    for part in parts {
        let part_labels = part.groups.labels();
        for (group, group_counts) in part.counts.into_iter().enumerate() {
            match by_label.get_mut(&part_labels[group]) {
                Some(into) => into.merge(group_counts),
                None => {
                    by_label.insert(part_labels[group].clone(), group_counts);
                }
            }
        }
    }
    let (labels, mut counts): (Vec<String>, Vec<GroupCounts>) = by_label.into_iter().unzip();

    let events: Vec<String> = query.steps.iter().map(|s| s.event.clone()).collect();
    let mut total = GroupCounts::new(n);
    if query.breakdown.is_none() {
        if let Some(only) = counts.pop() {
            total = only;
        }
        return Ok(FunnelResult { steps: total.steps(&events), breakdowns: Vec::new() });
    }
    let entered: Vec<(usize, GroupCounts)> = counts.into_iter().enumerate().filter(|(_, c)| c.users[0] > 0).collect();
    let (kept, rest) = top_groups(
        entered,
        query.breakdown_limit,
        |(g, _)| labels[*g].as_str(),
        |a, b| b.1.users[0].cmp(&a.1.users[0]),
    );
    let mut breakdowns = Vec::new();
    let mut other: Option<GroupCounts> = None;
    for (group, group_counts) in kept {
        total.merge(group_counts.clone());
        breakdowns.push((labels[group].clone(), group_counts));
    }
    for (_, group_counts) in rest {
        total.merge(group_counts.clone());
        other.get_or_insert_with(|| GroupCounts::new(n)).merge(group_counts);
    }
    if let Some(other) = other {
        breakdowns.push((OTHER.to_owned(), other));
    }
    Ok(FunnelResult {
        steps: total.steps(&events),
        breakdowns: breakdowns.into_iter().map(|(label, c)| (label, c.steps(&events))).collect(),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::model::Event;
    use crate::core::store::ProjectData;

    const MINUTE: Micros = 60_000_000;
    const NAMES: [&str; 4] = ["A", "B", "C", "X"];

    fn state(events: &[(u8, u8, u8)]) -> ProjectData {
        let mut state = ProjectData::default();
        for (i, &(user, name, minute)) in events.iter().enumerate() {
            state.table.push(&Event {
                event_id: format!("e{i}"),
                name: NAMES[name as usize].into(),
                user_id: format!("u{user}"),
                anonymous_id: String::new(),
                timestamp: i64::from(minute) * MINUTE,
                properties: vec![],
            });
        }
        state
    }

    fn query(order: FunnelOrder, mode: FunnelMode) -> FunnelQuery {
        FunnelQuery {
            steps: ["A", "B", "C"].iter().map(|s| EventSelector { event: s.to_string(), filters: vec![] }).collect(),
            from: 0,
            to: 20 * MINUTE,
            window: 10 * MINUTE,
            order,
            mode,
            ..Default::default()
        }
    }

    fn users(state: &ProjectData, order: FunnelOrder, mode: FunnelMode) -> Vec<u64> {
        run(&state.source(), &Cohorts::new(), &query(order, mode)).unwrap().steps.iter().map(|s| s.users).collect()
    }

    /// The furthest ORDERED step any attempt of a user reaches, by trying every chain.
    fn brute_force_ordered(events: &[(u8, u8, u8)], user: u8) -> usize {
        let mine: Vec<(u8, Micros)> =
            events.iter().filter(|e| e.0 == user).map(|e| (e.1, i64::from(e.2) * MINUTE)).collect();
        fn extend(mine: &[(u8, Micros)], used: &mut Vec<usize>, t1: Micros, step: u8) -> usize {
            if step == 3 {
                return 3;
            }
            let previous = mine[*used.last().expect("a step-1 event")].1;
            let mut best = step as usize;
            for (i, &(name, t)) in mine.iter().enumerate() {
                if name == step && t >= previous && t - t1 <= 10 * MINUTE && !used.contains(&i) {
                    used.push(i);
                    best = best.max(extend(mine, used, t1, step + 1));
                    used.pop();
                }
            }
            best
        }
        (0..mine.len())
            .filter(|&i| mine[i].0 == 0 && mine[i].1 < 20 * MINUTE)
            .map(|i| extend(&mine, &mut vec![i], mine[i].1, 1))
            .max()
            .unwrap_or(0)
    }

    proptest! {
        #[test]
        fn funnel_invariants(events in proptest::collection::vec((0u8..4, 0u8..4, 0u8..30), 0..40)) {
            let state = state(&events);
            let ordered = users(&state, FunnelOrder::Ordered, FunnelMode::UniqueUsers);
            let strict = users(&state, FunnelOrder::Strict, FunnelMode::UniqueUsers);
            let unordered = users(&state, FunnelOrder::Unordered, FunnelMode::UniqueUsers);
            let attempts = users(&state, FunnelOrder::Ordered, FunnelMode::TotalConversions);
            for counts in [&ordered, &strict, &unordered, &attempts] {
                prop_assert!(counts.windows(2).all(|w| w[0] >= w[1]), "steps never grow: {counts:?}");
            }
            // Entry depends on step 1 only; a strict chain is an ordered one, which is an
            // unordered one; every user counted has at least one attempt.
            prop_assert_eq!(strict[0], ordered[0]);
            prop_assert_eq!(unordered[0], ordered[0]);
            for k in 0..3 {
                prop_assert!(strict[k] <= ordered[k] && ordered[k] <= unordered[k]);
                prop_assert!(attempts[k] >= ordered[k]);
            }
            // Greedy earliest filling reaches as far as any chain would.
            let mut expected = vec![0u64; 3];
            for user in 0..4 {
                for count in expected.iter_mut().take(brute_force_ordered(&events, user)) {
                    *count += 1;
                }
            }
            prop_assert_eq!(ordered, expected);
        }
    }
}
