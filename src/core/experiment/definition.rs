//! Experiment definitions: variants and their traffic, the metrics analysed, the statistics
//! configuration, the analysis window and the lifecycle DRAFT → RUNNING → STOPPED.

use serde::{Deserialize, Serialize};

use super::assign;
use super::stats::{StatsConfig, WEIGHT_TOLERANCE};
use crate::core::bounds;
use crate::core::catalog::validate_slug;
use crate::core::model::Micros;
use crate::error::{Error, Result, echo};

/// Most variants one experiment may have.
pub const MAX_VARIANTS: usize = 100;
/// CUPED covariate window when none is configured: 14 days before the first exposure.
pub const DEFAULT_CUPED_PRE_PERIOD: Micros = 14 * 86_400_000_000;
/// Name of the events that record exposures.
pub const EXPOSURE_EVENT: &str = "$exposure";
/// Properties of `$exposure` events.
pub const EXPERIMENT_PROPERTY: &str = "experiment";
pub const VARIANT_PROPERTY: &str = "variant";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ExperimentStatus {
    #[default]
    Draft,
    Running,
    Stopped,
}

impl ExperimentStatus {
    /// Whether this status passes a list filter. `None` in the filter stands for "any status"
    /// (UNSPECIFIED on the wire), and an empty filter passes every status.
    pub fn passes(self, filter: &[Option<ExperimentStatus>]) -> bool {
        filter.is_empty() || filter.iter().any(|wanted| wanted.is_none_or(|s| s == self))
    }
}

/// Role of a metric within an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricRole {
    Primary,
    Secondary,
    Guardrail,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Variant {
    pub key: String,
    pub weight: f64,
    pub name: String,
    pub description: String,
}

/// The statistics of a readout: the comparison settings and the CUPED covariate window.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReadoutConfig {
    pub stats: StatsConfig,
    /// Default: [`DEFAULT_CUPED_PRE_PERIOD`].
    pub cuped_pre_period: Option<Micros>,
}

impl ReadoutConfig {
    pub fn cuped_pre_period(&self) -> Micros {
        self.cuped_pre_period.unwrap_or(DEFAULT_CUPED_PRE_PERIOD)
    }

    /// Checks the numbers; errors name `<field>.alpha` and so on.
    pub fn validate(&self, field: &str) -> Result<()> {
        self.stats.validate().map_err(|e| Error::from(e).under(field))?;
        if self.cuped_pre_period.is_some_and(|p| p <= 0) {
            return Err(Error::invalid(format!("{field}.cuped_pre_period"), "must be positive"));
        }
        bounds::check_window(&format!("{field}.cuped_pre_period"), self.cuped_pre_period)?;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Experiment {
    pub key: String,
    pub name: String,
    pub hypothesis: String,
    /// Hash seed; empty: the key.
    pub seed: String,
    pub variants: Vec<Variant>,
    /// Share of traffic in the experiment, in (0, 1].
    pub coverage: f64,
    /// Empty: the first variant.
    pub control_variant: String,
    pub primary_metric_keys: Vec<String>,
    pub secondary_metric_keys: Vec<String>,
    pub guardrail_metric_keys: Vec<String>,
    /// Per-user window from the first exposure; `None`: until the end of the analysis.
    pub attribution_window: Option<Micros>,
    pub readout: ReadoutConfig,
    /// 0: 10% (relative, or of the control mean for absolute differences).
    pub minimum_detectable_effect: f64,
    pub start_time: Option<Micros>,
    pub end_time: Option<Micros>,
    pub status: ExperimentStatus,
    pub created: Micros,
    pub updated: Micros,
}

impl Experiment {
    pub fn seed(&self) -> &str {
        if self.seed.is_empty() { &self.key } else { &self.seed }
    }

    /// Index of the control variant (validated to exist).
    pub fn control(&self) -> usize {
        self.variants.iter().position(|v| v.key == self.control_variant).unwrap_or(0)
    }

    pub fn weights(&self) -> Vec<f64> {
        self.variants.iter().map(|v| v.weight).collect()
    }

    /// The variant for `id` (a user id, or an anonymous id) and its bucket; `None` when the
    /// bucket falls outside the covered ranges.
    pub fn assign(&self, id: &str) -> (Option<usize>, f64) {
        let bucket = assign::hash_bucket(self.seed(), id);
        (assign::choose_variant(bucket, &self.weights(), self.coverage), bucket)
    }

    pub fn variant_index(&self, key: &str) -> Option<usize> {
        self.variants.iter().position(|v| v.key == key)
    }

    /// Every analysed metric key with its role: primary, then secondary, then guardrail.
    pub fn metrics(&self) -> impl Iterator<Item = (MetricRole, &str)> {
        [
            (MetricRole::Primary, &self.primary_metric_keys),
            (MetricRole::Secondary, &self.secondary_metric_keys),
            (MetricRole::Guardrail, &self.guardrail_metric_keys),
        ]
        .into_iter()
        .flat_map(|(role, keys)| keys.iter().map(move |k| (role, k.as_str())))
    }

    /// The field naming the `index`-th key of a role's list.
    pub fn metric_field(role: MetricRole, index: usize) -> String {
        let list = match role {
            MetricRole::Primary => "primary_metric_keys",
            MetricRole::Secondary => "secondary_metric_keys",
            MetricRole::Guardrail => "guardrail_metric_keys",
        };
        format!("experiment.{list}[{index}]")
    }

    /// Resolves defaults (coverage 0 = 1, empty control = the first variant) and checks the
    /// definition on its own; that the metrics exist is checked against the project.
    pub fn normalize(&mut self) -> Result<()> {
        validate_slug("experiment.key", &self.key)?;
        bounds::check_name("experiment.name", &self.name)?;
        bounds::check_name("experiment.seed", &self.seed)?;
        bounds::check_text("experiment.hypothesis", &self.hypothesis)?;
        if self.variants.len() < 2 {
            return Err(Error::invalid(
                "experiment.variants",
                format!("at least 2 variants are required, got {}", self.variants.len()),
            ));
        }
        if self.variants.len() > MAX_VARIANTS {
            return Err(Error::invalid(
                "experiment.variants",
                format!("{} variants, at most {MAX_VARIANTS}", self.variants.len()),
            ));
        }
        for (i, variant) in self.variants.iter().enumerate() {
            validate_slug(&format!("experiment.variants[{i}].key"), &variant.key)?;
            if self.variants[..i].iter().any(|v| v.key == variant.key) {
                return Err(Error::invalid(
                    format!("experiment.variants[{i}].key"),
                    format!("duplicate variant key {}", echo(&variant.key)),
                ));
            }
            if !(variant.weight > 0.0 && variant.weight <= 1.0) {
                return Err(Error::invalid(
                    format!("experiment.variants[{i}].weight"),
                    format!("must be in (0, 1], got {}", variant.weight),
                ));
            }
            bounds::check_name(&format!("experiment.variants[{i}].name"), &variant.name)?;
            bounds::check_text(&format!("experiment.variants[{i}].description"), &variant.description)?;
        }
        let sum: f64 = self.variants.iter().map(|v| v.weight).sum();
        if (sum - 1.0).abs() > WEIGHT_TOLERANCE {
            return Err(Error::invalid("experiment.variants", format!("weights must sum to 1 (± 1e-6), got {sum}")));
        }
        if self.coverage == 0.0 {
            self.coverage = 1.0;
        }
        if !(self.coverage > 0.0 && self.coverage <= 1.0) {
            return Err(Error::invalid("experiment.coverage", format!("must be in (0, 1], got {}", self.coverage)));
        }
        if self.control_variant.is_empty() {
            self.control_variant = self.variants[0].key.clone();
        } else if self.variant_index(&self.control_variant).is_none() {
            return Err(Error::invalid(
                "experiment.control_variant",
                format!("{} names none of the variants", echo(&self.control_variant)),
            ));
        }
        let mut seen: Vec<&str> = Vec::new();
        for (role, lists) in [
            (MetricRole::Primary, &self.primary_metric_keys),
            (MetricRole::Secondary, &self.secondary_metric_keys),
            (MetricRole::Guardrail, &self.guardrail_metric_keys),
        ] {
            for (i, key) in lists.iter().enumerate() {
                let field = Self::metric_field(role, i);
                validate_slug(&field, key)?;
                if seen.contains(&key.as_str()) {
                    return Err(Error::invalid(field, format!("metric {key} is listed twice", key = echo(key))));
                }
                seen.push(key);
            }
        }
        if self.attribution_window.is_some_and(|w| w <= 0) {
            return Err(Error::invalid("experiment.attribution_window", "must be positive"));
        }
        bounds::check_window("experiment.attribution_window", self.attribution_window)?;
        self.readout.validate("experiment.stats")?;
        if !self.minimum_detectable_effect.is_finite() || self.minimum_detectable_effect < 0.0 {
            return Err(Error::invalid(
                "experiment.minimum_detectable_effect",
                format!("must be a non-negative number, got {}", self.minimum_detectable_effect),
            ));
        }
        if let (Some(start), Some(end)) = (self.start_time, self.end_time)
            && end <= start
        {
            return Err(Error::invalid("experiment.end_time", "must be after start_time"));
        }
        Ok(())
    }

    /// Whether the assignment of users differs between two definitions (seed, variants and
    /// their weights, coverage).
    pub fn reassigns(&self, other: &Experiment) -> bool {
        let traffic = |e: &Experiment| e.variants.iter().map(|v| (v.key.clone(), v.weight)).collect::<Vec<_>>();
        self.seed() != other.seed() || self.coverage != other.coverage || traffic(self) != traffic(other)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_filter_treats_none_as_any_status() {
        use ExperimentStatus::*;
        assert!(Running.passes(&[]));
        assert!(Running.passes(&[Some(Draft), Some(Running)]));
        assert!(!Stopped.passes(&[Some(Draft), Some(Running)]));
        assert!(Stopped.passes(&[Some(Draft), None]));
    }

    use super::*;

    fn two_variants() -> Experiment {
        Experiment {
            key: "checkout".into(),
            variants: vec![
                Variant { key: "control".into(), weight: 0.5, ..Default::default() },
                Variant { key: "treatment".into(), weight: 0.5, ..Default::default() },
            ],
            primary_metric_keys: vec!["purchases".into()],
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_resolved() {
        let mut e = two_variants();
        e.normalize().unwrap();
        assert_eq!(e.coverage, 1.0);
        assert_eq!(e.control_variant, "control");
        assert_eq!(e.seed(), "checkout");
        assert_eq!(e.control(), 0);
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let field = |change: &dyn Fn(&mut Experiment)| {
            let mut e = two_variants();
            change(&mut e);
            match e.normalize() {
                Err(Error::InvalidArgument { field, .. }) => field,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(field(&|e| e.variants[1].weight = 0.6), "experiment.variants");
        assert_eq!(field(&|e| e.variants.truncate(1)), "experiment.variants");
        assert_eq!(field(&|e| e.variants[1].key = "control".into()), "experiment.variants[1].key");
        assert_eq!(field(&|e| e.variants[0].weight = f64::NAN), "experiment.variants[0].weight");
        assert_eq!(field(&|e| e.coverage = 1.5), "experiment.coverage");
        assert_eq!(field(&|e| e.coverage = -0.1), "experiment.coverage");
        assert_eq!(field(&|e| e.control_variant = "nope".into()), "experiment.control_variant");
        assert_eq!(
            field(&|e| e.secondary_metric_keys = vec!["purchases".into()]),
            "experiment.secondary_metric_keys[0]"
        );
        assert_eq!(field(&|e| e.guardrail_metric_keys = vec!["Bad".into()]), "experiment.guardrail_metric_keys[0]");
        assert_eq!(field(&|e| e.attribution_window = Some(0)), "experiment.attribution_window");
        assert_eq!(field(&|e| e.readout.stats.alpha = 2.0), "experiment.stats.alpha");
        assert_eq!(
            field(&|e| {
                e.start_time = Some(10);
                e.end_time = Some(5);
            }),
            "experiment.end_time"
        );
    }

    #[test]
    fn assignment_follows_the_seed_weights_and_coverage() {
        let mut e = Experiment { key: "x".into(), coverage: 0.8, ..two_variants() };
        e.normalize().unwrap();
        // The seed defaults to the key; SPEC §8: weights (0.5, 0.5) with coverage 0.8 give
        // [0, 0.4) and [0.5, 0.9).
        let (variant, bucket) = e.assign("a");
        assert_eq!(bucket, assign::hash_bucket("x", "a"));
        let expected = assign::choose_variant(bucket, &[0.5, 0.5], 0.8);
        assert_eq!(variant, expected);
        let mut moved = e.clone();
        moved.variants[0].name = "renamed".into();
        assert!(!e.reassigns(&moved));
        moved.coverage = 0.9;
        assert!(e.reassigns(&moved));
    }
}
