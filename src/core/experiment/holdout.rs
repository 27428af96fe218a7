//! Holdouts (SPEC §15): a share of ids kept out of every experiment of the project while the
//! holdout runs, and the readout of held-out people against everyone else seen in its window,
//! which measures the combined, incremental effect of everything shipped meanwhile.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::assign::hash_bucket;
use super::definition::{Experiment, Variant};
use super::measure::{self, Exposure, Exposures};
use crate::core::catalog::validate_slug;
use crate::core::metric::definition::MetricBook;
use crate::core::model::Micros;
use crate::core::store::person_batch::PersonBatch;
use crate::core::store::source::{EventSource, Scan};
use crate::error::{Error, Result};

/// Most a holdout may keep out.
pub const MAX_PERCENT: f64 = 0.5;
/// The readout's variants: held-out people (the control) and everyone else.
pub const HOLDOUT_VARIANT: &str = "holdout";
pub const GENERAL_VARIANT: &str = "general";

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Holdout {
    pub key: String,
    pub name: String,
    /// Share of ids held out, in (0, 0.5].
    pub percent: f64,
    /// Hash seed; empty: the key.
    pub seed: String,
    /// Metrics of the readout.
    pub metric_keys: Vec<String>,
    /// Set at creation unless given; the holdout runs in `[start_time, end_time)`.
    pub start_time: Option<Micros>,
    pub end_time: Option<Micros>,
    pub created: Micros,
    pub updated: Micros,
}

pub(crate) fn not_found(key: &str) -> Error {
    Error::NotFound(format!("holdout {key:?} not found"))
}

impl Holdout {
    pub fn seed(&self) -> &str {
        if self.seed.is_empty() { &self.key } else { &self.seed }
    }

    /// Whether `id` (a user id, or an anonymous id) is held out: its GrowthBook v2 bucket of
    /// (seed, id) is below `percent`.
    pub fn holds_out(&self, id: &str) -> bool {
        hash_bucket(self.seed(), id) < self.percent
    }

    pub fn running(&self, now: Micros) -> bool {
        self.start_time.is_some_and(|start| start <= now) && self.end_time.is_none_or(|end| now < end)
    }

    /// Checks the definition on its own; errors name `holdout.<field>`.
    pub fn validate(&self) -> Result<()> {
        validate_slug("holdout.key", &self.key)?;
        for (field, text) in [("holdout.name", &self.name), ("holdout.seed", &self.seed)] {
            if text.chars().count() > 200 {
                return Err(Error::invalid(field, "longer than 200 characters"));
            }
        }
        if !(self.percent > 0.0 && self.percent <= MAX_PERCENT) {
            return Err(Error::invalid(
                "holdout.percent",
                format!("must be in (0, {MAX_PERCENT}], got {}", self.percent),
            ));
        }
        for (i, key) in self.metric_keys.iter().enumerate() {
            let field = format!("holdout.metric_keys[{i}]");
            validate_slug(&field, key)?;
            if self.metric_keys[..i].contains(key) {
                return Err(Error::invalid(field, format!("{key:?} is listed twice")));
            }
        }
        if let (Some(start), Some(end)) = (self.start_time, self.end_time)
            && end <= start
        {
            return Err(Error::invalid("holdout.end_time", "must be after start_time"));
        }
        Ok(())
    }

    /// The holdout read as a two-variant experiment: `holdout` (control, weight `percent`) and
    /// `general`, with the metrics as primary metrics.
    pub(crate) fn as_experiment(&self) -> Experiment {
        let variant = |key: &str, weight| Variant { key: key.into(), weight, ..Default::default() };
        Experiment {
            key: self.key.clone(),
            name: self.name.clone(),
            seed: self.seed().to_owned(),
            variants: vec![variant(HOLDOUT_VARIANT, self.percent), variant(GENERAL_VARIANT, 1.0 - self.percent)],
            coverage: 1.0,
            control_variant: HOLDOUT_VARIANT.into(),
            primary_metric_keys: self.metric_keys.clone(),
            start_time: self.start_time,
            end_time: self.end_time,
            ..Default::default()
        }
    }
}

/// The first running holdout (by key) that holds `id` out, if any.
pub fn holding_out<'a>(holdouts: &'a BTreeMap<String, Holdout>, id: &str, now: Micros) -> Option<&'a Holdout> {
    holdouts.values().find(|h| h.running(now) && h.holds_out(id))
}

/// Everyone seen in `[from, to)`: each canonical person (by person id) with the time of their
/// first event there, split by whether the holdout holds their id out (variant 0) or not (1).
pub(crate) fn seen_people(source: &impl EventSource, holdout: &Holdout, from: Micros, to: Micros) -> Exposures {
    let mut first = vec![Micros::MAX; source.canonical().len()];
    source.for_each(Scan::all().within(from, to), |person, events| {
        // A source may return events outside the range too.
        let at = events.times.partition_point(|&t| t < from);
        if let Some(&t) = events.times.get(at).filter(|&&t| t < to) {
            first[person as usize] = t;
        }
    });
    let mut out = Exposures { per_variant: vec![0, 0], ..Default::default() };
    for (person, &t) in first.iter().enumerate() {
        if t == Micros::MAX {
            continue;
        }
        let variant = u16::from(!holdout.holds_out(source.person_name(person as u32)));
        out.per_variant[variant as usize] += 1;
        out.users.push(Exposure { person: person as u32, first: t, variant });
    }
    out
}

/// `seen_people` from what a remote engine counted (`RemoteEvents::first_seen` over the same
/// range): each person with the time of their first event there. Each is found in `batch`,
/// which holds only the events the readout measures, or added to it without events.
pub(crate) fn seen_in_list(
    batch: &mut PersonBatch,
    holdout: &Holdout,
    seen: Vec<(String, bool, Micros)>,
) -> Result<Exposures> {
    let mut out = Exposures { per_variant: vec![0, 0], ..Default::default() };
    for (id, is_user, first) in seen {
        let person = batch.person(&id, is_user)?;
        let variant = u16::from(!holdout.holds_out(&id));
        out.per_variant[variant as usize] += 1;
        out.users.push(Exposure { person, first, variant });
    }
    out.users.sort_unstable_by_key(|user| user.person);
    Ok(out)
}

/// Checks that every metric of the holdout exists and can be read out like an experiment's.
pub(crate) fn check_metrics(book: &MetricBook, holdout: &Holdout) -> Result<()> {
    let metrics = book.latest_metrics();
    for (i, key) in holdout.metric_keys.iter().enumerate() {
        let field = format!("holdout.metric_keys[{i}]");
        let metric = metrics.get(key).ok_or_else(|| Error::invalid(&field, format!("unknown metric {key:?}")))?;
        measure::summary_kind(metric, &metrics).map_err(|message| Error::invalid(&field, message))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holdout(percent: f64) -> Holdout {
        Holdout { key: "h".into(), percent, start_time: Some(100), ..Default::default() }
    }

    #[test]
    fn percent_and_window_are_checked() {
        for bad in [0.0, -0.1, 0.51, f64::NAN] {
            let err = holdout(bad).validate().unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { ref field, .. } if field == "holdout.percent"), "{bad}");
        }
        assert!(holdout(0.5).validate().is_ok());
        let backwards = Holdout { end_time: Some(100), ..holdout(0.1) };
        assert!(
            matches!(backwards.validate(), Err(Error::InvalidArgument { field, .. }) if field == "holdout.end_time")
        );
        let twice = Holdout { metric_keys: vec!["a".into(), "a".into()], ..holdout(0.1) };
        assert!(
            matches!(twice.validate(), Err(Error::InvalidArgument { field, .. }) if field == "holdout.metric_keys[1]")
        );
    }

    #[test]
    fn held_out_ids_follow_the_growthbook_bucket() {
        // SPEC §8: seed "", id "a" → 0.0216; id "b" → 0.9054. An empty seed means the key, so
        // hash with the bucket function directly for the reference values.
        assert_eq!(hash_bucket("", "a"), 0.0216);
        let h = Holdout { seed: "s".into(), ..holdout(0.1) };
        for id in ["a", "b", "u1", "u42_0", "anon-7"] {
            assert_eq!(h.holds_out(id), hash_bucket("s", id) < 0.1, "{id}");
        }
        let share = (0..10_000).filter(|i| h.holds_out(&format!("user{i}"))).count();
        assert!((900..1100).contains(&share), "{share} of 10000 held out at 10%");
    }

    #[test]
    fn only_running_holdouts_hold_ids_out() {
        let everyone = Holdout { percent: 0.5, seed: "x".into(), ..holdout(0.5) };
        let id = (0..100).map(|i| format!("u{i}")).find(|id| everyone.holds_out(id)).unwrap();
        let ended = Holdout { key: "a".into(), end_time: Some(200), ..everyone.clone() };
        let holdouts: BTreeMap<String, Holdout> = [("a".to_owned(), ended)].into();
        assert!(holding_out(&holdouts, &id, 150).is_some());
        assert!(holding_out(&holdouts, &id, 200).is_none(), "end is exclusive");
        assert!(holding_out(&holdouts, &id, 99).is_none(), "not started");
    }
}
