//! Event selectors and filters, compiled once per query against a project's dictionaries so
//! the scan compares integers and floats, never strings, per event.

use serde::{Deserialize, Serialize};

use crate::core::model::Value;
use crate::core::store::props::RowProps;
use crate::core::store::source::EventSource;
use crate::core::store::table::{Cell, Interner, NONE};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FilterOp {
    #[default]
    Eq,
    Neq,
    In,
    NotIn,
    Gt,
    Gte,
    Lt,
    Lte,
    Contains,
    IsSet,
    IsNotSet,
}

/// A condition on an event property, or on a user trait when `property` is `user.<trait>`.
/// A missing or null property matches NEQ, NOT_IN and IS_NOT_SET only.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Filter {
    pub property: String,
    pub op: FilterOp,
    pub values: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EventSelector {
    pub event: String,
    pub filters: Vec<Filter>,
}

pub const TRAIT_PREFIX: &str = "user.";

/// Whether a filter's property or a breakdown names a trait (`user.<trait>`).
pub fn is_trait(property: &str) -> bool {
    property.starts_with(TRAIT_PREFIX)
}

/// Whether any of `filters`, or the breakdown, is on a trait: what a read must fetch traits for.
pub fn on_traits<'a>(filters: impl IntoIterator<Item = &'a Filter>, breakdown: Option<&str>) -> bool {
    breakdown.is_some_and(is_trait) || filters.into_iter().any(|f| is_trait(&f.property))
}

pub fn validate_filter(field: &str, filter: &Filter) -> Result<()> {
    let name = filter.property.strip_prefix(TRAIT_PREFIX).unwrap_or(&filter.property);
    crate::core::catalog::validate_name(&format!("{field}.property"), name)?;
    let arity_ok = match filter.op {
        FilterOp::IsSet | FilterOp::IsNotSet => filter.values.is_empty(),
        FilterOp::In | FilterOp::NotIn => !filter.values.is_empty(),
        _ => filter.values.len() == 1,
    };
    if !arity_ok {
        let wanted = match filter.op {
            FilterOp::IsSet | FilterOp::IsNotSet => "no values",
            FilterOp::In | FilterOp::NotIn => "at least one value",
            _ => "exactly one value",
        };
        return Err(Error::invalid(format!("{field}.values"), format!("{:?} takes {wanted}", filter.op)));
    }
    let numeric = matches!(filter.op, FilterOp::Gt | FilterOp::Gte | FilterOp::Lt | FilterOp::Lte);
    if numeric && !matches!(filter.values[0], Value::Number(_) | Value::Timestamp(_)) {
        return Err(Error::invalid(format!("{field}.values"), "comparisons take a number or a timestamp"));
    }
    if filter.op == FilterOp::Contains && !matches!(filter.values[0], Value::String(_)) {
        return Err(Error::invalid(format!("{field}.values"), "CONTAINS takes a string"));
    }
    Ok(())
}

pub fn validate_selector(field: &str, selector: &EventSelector) -> Result<()> {
    crate::core::catalog::validate_name(&format!("{field}.event"), &selector.event)?;
    for (i, filter) in selector.filters.iter().enumerate() {
        validate_filter(&format!("{field}.filters[{i}]"), filter)?;
    }
    Ok(())
}

/// A filter value in the form the scan compares.
#[derive(Debug, Clone)]
enum Operand {
    Number(f64),
    /// The interned id when the string occurs in the data at all.
    Str(Option<u32>, String),
    Bool(bool),
    Time(i64),
    Null,
}

/// A stored value as the matcher sees it: strings carry their interned id when they have one.
#[derive(Clone, Copy)]
enum Probe<'a> {
    Number(f64),
    Str(Option<u32>, &'a str),
    Bool(bool),
    Time(i64),
}

impl<'a> Probe<'a> {
    fn of_cell(cell: Cell, strings: &'a Interner) -> Option<Probe<'a>> {
        Some(match cell {
            Cell::Null => return None,
            Cell::Number(n) => Probe::Number(n),
            Cell::Str(id) => Probe::Str(Some(id), strings.resolve(id)),
            Cell::Bool(b) => Probe::Bool(b),
            Cell::Time(t) => Probe::Time(t),
        })
    }

    fn of_value(value: &'a Value) -> Option<Probe<'a>> {
        Some(match value {
            Value::Null => return None,
            Value::Number(n) => Probe::Number(*n),
            Value::String(s) => Probe::Str(None, s),
            Value::Bool(b) => Probe::Bool(*b),
            Value::Timestamp(t) => Probe::Time(*t),
        })
    }
}

fn matches(op: FilterOp, operands: &[Operand], probe: Option<Probe>) -> bool {
    let equal = |operand: &Operand| match (operand, probe) {
        (Operand::Number(a), Some(Probe::Number(b))) => *a == b,
        (Operand::Str(Some(a), _), Some(Probe::Str(Some(b), _))) => *a == b,
        (Operand::Str(_, a), Some(Probe::Str(_, b))) => a == b,
        (Operand::Bool(a), Some(Probe::Bool(b))) => *a == b,
        (Operand::Time(a), Some(Probe::Time(b))) => *a == b,
        (Operand::Null, None) => true,
        _ => false,
    };
    let number = match probe {
        Some(Probe::Number(n)) => Some(n),
        Some(Probe::Time(t)) => Some(t as f64),
        _ => None,
    };
    let bound = match operands.first() {
        Some(Operand::Number(n)) => Some(*n),
        Some(Operand::Time(t)) => Some(*t as f64),
        _ => None,
    };
    match op {
        FilterOp::Eq | FilterOp::In => operands.iter().any(equal),
        FilterOp::Neq | FilterOp::NotIn => !operands.iter().any(equal),
        FilterOp::Gt => matches!((number, bound), (Some(n), Some(b)) if n > b),
        FilterOp::Gte => matches!((number, bound), (Some(n), Some(b)) if n >= b),
        FilterOp::Lt => matches!((number, bound), (Some(n), Some(b)) if n < b),
        FilterOp::Lte => matches!((number, bound), (Some(n), Some(b)) if n <= b),
        FilterOp::Contains => match (probe, operands.first()) {
            (Some(Probe::Str(_, s)), Some(Operand::Str(_, needle))) => s.contains(needle.as_str()),
            _ => false,
        },
        FilterOp::IsSet => probe.is_some(),
        FilterOp::IsNotSet => probe.is_none(),
    }
}

/// Whether a plain value (a trait, a MANUAL value's dimension) passes a filter.
pub fn value_matches(filter: &Filter, value: Option<&Value>) -> bool {
    matches(filter.op, &operands(None, &filter.values), value.and_then(Probe::of_value))
}

struct RowFilter {
    /// The property key id, or NONE when no event has the property.
    key: u32,
    op: FilterOp,
    operands: Vec<Operand>,
}

/// Filters compiled against one project's state: event-property filters run per row,
/// trait filters are evaluated once per person.
pub struct CompiledFilters {
    row: Vec<RowFilter>,
    /// Per person id: passes every trait filter (None when there are no trait filters).
    person: Option<Vec<bool>>,
}

/// Filter values as operands; with a source's string dictionary, strings carry their ids.
fn operands(strings: Option<&Interner>, values: &[Value]) -> Vec<Operand> {
    values
        .iter()
        .map(|v| match v {
            Value::Number(n) => Operand::Number(*n),
            Value::String(s) => Operand::Str(strings.and_then(|t| t.get(s)), s.clone()),
            Value::Bool(b) => Operand::Bool(*b),
            Value::Timestamp(t) => Operand::Time(*t),
            Value::Null => Operand::Null,
        })
        .collect()
}

/// The value of a trait for every person id: the canonical person's trait, so an aliased
/// anonymous id carries its user's traits.
pub fn trait_column(source: &impl EventSource, name: &str) -> Vec<Option<Value>> {
    let mut by_user: Vec<Option<Value>> = vec![None; source.canonical().len()];
    for (person, value) in source.trait_values(name) {
        by_user[person as usize] = Some(value);
    }
    source.canonical().iter().map(|&c| by_user[c as usize].clone()).collect()
}

impl CompiledFilters {
    /// Compiles `filters`; with `members` (a cohort), only its members pass.
    pub fn compile(source: &impl EventSource, filters: &[&Filter], members: Option<&[bool]>) -> CompiledFilters {
        let mut row = Vec::new();
        let mut person: Option<Vec<bool>> = members.map(<[bool]>::to_vec);
        for filter in filters {
            let operands = operands(Some(source.strings()), &filter.values);
            match filter.property.strip_prefix(TRAIT_PREFIX) {
                Some(name) => {
                    let column = trait_column(source, name);
                    let pass = person.get_or_insert_with(|| vec![true; source.canonical().len()]);
                    for (p, value) in column.iter().enumerate() {
                        pass[p] = pass[p] && matches(filter.op, &operands, value.as_ref().and_then(Probe::of_value));
                    }
                }
                None => {
                    let key = source.keys().get(&filter.property).unwrap_or(NONE);
                    row.push(RowFilter { key, op: filter.op, operands });
                }
            }
        }
        CompiledFilters { row, person }
    }

    /// Per person id: passes every person-level condition.
    pub fn person_mask(self, people: usize) -> Vec<bool> {
        self.person.unwrap_or_else(|| vec![true; people])
    }

    #[inline]
    pub fn person_passes(&self, person: u32) -> bool {
        self.person.as_ref().is_none_or(|pass| pass[person as usize])
    }

    #[inline]
    pub fn row_passes(&self, source: &impl EventSource, row: usize) -> bool {
        self.row.is_empty() || self.row_filters_pass(source, row)
    }

    fn row_filters_pass(&self, source: &impl EventSource, row: usize) -> bool {
        self.row.iter().all(|f| {
            let cell = if f.key == NONE { None } else { source.row_props(row).value_of(f.key) };
            matches(f.op, &f.operands, cell.and_then(|c| Probe::of_cell(c, source.strings())))
        })
    }
}

/// The numeric value of property `key` among a row's properties, when it has one.
pub fn row_number(props: RowProps<'_>, key: u32) -> Option<f64> {
    match props.value_of(key)? {
        Cell::Number(n) => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Event;
    use crate::core::store::ProjectData;

    fn data() -> ProjectData {
        let mut data = ProjectData::default();
        for (i, (plan, price)) in [("pro", 10.0), ("free", 0.0), ("pro", 25.5)].iter().enumerate() {
            data.table.push(&Event {
                event_id: format!("e{i}"),
                name: "buy".into(),
                user_id: format!("u{i}"),
                anonymous_id: String::new(),
                timestamp: i as i64,
                properties: vec![
                    ("plan".into(), Value::String(plan.to_string())),
                    ("price".into(), Value::Number(*price)),
                ],
            });
        }
        data
    }

    fn rows_passing(data: &ProjectData, property: &str, op: FilterOp, values: Vec<Value>) -> Vec<usize> {
        let source = data.source();
        let filter = RowFilter {
            key: source.keys().get(property).unwrap_or(NONE),
            op,
            operands: operands(Some(source.strings()), &values),
        };
        let compiled = CompiledFilters { row: vec![filter], person: None };
        (0..source.row_count()).filter(|&r| compiled.row_passes(&source, r)).collect()
    }

    #[test]
    fn each_operator() {
        let t = data();
        let s = |x: &str| Value::String(x.into());
        assert_eq!(rows_passing(&t, "plan", FilterOp::Eq, vec![s("pro")]), vec![0, 2]);
        assert_eq!(rows_passing(&t, "plan", FilterOp::Neq, vec![s("pro")]), vec![1]);
        assert_eq!(rows_passing(&t, "plan", FilterOp::In, vec![s("free"), s("gold")]), vec![1]);
        assert_eq!(rows_passing(&t, "plan", FilterOp::NotIn, vec![s("free")]), vec![0, 2]);
        assert_eq!(rows_passing(&t, "price", FilterOp::Gt, vec![Value::Number(10.0)]), vec![2]);
        assert_eq!(rows_passing(&t, "price", FilterOp::Gte, vec![Value::Number(10.0)]), vec![0, 2]);
        assert_eq!(rows_passing(&t, "price", FilterOp::Lt, vec![Value::Number(10.0)]), vec![1]);
        assert_eq!(rows_passing(&t, "price", FilterOp::Lte, vec![Value::Number(10.0)]), vec![0, 1]);
        assert_eq!(rows_passing(&t, "plan", FilterOp::Contains, vec![s("r")]), vec![0, 1, 2]);
        assert_eq!(rows_passing(&t, "plan", FilterOp::Contains, vec![s("ro")]), vec![0, 2]);
        assert_eq!(rows_passing(&t, "plan", FilterOp::IsSet, vec![]), vec![0, 1, 2]);
        assert_eq!(rows_passing(&t, "coupon", FilterOp::IsNotSet, vec![]), vec![0, 1, 2]);
        assert_eq!(rows_passing(&t, "coupon", FilterOp::Neq, vec![s("x")]), vec![0, 1, 2], "missing is not equal");
        assert_eq!(rows_passing(&t, "plan", FilterOp::Eq, vec![s("unseen")]), Vec::<usize>::new());
    }

    #[test]
    fn filter_arity_is_checked() {
        let f = |op, values| Filter { property: "x".into(), op, values };
        assert!(validate_filter("f", &f(FilterOp::Eq, vec![])).is_err());
        assert!(validate_filter("f", &f(FilterOp::IsSet, vec![Value::Null])).is_err());
        assert!(validate_filter("f", &f(FilterOp::Gt, vec![Value::String("a".into())])).is_err());
        assert!(validate_filter("f", &f(FilterOp::In, vec![Value::Bool(true)])).is_ok());
        let bad_name = Filter { property: "user.".into(), op: FilterOp::IsSet, values: vec![] };
        assert!(
            matches!(validate_filter("f", &bad_name), Err(Error::InvalidArgument { field, .. }) if field == "f.property")
        );
    }
}
