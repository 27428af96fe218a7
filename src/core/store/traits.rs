//! Users' traits, kept compactly: per user a slice of (trait name id, value) pairs, with names
//! and string values interned, in one arena for all users: about 70 bytes for a user with
//! three traits, where a `BTreeMap<String, Value>` per user took about 700 (a B-tree node is
//! sized for eleven entries, and every name was a separate allocation), and a restart makes
//! one allocation for every user's traits instead of one per user.

use hashbrown::HashMap;

use crate::core::model::{UserUpdate, Value};
use crate::core::store::table::{Cell, Interner, MAX_PROPERTY_KEYS, Prop, WideProp};

#[derive(Debug, Default)]
pub struct Traits {
    names: Interner,
    strings: Interner,
    /// Every user's traits: a user's are `arena[start..start + len]`. An update appends the
    /// user's new slice; the old one is garbage until the arena is rebuilt.
    arena: Vec<Prop>,
    /// Per user person id (a user who had traits set, even if all were removed since): where
    /// its traits are in `arena`, and how many (u32s: 12 bytes an entry, where a usize start
    /// made it 24; a restart fills this map for every user).
    by_user: HashMap<u32, (u32, u32)>,
    /// Props in `arena` no user points at any more.
    garbage: usize,
    /// Counts changes, so that what is derived from the traits (trait groups, cached
    /// readouts, the checkpoint's traits file) can tell whether it is still current.
    changes: u64,
}

impl Clone for Traits {
    fn clone(&self) -> Traits {
        Traits {
            names: self.names.fork(),
            strings: self.strings.fork(),
            arena: self.arena.clone(),
            by_user: self.by_user.clone(),
            garbage: self.garbage,
            changes: self.changes,
        }
    }
}

impl Traits {
    /// Users with a traits entry.
    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    pub fn contains(&self, person: u32) -> bool {
        self.by_user.contains_key(&person)
    }

    pub fn remove(&mut self, person: u32) {
        self.changes += 1;
        if let Some((_, len)) = self.by_user.remove(&person) {
            self.garbage += len as usize;
            self.rebuild_arena_if_due();
        }
    }

    /// Whether a trait of this name was ever set (its name is interned).
    pub fn has_name(&self, name: &str) -> bool {
        self.names.get(name).is_some()
    }

    /// Distinct trait names ever set.
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// A user's traits, when any were ever set.
    fn props_of(&self, person: u32) -> Option<&[Prop]> {
        self.by_user.get(&person).map(|&(start, len)| &self.arena[start as usize..][..len as usize])
    }

    /// How many changes the traits have had (see `changes`).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// A user's traits by name, or none when no traits were ever set.
    pub fn of(&self, person: u32) -> Option<Vec<(String, Value)>> {
        let props = self.props_of(person)?;
        let mut traits: Vec<(String, Value)> =
            props.iter().map(|p| (self.names.resolve(p.key()).to_owned(), self.value(p.value()))).collect();
        traits.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(traits)
    }

    /// Every user with traits, in person id order, with their traits by name.
    pub fn users(&self) -> Vec<(u32, Vec<(String, Value)>)> {
        let mut people: Vec<u32> = self.by_user.keys().copied().collect();
        people.sort_unstable();
        people.into_iter().filter_map(|p| Some((p, self.of(p)?))).collect()
    }

    /// The value of trait `name` for every user who has it.
    pub fn values_of<'a>(&'a self, name: &str) -> impl Iterator<Item = (u32, Value)> + 'a {
        let key = self.names.get(name);
        self.by_user.keys().filter_map(move |&person| {
            let prop = self.props_of(person)?.iter().find(|p| Some(p.key()) == key)?;
            Some((person, self.value(prop.value())))
        })
    }

    fn value(&self, cell: Cell) -> Value {
        match cell {
            Cell::Null => Value::Null,
            Cell::Bool(b) => Value::Bool(b),
            Cell::Number(n) => Value::Number(n),
            Cell::Str(s) => Value::String(self.strings.resolve(s).to_owned()),
            Cell::Time(t) => Value::Timestamp(t),
        }
    }

    fn cell(&mut self, value: &Value) -> Cell {
        match value {
            Value::Null => Cell::Null,
            Value::Bool(b) => Cell::Bool(*b),
            Value::Number(n) => Cell::Number(*n),
            Value::String(s) => Cell::Str(self.strings.intern(s)),
            Value::Timestamp(t) => Cell::Time(*t),
        }
    }

    /// The id of trait name `name`, interned when new, or `None` past the names a `Prop` can
    /// hold (ingest stops new names long before: `Limits::max_property_keys`).
    fn name_id(&mut self, name: &str) -> Option<u32> {
        let id = self.names.intern_below(name, MAX_PROPERTY_KEYS);
        if id.is_none() {
            tracing::error!(name, "a trait name past the key space is dropped");
        }
        id
    }

    /// Applies `set` (null removes), then `set_once` (only traits not set), then `unset`.
    pub fn update(&mut self, person: u32, update: &UserUpdate) {
        self.changes += 1;
        let mut props: Vec<Prop> = self.props_of(person).map(<[Prop]>::to_vec).unwrap_or_default();
        for (name, value) in &update.set {
            let Some(key) = self.name_id(name) else { continue };
            props.retain(|p| p.key() != key);
            // Setting null removes the trait: a null trait and a missing one mean the same.
            if !matches!(value, Value::Null) {
                props.push(Prop::new(key, self.cell(value)));
            }
        }
        for (name, value) in &update.set_once {
            let Some(key) = self.name_id(name) else { continue };
            if !matches!(value, Value::Null) && !props.iter().any(|p| p.key() == key) {
                props.push(Prop::new(key, self.cell(value)));
            }
        }
        for name in &update.unset {
            if let Some(key) = self.names.get(name) {
                props.retain(|p| p.key() != key);
            }
        }
        let start = arena_index(self.arena.len());
        self.arena.extend_from_slice(&props);
        if let Some((_, old)) = self.by_user.insert(person, (start, props.len() as u32)) {
            self.garbage += old as usize;
        }
        self.rebuild_arena_if_due();
    }

    /// Rebuilds the arena once garbage is most of it.
    fn rebuild_arena_if_due(&mut self) {
        if self.garbage > 1024 && self.garbage * 2 > self.arena.len() {
            self.rebuild_arena();
        }
    }

    /// Copies the live slices into a new arena, dropping the garbage.
    fn rebuild_arena(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for (start, len) in self.by_user.values_mut() {
            let live = &self.arena[*start as usize..][..*len as usize];
            *start = arena_index(arena.len());
            arena.extend_from_slice(live);
        }
        self.arena = arena;
        self.garbage = 0;
    }
}

/// A position in the arena as `by_user` keeps it: 2^32 traits (48 GB of them) is past what
/// any server holds in memory.
fn arena_index(at: usize) -> u32 {
    u32::try_from(at).expect("fewer than 2^32 traits in memory")
}

/// `Traits` as a checkpoint stores it: the interned names and strings, and per user its
/// (name id, value) pairs as plain bytes, so a restart rebuilds it without a string per trait.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct TraitsState {
    names: Vec<String>,
    strings: Vec<String>,
    people: Vec<u32>,
    counts: Vec<u32>,
    #[serde(with = "serde_bytes")]
    props: Vec<u8>,
}

impl Traits {
    /// None saved: a state with no users (what a checkpoint whose traits are in their own file
    /// puts in the project state).
    pub fn empty_state() -> TraitsState {
        Traits::default().state()
    }

    pub fn state(&self) -> TraitsState {
        let all = |interner: &Interner| (0..interner.len() as u32).map(|id| interner.resolve(id).to_owned()).collect();
        let mut people: Vec<u32> = self.by_user.keys().copied().collect();
        people.sort_unstable();
        let counts = people.iter().map(|p| self.by_user[p].1).collect();
        // In the 16-byte form every version of the file has used.
        let mut props = Vec::with_capacity((self.arena.len() - self.garbage) * size_of::<WideProp>());
        for &person in &people {
            for prop in self.props_of(person).unwrap_or_default() {
                props.extend_from_slice(bytemuck::bytes_of(&prop.wide()));
            }
        }
        TraitsState { names: all(&self.names), strings: all(&self.strings), people, counts, props }
    }

    /// The traits a checkpoint saved; an error names what does not fit together.
    pub fn from_state(state: TraitsState) -> Result<Traits, String> {
        let mut traits = Traits::default();
        for name in &state.names {
            traits.names.intern(name);
        }
        for s in &state.strings {
            traits.strings.intern(s);
        }
        if traits.names.len() != state.names.len() || traits.strings.len() != state.strings.len() {
            return Err("trait names or strings repeat".into());
        }
        if !state.props.len().is_multiple_of(size_of::<WideProp>()) || state.people.len() != state.counts.len() {
            return Err("trait lists do not fit together".into());
        }
        let count = state.props.len() / size_of::<WideProp>();
        if state.counts.iter().map(|&c| c as usize).sum::<usize>() != count || u32::try_from(count).is_err() {
            return Err("trait counts do not add up".into());
        }
        let valid = |p: &Prop| {
            (p.key() as usize) < state.names.len()
                && match p.value() {
                    Cell::Str(s) => (s as usize) < state.strings.len(),
                    _ => true,
                }
        };
        // Sized once: growing it as it fills copied it again and again at a restart.
        let mut props = Vec::with_capacity(count);
        for bytes in state.props.chunks_exact(size_of::<WideProp>()) {
            let prop = bytemuck::pod_read_unaligned::<WideProp>(bytes)
                .narrow()
                .ok_or("a trait has a name past the key space or a value of no known type")?;
            if !valid(&prop) {
                return Err("a trait names a string that does not exist".into());
            }
            props.push(prop);
        }
        traits.by_user.reserve(state.people.len());
        let mut at = 0;
        for (&person, &count) in state.people.iter().zip(&state.counts) {
            if traits.by_user.insert(person, (at, count)).is_some() {
                return Err(format!("person {person} has two trait lists"));
            }
            at += count;
        }
        traits.arena = props;
        Ok(traits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(set: &[(&str, Value)], set_once: &[(&str, Value)], unset: &[&str]) -> UserUpdate {
        let pairs = |v: &[(&str, Value)]| v.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        UserUpdate {
            user_id: "u".into(),
            set: pairs(set),
            set_once: pairs(set_once),
            unset: unset.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn updates_past_the_garbage_bound_rebuild_the_arena_and_keep_every_users_traits() {
        let mut traits = Traits::default();
        for round in 0..3000 {
            for person in 0..3u32 {
                let value = Value::Number(f64::from(round * 10 + person as i32));
                traits.update(person, &update(&[("n", value), ("plan", Value::String("pro".into()))], &[], &[]));
            }
        }
        traits.remove(2);
        assert!(traits.arena.len() < 3 * 2 * 1100, "rebuilt: {} props for 2 users", traits.arena.len());
        assert!(traits.garbage * 2 <= traits.arena.len() || traits.garbage <= 1024);
        let want =
            |n: f64| Some(vec![("n".to_owned(), Value::Number(n)), ("plan".to_owned(), Value::String("pro".into()))]);
        assert_eq!((traits.of(0), traits.of(1), traits.of(2)), (want(29990.0), want(29991.0), None));
        let copy = Traits::from_state(traits.state()).unwrap();
        assert_eq!(copy.users(), traits.users());
        assert_eq!((copy.arena.len(), copy.garbage), (4, 0));
        // A state listing a person twice does not load, nor one whose counts, strings or
        // bytes do not fit its traits.
        let mut state = traits.state();
        state.people = vec![0, 0];
        assert!(Traits::from_state(state).unwrap_err().contains("two trait lists"));
        let mut state = traits.state();
        state.counts[0] += 1;
        assert!(Traits::from_state(state).unwrap_err().contains("do not add up"));
        let mut state = traits.state();
        state.strings.clear();
        assert!(Traits::from_state(state).unwrap_err().contains("a string that does not exist"));
        let mut state = traits.state();
        state.props.pop();
        assert!(Traits::from_state(state).unwrap_err().contains("do not fit together"));
    }

    #[test]
    fn set_set_once_unset_and_null() {
        let mut traits = Traits::default();
        assert!(traits.of(1).is_none());
        traits.update(1, &update(&[("plan", Value::String("pro".into())), ("age", Value::Number(3.0))], &[], &[]));
        traits.update(
            1,
            &update(
                &[("age", Value::Null), ("vip", Value::Bool(true))],
                &[("plan", Value::String("free".into())), ("since", Value::Timestamp(9))],
                &["nothing"],
            ),
        );
        assert_eq!(
            traits.of(1).unwrap(),
            vec![
                ("plan".into(), Value::String("pro".into())),
                ("since".into(), Value::Timestamp(9)),
                ("vip".into(), Value::Bool(true)),
            ]
        );
        traits.update(2, &update(&[], &[], &["plan"]));
        assert_eq!(traits.of(2), Some(vec![]), "an update leaves an entry, even an empty one");
        let plans: Vec<(u32, Value)> = traits.values_of("plan").collect();
        assert_eq!(plans, vec![(1, Value::String("pro".into()))]);
        assert_eq!(traits.values_of("missing").count(), 0);
        assert_eq!(traits.users().len(), 2);
        let copy = Traits::from_state(traits.state()).unwrap();
        assert_eq!(copy.users(), traits.users());
        traits.remove(1);
        assert!(!traits.contains(1) && traits.contains(2));
    }
}
