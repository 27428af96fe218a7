//! Multi-touch attribution (SPEC §15): conversions credited to the marketing channels that
//! touched the person in the lookback window before, with spend, CAC, ROAS and ROI per channel.
//!
//! One pass over people in person order (`PersonOrder`, the funnels' scan: a person's own and
//! aliased anonymous rows together, in time order), split across cores in contiguous parts.
//! Per person the touches and conversions are picked out once; each conversion's touches are a
//! contiguous slice of the person's touches, found by binary search.

use hashbrown::HashMap;

use crate::core::cohort::{self, Cohorts};
use crate::core::filter::{self, EventSelector, row_number};
use crate::core::metric::definition::{MetricBook, MetricKind};
use crate::core::metric::scan::Matcher;
use crate::core::model::{Micros, Value};
use crate::core::store::remote::Fetch;
use crate::core::store::source::EventSource;
use crate::core::store::source::{PersonEvents, Scan};
use crate::core::store::table::{Cell, NONE};
use crate::error::{Error, Result};

pub const DAY: Micros = 86_400_000_000;
pub const DEFAULT_LOOKBACK: Micros = 30 * DAY;
pub const DEFAULT_HALF_LIFE: Micros = 7 * DAY;
/// The channel of conversions without a touch.
pub const DIRECT: &str = "$direct";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttributionModel {
    #[default]
    LastTouch,
    FirstTouch,
    Linear,
    PositionBased,
    TimeDecay,
    Participation,
}

impl AttributionModel {
    /// Every model, in declaration order.
    pub const ALL: [AttributionModel; 6] = [
        AttributionModel::LastTouch,
        AttributionModel::FirstTouch,
        AttributionModel::Linear,
        AttributionModel::PositionBased,
        AttributionModel::TimeDecay,
        AttributionModel::Participation,
    ];
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttributionQuery {
    pub conversion: EventSelector,
    pub touch: EventSelector,
    /// The touch property naming the channel, e.g. `utm_source`.
    pub channel_property: String,
    pub model: AttributionModel,
    pub lookback: Micros,
    pub half_life: Micros,
    pub from: Micros,
    pub to: Micros,
    /// Numeric conversion property giving its value; empty: every value is 0.
    pub value_property: String,
    /// A MANUAL metric whose values carry a dimension named like `channel_property`.
    pub spend_metric_key: String,
    pub first_conversion_only: bool,
    pub cohort_id: String,
}

impl Default for AttributionQuery {
    fn default() -> Self {
        AttributionQuery {
            conversion: EventSelector::default(),
            touch: EventSelector::default(),
            channel_property: String::new(),
            model: AttributionModel::default(),
            lookback: DEFAULT_LOOKBACK,
            half_life: DEFAULT_HALF_LIFE,
            from: 0,
            to: 0,
            value_property: String::new(),
            spend_metric_key: String::new(),
            first_conversion_only: false,
            cohort_id: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttributionRow {
    pub channel: String,
    pub credit: f64,
    pub value_credit: f64,
    pub influenced: u64,
    pub spend: f64,
    pub cost_per_conversion: f64,
    pub roas: f64,
    pub roi: f64,
    pub has_spend: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Attribution {
    pub conversions: u64,
    pub value: f64,
    /// By credit descending, then channel ascending (byte order).
    pub rows: Vec<AttributionRow>,
    /// Spend in range over every channel, also those without a row.
    pub total_spend: f64,
}

impl AttributionQuery {
    pub fn validate(&self) -> Result<()> {
        filter::validate_selector("conversion", &self.conversion)?;
        filter::validate_selector("touch", &self.touch)?;
        if self.channel_property.is_empty() {
            return Err(Error::invalid("channel_property", "required, e.g. utm_source"));
        }
        crate::core::catalog::validate_name("channel_property", &self.channel_property)?;
        if !self.value_property.is_empty() {
            crate::core::catalog::validate_name("value_property", &self.value_property)?;
        }
        if self.from >= self.to {
            return Err(Error::invalid("range", "to must be after from"));
        }
        if self.lookback < 0 {
            return Err(Error::invalid("lookback", "must not be negative"));
        }
        if self.half_life <= 0 {
            return Err(Error::invalid("half_life", "must be positive"));
        }
        if !self.spend_metric_key.is_empty() {
            crate::core::catalog::validate_slug("spend_metric_key", &self.spend_metric_key)?;
        }
        Ok(())
    }
}

/// Each touch's share of one conversion, for its touches ordered by (time, event_id) with
/// their `times` and `channels`. Every model but PARTICIPATION gives shares summing to 1;
/// PARTICIPATION gives 1 to the first touch of each distinct channel. TIME_DECAY weighs a
/// touch at tᵢ by 2^(−(T − tᵢ)/half_life); normalised, the shares do not depend on T.
pub fn fractions(model: AttributionModel, times: &[Micros], channels: &[u32], half_life: Micros, out: &mut Vec<f64>) {
    let n = times.len();
    out.clear();
    out.resize(n, 0.0);
    if n == 0 {
        return;
    }
    match model {
        AttributionModel::FirstTouch => out[0] = 1.0,
        AttributionModel::LastTouch => out[n - 1] = 1.0,
        AttributionModel::Linear => out.iter_mut().for_each(|f| *f = 1.0 / n as f64),
        AttributionModel::PositionBased => match n {
            1 => out[0] = 1.0,
            2 => out.iter_mut().for_each(|f| *f = 0.5),
            _ => {
                let middle = 0.2 / (n - 2) as f64;
                out.iter_mut().for_each(|f| *f = middle);
                (out[0], out[n - 1]) = (0.4, 0.4);
            }
        },
        AttributionModel::TimeDecay => {
            // 2^(−(t − tᵢ)/h), scaled by 2^((t − t_last)/h) so the latest weight is 1: the same
            // shares, without underflow when every touch is many half-lives old.
            let last = times[n - 1];
            for (f, &ti) in out.iter_mut().zip(times) {
                *f = (-((last - ti) as f64) / half_life as f64).exp2();
            }
            let total: f64 = out.iter().sum();
            out.iter_mut().for_each(|f| *f /= total);
        }
        AttributionModel::Participation => {
            for i in 0..n {
                if !channels[..i].contains(&channels[i]) {
                    out[i] = 1.0;
                }
            }
        }
    }
}

/// Credit gathered for one channel.
#[derive(Debug, Clone, Copy, Default)]
struct Credit {
    credit: f64,
    value_credit: f64,
    influenced: u64,
}

/// One thread's share of the scan.
#[derive(Default)]
struct Part {
    /// By channel string id; `NONE` is `$direct`.
    channels: HashMap<u32, Credit>,
    conversions: u64,
    value: f64,
    /// Scratch: the person's touches (time, row, channel) and conversions (time, row).
    touches: Vec<(Micros, u32, u32)>,
    converted: Vec<(Micros, u32)>,
    times: Vec<Micros>,
    channel_ids: Vec<u32>,
    shares: Vec<f64>,
    distinct: Vec<u32>,
}

/// Sorts runs of equal times by event id: rows arrive ordered by (time, arrival).
fn order_ties<T>(items: &mut [T], key: impl Fn(&T) -> (Micros, u32), source: &impl EventSource) {
    if items.windows(2).any(|w| key(&w[0]).0 == key(&w[1]).0) {
        // Each id decoded once (ids are stored compressed); the sort is stable.
        items.sort_by_cached_key(|item| {
            let (time, row) = key(item);
            (time, source.row_event_id(row as usize).into_owned())
        });
    }
}

/// What `run` reads of the events, for a store that fetches them first (a remote engine): the
/// conversion and touch events from a lookback before `from` to `to`, with traits only when a
/// selector filters on one; everything when a selector names no event or the cohort is
/// evaluated over the events read (a cohort the remote engine did not count:
/// `cohort_counted` false).
pub fn fetch(query: &AttributionQuery, cohort_counted: bool) -> Fetch {
    let names = vec![query.conversion.event.clone(), query.touch.event.clone()];
    if (!query.cohort_id.is_empty() && !cohort_counted) || names.iter().any(String::is_empty) {
        return Fetch::everything();
    }
    let filters = query.conversion.filters.iter().chain(&query.touch.filters);
    Fetch {
        names: Some(names),
        from: query.from.saturating_sub(query.lookback),
        to: query.to,
        traits: filter::on_traits(filters, None),
        ..Fetch::everything()
    }
}

/// Runs an attribution query over the project's current state.
pub fn run(
    source: &impl EventSource,
    metrics: &MetricBook,
    cohorts: &Cohorts,
    query: &AttributionQuery,
) -> Result<Attribution> {
    let spend = spend_by_channel(source, metrics, query)?;
    let members = cohort::resolve(source, cohorts, "cohort_id", &query.cohort_id)?;
    let conversion = Matcher::new(source, &query.conversion, &[], members.as_ref());
    let touch = Matcher::new(source, &query.touch, &[], None);
    let channel_key = source.keys().get(&query.channel_property).unwrap_or(NONE);
    let value_key =
        if query.value_property.is_empty() { NONE } else { source.keys().get(&query.value_property).unwrap_or(NONE) };
    let empty = source.strings().get("").unwrap_or(NONE);
    let channel_of = |row: usize| -> Option<u32> {
        if channel_key == NONE {
            return None;
        }
        match source.row_props(row).value_of(channel_key)? {
            Cell::Str(id) if id != empty => Some(id),
            _ => None,
        }
    };
    let earliest_touch = query.from.saturating_sub(query.lookback);
    // The touches' channels as a column of the touch event's rows, when the source keeps one.
    let channels =
        (channel_key != NONE && touch.name() != NONE).then(|| source.string_ids(touch.name(), channel_key)).flatten();
    let channel_at = |events: &PersonEvents<'_>, i: usize| -> Option<u32> {
        let id = match (&channels, events.position(i)) {
            (Some(channels), Some(at)) => channels[at],
            _ => return channel_of(events.rows[i] as usize),
        };
        (id != NONE && id != empty).then_some(id)
    };

    let visit = |part: &mut Part, person: u32, events: PersonEvents<'_>| {
        part.touches.clear();
        part.converted.clear();
        for (i, &row) in events.rows.iter().enumerate() {
            let t = events.times[i];
            if t >= query.from.max(earliest_touch)
                && t < query.to
                && conversion.matches_event(events.names[i], source, person, row as usize)
            {
                part.converted.push((t, row));
            }
        }
        // Touches only matter to people who converted (most touching people did not: their
        // channels are not read).
        if part.converted.is_empty() {
            return;
        }
        for (i, &row) in events.rows.iter().enumerate() {
            let t = events.times[i];
            if t < earliest_touch || t >= query.to {
                continue;
            }
            let r = row as usize;
            if touch.matches_event(events.names[i], source, person, r)
                && let Some(channel) = channel_at(&events, i)
            {
                part.touches.push((t, row, channel));
            }
        }
        order_ties(&mut part.converted, |c| *c, source);
        order_ties(&mut part.touches, |c| (c.0, c.1), source);
        if query.first_conversion_only {
            part.converted.truncate(1);
        }
        part.times.clear();
        part.times.extend(part.touches.iter().map(|c| c.0));
        part.channel_ids.clear();
        part.channel_ids.extend(part.touches.iter().map(|c| c.2));
        for k in 0..part.converted.len() {
            let (t, row) = part.converted[k];
            let value = if value_key == NONE {
                0.0
            } else {
                row_number(source.row_props(row as usize), value_key).unwrap_or(0.0)
            };
            part.conversions += 1;
            part.value += value;
            let lo = part.times.partition_point(|&x| x < t.saturating_sub(query.lookback));
            let hi = part.times.partition_point(|&x| x <= t);
            if lo == hi {
                let direct = part.channels.entry(NONE).or_default();
                direct.credit += 1.0;
                direct.value_credit += value;
                direct.influenced += 1;
                continue;
            }
            let (times, channels) = (&part.times[lo..hi], &part.channel_ids[lo..hi]);
            fractions(query.model, times, channels, query.half_life, &mut part.shares);
            part.distinct.clear();
            for (i, &channel) in channels.iter().enumerate() {
                let entry = part.channels.entry(channel).or_default();
                entry.credit += part.shares[i];
                entry.value_credit += value * part.shares[i];
                if !part.distinct.contains(&channel) {
                    part.distinct.push(channel);
                    entry.influenced += 1;
                }
            }
        }
    };
    let parts = if conversion.name() == NONE {
        Vec::new()
    } else {
        // Only conversions and touches are read: people without a conversion add nothing.
        let names = [conversion.name(), touch.name()];
        source.fold_parts(Scan::named(&names).within(earliest_touch, query.to), Part::default, visit)
    };

    let mut result = Attribution { total_spend: spend.values().sum(), ..Default::default() };
    let mut merged: HashMap<u32, Credit> = HashMap::new();
    for part in parts {
        result.conversions += part.conversions;
        result.value += part.value;
        for (channel, c) in part.channels {
            let into = merged.entry(channel).or_default();
            into.credit += c.credit;
            into.value_credit += c.value_credit;
            into.influenced += c.influenced;
        }
    }
    result.rows = merged
        .into_iter()
        .map(|(channel, c)| {
            let channel =
                if channel == NONE { DIRECT.to_owned() } else { source.strings().resolve(channel).to_owned() };
            let spend = spend.get(&channel).copied().unwrap_or(0.0);
            economics(channel, c.credit, c.value_credit, c.influenced, spend)
        })
        .collect();
    result
        .rows
        .sort_by(|a, b| b.credit.total_cmp(&a.credit).then_with(|| a.channel.as_bytes().cmp(b.channel.as_bytes())));
    Ok(result)
}

/// A row with its spend ratios: defined when spend > 0 (CAC 0 when the credit is 0).
fn economics(channel: String, credit: f64, value_credit: f64, influenced: u64, spend: f64) -> AttributionRow {
    let mut row = AttributionRow { channel, credit, value_credit, influenced, spend, ..Default::default() };
    if spend > 0.0 {
        row.has_spend = true;
        row.cost_per_conversion = if credit > 0.0 { spend / credit } else { 0.0 };
        row.roas = value_credit / spend;
        row.roi = (value_credit - spend) / spend;
    }
    row
}

/// Spend per channel in the query's range: the MANUAL metric's values whose dimension named
/// like the channel property holds the channel (a string).
fn spend_by_channel(
    source: &impl EventSource,
    metrics: &MetricBook,
    query: &AttributionQuery,
) -> Result<HashMap<String, f64>> {
    let mut spend = HashMap::new();
    let key = &query.spend_metric_key;
    if key.is_empty() {
        return Ok(spend);
    }
    let metric = metrics
        .get(key)
        .and_then(|versions| versions.last())
        .ok_or_else(|| Error::NotFound(format!("spend_metric_key: metric {key:?} not found")))?;
    if metric.kind != MetricKind::Manual {
        return Err(Error::invalid("spend_metric_key", format!("metric {key:?} is {:?}, not MANUAL", metric.kind)));
    }
    let Some(values) = source.manual(key) else {
        return Ok(spend);
    };
    for value in values.values() {
        if value.timestamp < query.from || value.timestamp >= query.to {
            continue;
        }
        let channel = value.dimensions.iter().find(|(name, _)| *name == query.channel_property);
        if let Some((_, Value::String(channel))) = channel {
            *spend.entry(channel.clone()).or_insert(0.0) += value.value;
        }
    }
    Ok(spend)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::model::Event;
    use crate::core::store::ProjectData;

    const MINUTE: Micros = 60_000_000;

    fn shares(model: AttributionModel, times: &[Micros], channels: &[u32], half_life: Micros) -> Vec<f64> {
        let mut out = Vec::new();
        fractions(model, times, channels, half_life, &mut out);
        out
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn each_model_on_four_touches() {
        let times = [0, 7 * DAY, 14 * DAY, 14 * DAY];
        let channels = [1, 2, 1, 3];
        assert!(close(&shares(AttributionModel::FirstTouch, &times, &channels, DAY), &[1.0, 0.0, 0.0, 0.0]));
        assert!(close(&shares(AttributionModel::LastTouch, &times, &channels, DAY), &[0.0, 0.0, 0.0, 1.0]));
        assert!(close(&shares(AttributionModel::Linear, &times, &channels, DAY), &[0.25; 4]));
        assert!(close(&shares(AttributionModel::PositionBased, &times, &channels, DAY), &[0.4, 0.1, 0.1, 0.4]));
        assert!(close(&shares(AttributionModel::Participation, &times, &channels, DAY), &[1.0, 1.0, 0.0, 1.0]));
        // Weights 2^-2, 2^-1, 1, 1 with a 7-day half-life: total 2.75.
        let decay = shares(AttributionModel::TimeDecay, &times, &channels, 7 * DAY);
        assert!(close(&decay, &[0.25 / 2.75, 0.5 / 2.75, 1.0 / 2.75, 1.0 / 2.75]), "{decay:?}");
    }

    #[test]
    fn position_based_with_one_and_two_touches() {
        assert!(close(&shares(AttributionModel::PositionBased, &[5], &[1], DAY), &[1.0]));
        assert!(close(&shares(AttributionModel::PositionBased, &[5, 6], &[1, 2], DAY), &[0.5, 0.5]));
    }

    #[test]
    fn time_decay_survives_touches_many_half_lives_old() {
        let decay = shares(AttributionModel::TimeDecay, &[0, 2000 * DAY], &[1, 2], MINUTE);
        assert!(close(&decay, &[0.0, 1.0]), "{decay:?}");
    }

    proptest! {
        #[test]
        fn shares_sum_to_one_for_every_model_but_participation(
            touches in proptest::collection::vec((0i64..100, 0u32..4), 1..12),
            half_life in 1i64..50,
        ) {
            let mut touches = touches;
            touches.sort();
            let times: Vec<Micros> = touches.iter().map(|t| t.0 * DAY).collect();
            let channels: Vec<u32> = touches.iter().map(|t| t.1).collect();
            for model in AttributionModel::ALL {
                let s = shares(model, &times, &channels, half_life * DAY);
                prop_assert!(s.iter().all(|f| (0.0..=1.0).contains(f)));
                let total: f64 = s.iter().sum();
                if model == AttributionModel::Participation {
                    let mut distinct = channels.clone();
                    distinct.sort();
                    distinct.dedup();
                    prop_assert_eq!(total, distinct.len() as f64);
                } else {
                    prop_assert!((total - 1.0).abs() < 1e-9, "{:?}: {}", model, total);
                }
            }
        }

        /// Over whole queries: credits sum to the conversions for every model but
        /// PARTICIPATION, `$direct` included, whatever the people, touches and lookback.
        #[test]
        fn credits_sum_to_conversions(
            events in proptest::collection::vec((0u8..4, 0u8..3, 0u8..4, 0u8..60), 0..60),
            lookback in 0i64..40,
        ) {
            let state = state(&events);
            for model in AttributionModel::ALL {
                let query = AttributionQuery {
                    conversion: EventSelector { event: "buy".into(), filters: vec![] },
                    touch: EventSelector { event: "visit".into(), filters: vec![] },
                    channel_property: "src".into(),
                    model,
                    lookback: lookback * MINUTE,
                    from: 10 * MINUTE,
                    to: 50 * MINUTE,
                    ..Default::default()
                };
                let result = run(&state.source(), &MetricBook::default(), &Cohorts::new(), &query).unwrap();
                let credit: f64 = result.rows.iter().map(|r| r.credit).sum();
                let expected = events.iter().filter(|e| e.1 == 0 && (10..50).contains(&e.3)).count() as u64;
                prop_assert_eq!(result.conversions, expected);
                if model != AttributionModel::Participation {
                    prop_assert!((credit - expected as f64).abs() < 1e-9, "{:?}: {} != {}", model, credit, expected);
                }
                let influenced: u64 = result.rows.iter().map(|r| r.influenced).sum();
                prop_assert!(influenced >= result.conversions);
            }
        }
    }

    /// (person, kind: 0 buy / 1 visit with a channel / 2 visit without one, channel, minute)
    fn state(events: &[(u8, u8, u8, u8)]) -> ProjectData {
        let mut state = ProjectData::default();
        for (i, &(person, kind, channel, minute)) in events.iter().enumerate() {
            let properties = match kind {
                1 => vec![("src".to_owned(), Value::String(format!("c{channel}")))],
                _ => vec![],
            };
            // Person 3's events are anonymous, aliased to person 0 below.
            let (user_id, anonymous_id) =
                if person == 3 { (String::new(), "anon".into()) } else { (format!("u{person}"), String::new()) };
            state.table.push(&Event {
                event_id: format!("e{i:03}"),
                name: if kind == 0 { "buy" } else { "visit" }.into(),
                user_id,
                anonymous_id,
                timestamp: i64::from(minute) * MINUTE,
                properties,
            });
        }
        state.table.alias("anon", "u0");
        state
    }

    #[test]
    fn anonymous_touches_count_for_the_aliased_user_and_ties_go_by_event_id() {
        // u0 buys at minute 20; the anonymous visits (aliased to u0) at 5 and 20; u0's own
        // visit at 20 too. At minute 20 the ids order e000 < e001 < e003.
        let state = state(&[(3, 1, 1, 20), (0, 1, 2, 20), (0, 0, 0, 20), (3, 1, 0, 5), (1, 2, 0, 15), (1, 0, 0, 16)]);
        let query = |model| AttributionQuery {
            conversion: EventSelector { event: "buy".into(), filters: vec![] },
            touch: EventSelector { event: "visit".into(), filters: vec![] },
            channel_property: "src".into(),
            model,
            from: 0,
            to: 60 * MINUTE,
            ..Default::default()
        };
        let rows = |model| -> Vec<(String, f64, u64)> {
            run(&state.source(), &MetricBook::default(), &Cohorts::new(), &query(model))
                .unwrap()
                .rows
                .into_iter()
                .map(|r| (r.channel, r.credit, r.influenced))
                .collect()
        };
        // Touches of u0 in order: c0 @5 (e003), c1 @20 (e000), c2 @20 (e001). u1's visit has no
        // channel: its purchase is $direct.
        assert_eq!(
            rows(AttributionModel::LastTouch),
            vec![("$direct".into(), 1.0, 1), ("c2".into(), 1.0, 1), ("c0".into(), 0.0, 1), ("c1".into(), 0.0, 1)]
        );
        assert_eq!(
            rows(AttributionModel::FirstTouch),
            vec![("$direct".into(), 1.0, 1), ("c0".into(), 1.0, 1), ("c1".into(), 0.0, 1), ("c2".into(), 0.0, 1)]
        );
    }

    #[test]
    fn a_touch_before_the_range_counts_within_the_lookback() {
        // u1 visits from c1 at minute 5 and from c2 at minute 14, and buys at 20; the query
        // starts at 15 with a 10-minute lookback: c2 (6 minutes before) is in it, c1 (15
        // minutes before) is not.
        let state = state(&[(1, 1, 1, 5), (1, 1, 2, 14), (1, 0, 0, 20)]);
        let query = AttributionQuery {
            conversion: EventSelector { event: "buy".into(), filters: vec![] },
            touch: EventSelector { event: "visit".into(), filters: vec![] },
            channel_property: "src".into(),
            model: AttributionModel::FirstTouch,
            lookback: 10 * MINUTE,
            from: 15 * MINUTE,
            to: 60 * MINUTE,
            ..Default::default()
        };
        let result = run(&state.source(), &MetricBook::default(), &Cohorts::new(), &query).unwrap();
        let rows: Vec<(String, f64)> = result.rows.into_iter().map(|r| (r.channel, r.credit)).collect();
        assert_eq!(rows, vec![("c2".to_owned(), 1.0)]);
    }
}
