//! The in-memory columnar layout of a project's events, built from the log.
//!
//! Queries scan integer columns (person, time, name) and a flat property arena instead of
//! parsing anything per event. Strings are interned once. Rows are only appended: DeleteUser
//! and data retention mark rows removed (`erase`, see `tombstones`), which every read leaves
//! out, and bump `generation`; a compaction writes a new table without them
//! (`ProjectData::rebuilt`), which renumbers rows. A row index is valid while the project lock
//! is held, or across locks while `generation` is unchanged. Person, name, key and string ids
//! never change.

use std::borrow::Cow;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::core::model::{Event, Micros, Value};
use crate::core::store::cold_rows::ColdRows;
use crate::core::store::column::{Column, ColumnSpace};
use crate::core::store::deferred::Deferred;
use crate::core::store::props::RowProps;
use crate::core::store::times::Times;
use crate::core::store::tombstones::Tombstones;

/// Marks "no value" in an id column.
pub const NONE: u32 = u32::MAX;

/// The most owner changes `EventTable::owner_log` keeps: 4 bytes each.
const OWNER_LOG_LIMIT: usize = 1 << 22;

/// Rows per block of property offsets (see `EventTable::prop_end`).
pub(in crate::core::store) const PROP_BLOCK: usize = 64;
/// The most properties one event may have (the configured limit is checked against it), so
/// that a row's encoded properties take under 65,536 bytes (see `EventTable::prop_end`).
pub const MAX_PROPERTIES: usize = 1023;
const _: () = assert!(MAX_PROPERTIES * crate::core::store::props::MAX_BYTES <= u16::MAX as usize);
/// Marks, in `EventTable::prop_block_start`, a block whose u16 offsets wrapped past 65,535.
const WRAPPED: u64 = 1 << 63;
/// Property keys (and trait names) a `Prop` can name: ids below 2²⁹, as the value's type takes
/// the key's top 3 bits. Ingest refuses new keys well before (`Limits::max_property_keys`).
pub const MAX_PROPERTY_KEYS: usize = 1 << 29;

/// Strings to dense ids and back. The strings are one byte column with end offsets (files when
/// the table's columns are), and the lookup table holds only ids, hashed by the string they
/// name: a few bytes per string of anonymous memory, where a map of boxed strings held each
/// string twice with two allocations.
#[derive(Debug, Default)]
pub struct Interner {
    pub(in crate::core::store) bytes: Column<u8>,
    pub(in crate::core::store) ends: Column<u64>,
    /// Built after a start from the mapped strings (`ProjectData::load`): a lookup waits
    /// for it, a resolve does not.
    pub(in crate::core::store) index: Deferred<hashbrown::HashTable<u32>>,
}

fn hash_str(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}

impl Interner {
    pub fn in_space(space: &Arc<ColumnSpace>) -> Interner {
        Interner { bytes: space.column(), ends: space.column(), index: Default::default() }
    }

    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(id) = self.get(s) {
            return id;
        }
        let id = self.ends.len() as u32;
        self.bytes.extend_from_slice(s.as_bytes());
        self.ends.push(self.bytes.len() as u64);
        let Interner { bytes, ends, index } = self;
        index.get_mut().insert_unique(hash_str(s), id, |&id| hash_str(resolve(bytes, ends, id)));
        id
    }

    /// `intern`, unless `s` is new and `limit` strings are interned already.
    pub fn intern_below(&mut self, s: &str, limit: usize) -> Option<u32> {
        match self.get(s) {
            Some(id) => Some(id),
            None => (self.len() < limit).then(|| self.intern(s)),
        }
    }

    /// The lookup table of the strings in `bytes` ending at `ends` (an interner's columns
    /// loaded from a checkpoint), checking that they hold whole strings, each once.
    pub(in crate::core::store) fn built_index(bytes: &[u8], ends: &[u64]) -> Result<hashbrown::HashTable<u32>, String> {
        // The strings are valid UTF-8 each exactly when their concatenation is and every end
        // falls on a character boundary: one pass over the bytes instead of one per string.
        let all = std::str::from_utf8(bytes).map_err(|e| format!("the strings are not UTF-8 ({e})"))?;
        let mut start = 0u64;
        for (id, &end) in ends.iter().enumerate() {
            if end < start || end > all.len() as u64 {
                return Err(format!("string {id} ends at {end}, outside {start}..{}", all.len()));
            }
            if !all.is_char_boundary(end as usize) {
                return Err(format!("string {id} is not UTF-8"));
            }
            start = end;
        }
        let mut index = hashbrown::HashTable::with_capacity(ends.len());
        for id in 0..ends.len() as u32 {
            let s = resolve(bytes, ends, id);
            let (same, rehash) =
                (|&other: &u32| resolve(bytes, ends, other) == s, |&id: &u32| hash_str(resolve(bytes, ends, id)));
            // One probe finds a string stored twice or the slot for this one.
            match index.entry(hash_str(s), same, rehash) {
                hashbrown::hash_table::Entry::Occupied(_) => return Err(format!("string {id} is stored twice")),
                hashbrown::hash_table::Entry::Vacant(slot) => {
                    slot.insert(id);
                }
            }
        }
        Ok(index)
    }

    /// The same strings, sharing the files (see `Column::fork`: only one of the two interns
    /// more).
    pub fn fork(&self) -> Interner {
        Interner { bytes: self.bytes.fork(), ends: self.ends.fork(), index: self.index.clone() }
    }

    pub fn get(&self, s: &str) -> Option<u32> {
        self.index.get().find(hash_str(s), |&id| self.resolve(id) == s).copied()
    }

    pub fn resolve(&self, id: u32) -> &str {
        resolve(&self.bytes, &self.ends, id)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

fn resolve<'a>(bytes: &'a [u8], ends: &[u64], id: u32) -> &'a str {
    let id = id as usize;
    let start = if id == 0 { 0 } else { ends[id - 1] as usize };
    // Only whole `&str`s are appended, so every span between ends is valid UTF-8.
    std::str::from_utf8(&bytes[start..ends[id] as usize]).unwrap_or_default()
}

/// A property value to store, its string borrowed (`Table::push_row`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Bool(bool),
    Number(f64),
    Str(&'a str),
    Time(Micros),
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(value: &'a Value) -> Self {
        match value {
            Value::Null => ValueRef::Null,
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Number(n) => ValueRef::Number(*n),
            Value::String(s) => ValueRef::Str(s),
            Value::Timestamp(t) => ValueRef::Time(*t),
        }
    }
}

impl ValueRef<'_> {
    /// The value as stored, its string interned in `strings`.
    pub fn cell(self, strings: &mut Interner) -> Cell {
        match self {
            ValueRef::Null => Cell::Null,
            ValueRef::Bool(b) => Cell::Bool(b),
            ValueRef::Number(n) => Cell::Number(n),
            ValueRef::Str(s) => Cell::Str(strings.intern(s)),
            ValueRef::Time(t) => Cell::Time(t),
        }
    }
}

impl From<ValueRef<'_>> for Value {
    fn from(value: ValueRef<'_>) -> Self {
        match value {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Number(n) => Value::Number(n),
            ValueRef::Str(s) => Value::String(s.to_owned()),
            ValueRef::Time(t) => Value::Timestamp(t),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Number(f64),
    Str(u32),
    Time(Micros),
}

/// One property of a row, as a row's bytes decode to (`props::RowProps`) and as checkpoints
/// of version 4 stored it: its key id and a typed value in 12 plain bytes (4-byte aligned),
/// the value's type in the top 3 bits of the key's word, its 64 bits in two words.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Prop {
    key_and_type: u32,
    low: u32,
    high: u32,
}

const KEY_BITS: u32 = 29;

impl Prop {
    /// `key` must be below `MAX_PROPERTY_KEYS` (the interners that make keys are bounded).
    pub fn new(key: u32, value: Cell) -> Prop {
        debug_assert!((key as usize) < MAX_PROPERTY_KEYS, "property key {key} past the key space");
        let (tag, bits) = tag_and_bits(value);
        Prop { key_and_type: (tag << KEY_BITS) | (key & KEY_MASK), low: bits as u32, high: (bits >> 32) as u32 }
    }

    #[inline]
    pub fn key(&self) -> u32 {
        self.key_and_type & KEY_MASK
    }

    pub fn value(&self) -> Cell {
        cell_of(self.key_and_type >> KEY_BITS, u64::from(self.low) | (u64::from(self.high) << 32))
    }

    /// The 16-byte form of versions up to 3 (and of the traits file): key, type, value.
    pub fn wide(&self) -> WideProp {
        let (tag, bits) = tag_and_bits(self.value());
        WideProp { key: self.key(), tag, bits }
    }
}

/// A value's type (as `Prop` and `WideProp` number it) and its 64 bits.
fn tag_and_bits(value: Cell) -> (u32, u64) {
    match value {
        Cell::Null => (0, 0),
        Cell::Bool(b) => (1, u64::from(b)),
        Cell::Number(n) => (2, n.to_bits()),
        Cell::Str(s) => (3, u64::from(s)),
        Cell::Time(t) => (4, t as u64),
    }
}

/// The value of type `tag` with these bits (an unknown type reads as null).
fn cell_of(tag: u32, bits: u64) -> Cell {
    match tag {
        1 => Cell::Bool(bits != 0),
        2 => Cell::Number(f64::from_bits(bits)),
        3 => Cell::Str(bits as u32),
        4 => Cell::Time(bits as i64),
        _ => Cell::Null,
    }
}

const KEY_MASK: u32 = (1 << KEY_BITS) - 1;

/// A property as versions up to 3 stored it (and the traits file still does): 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct WideProp {
    pub key: u32,
    tag: u32,
    bits: u64,
}

impl WideProp {
    /// As a `Prop`, or `None` when its key is past `MAX_PROPERTY_KEYS` or its type unknown.
    pub fn narrow(&self) -> Option<Prop> {
        let known = self.tag <= 4 && (self.tag != 3 || self.bits <= u64::from(u32::MAX));
        (known && (self.key as usize) < MAX_PROPERTY_KEYS).then(|| Prop::new(self.key, cell_of(self.tag, self.bits)))
    }
}

/// People are user ids and anonymous ids in one id space, so one integer column identifies
/// who did an event; anonymous ids are keyed with a NUL prefix that user ids cannot contain.
fn anonymous_key(anonymous_id: &str) -> String {
    format!("\0{anonymous_id}")
}

/// The groups of a loaded table's column files, in the order a start checks them after its port
/// opens (`engine::Verification`): what scans read (people, names, times, the interned
/// strings), then the properties, then the rows' cold values. An answer computed meanwhile
/// waits only for the groups its reads touched (`EventTable::groups_read`): a funnel without
/// property filters does not wait for the properties, which are most of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileGroup {
    Scanned = 1,
    Properties = 2,
    Cold = 3,
}

impl FileGroup {
    /// In the order they are checked.
    pub const ALL: [FileGroup; 3] = [FileGroup::Scanned, FileGroup::Properties, FileGroup::Cold];

    /// The group of a column file, by its name in a checkpoint (`segment::ProjectFiles`);
    /// version 2's plain cold columns are converted into `cold` when loaded.
    pub fn of_column(name: &str) -> FileGroup {
        match name {
            "props" | "prop_end" => FileGroup::Properties,
            "id_end" | "id_bytes" | "anonymous" | "previous_row" => FileGroup::Cold,
            _ if name.starts_with("cold.") => FileGroup::Cold,
            _ => FileGroup::Scanned,
        }
    }
}

#[derive(Debug, Default)]
pub struct EventTable {
    pub(in crate::core::store) names: Interner,
    pub(in crate::core::store) keys: Interner,
    pub(in crate::core::store) strings: Interner,
    pub(in crate::core::store) people: Interner,
    /// Per person: the person whose events these are (itself, or the user an anonymous id is
    /// aliased to).
    pub(in crate::core::store) canonical: Vec<u32>,
    /// Per person: true for user ids, false for anonymous ids.
    pub(in crate::core::store) is_user: Vec<bool>,
    /// Per user person: the anonymous people aliased to it.
    pub(in crate::core::store) aliases: HashMap<u32, Vec<u32>>,
    /// Per person: its last row (`NONE` when it has none); each row's previous one (`cold`)
    /// links back from it.
    pub(in crate::core::store) last_row: Vec<u32>,
    pub(in crate::core::store) name_counts: Vec<u64>,

    // Row columns.
    pub(in crate::core::store) person: Column<u32>,
    /// Per row: its time, packed (see `Times`).
    pub(in crate::core::store) time: Times,
    pub(in crate::core::store) name: Column<u32>,
    /// Row i's properties (`props::RowProps`) end at byte `prop_block_start[i / PROP_BLOCK] +
    /// prop_end[i]` of `props` (and start where row i-1's end): 2 bytes a row. A block's
    /// offsets may pass 65,535 (64 rows of over 1 KB of properties on average): the block's
    /// start then carries `WRAPPED`, and a row's offset gains 65,536 for each time its block's
    /// offsets decrease up to it, which they do exactly at each wrap since one row's
    /// properties take under 65,536 bytes (`MAX_PROPERTIES`).
    pub(in crate::core::store) prop_end: Column<u16>,
    pub(in crate::core::store) prop_block_start: Vec<u64>,
    pub(in crate::core::store) props: Column<u8>,
    /// Per row, compressed in blocks (read one row at a time, never scanned): its event id,
    /// the anonymous person it was sent under (`NONE`: none), and the same person's row before
    /// it (`NONE` for its first), so a person's rows are a chain from `last_row`.
    pub(in crate::core::store) cold: ColdRows,
    pub(in crate::core::store) min_time: Option<Micros>,
    pub(in crate::core::store) max_time: Option<Micros>,
    /// Rows removed (DeleteUser, retention), left out of every read until a compaction writes
    /// the table without them (see `tombstones`).
    removed: Tombstones,
    /// Per person: its rows not removed, counted at the first removal (empty until then).
    alive: Vec<u32>,
    /// Rows were removed since the last `settle_removals`.
    unsettled: bool,
    /// A removed row held the earliest or the latest time: `settle_removals` finds them again.
    span_stale: bool,
    /// Bumped whenever rows are removed (or, in a new table, renumbered).
    pub(in crate::core::store) generation: u64,
    /// Changes whenever rows are renumbered or the table is replaced, so layouts derived from
    /// it (see `person_order`) know when to rebuild.
    layout: LayoutVersion,
    /// The anonymous people whose owner (`canonical`) changed, by aliases and unlinks, in
    /// order: change `owner_log_start + i` moved `owner_log[i]`. Derived layouts built before a
    /// change move the rows at read time, looking only at the people changed since their build.
    owner_log: Vec<u32>,
    /// Changes before the log's first (trimmed away, see `OWNER_LOG_LIMIT`).
    owner_log_start: u64,
    /// Where the row columns' files are (none: in memory).
    pub(in crate::core::store) space: Option<Arc<ColumnSpace>>,
    /// The last `FileGroup` (as u8) any read touched (0: only `Scanned`'s columns).
    groups_read: std::sync::atomic::AtomicU8,
}

/// A process-wide unique version: a fresh table never shares one with an older table.
#[derive(Debug)]
struct LayoutVersion(u64);

static NEXT_LAYOUT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl LayoutVersion {
    fn next() -> LayoutVersion {
        LayoutVersion(NEXT_LAYOUT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Default for LayoutVersion {
    fn default() -> Self {
        LayoutVersion::next()
    }
}

impl EventTable {
    /// An empty table whose row columns live in files of `space`.
    pub fn in_space(space: Arc<ColumnSpace>) -> EventTable {
        EventTable {
            names: Interner::in_space(&space),
            keys: Interner::in_space(&space),
            strings: Interner::in_space(&space),
            people: Interner::in_space(&space),
            person: space.column(),
            time: Times::in_space(Some(&space)),
            name: space.column(),
            prop_end: space.column(),
            props: space.column(),
            cold: ColdRows::in_space(Some(&space)),
            space: Some(space),
            ..EventTable::default()
        }
    }

    /// The same table, for a snapshot (`ProjectData::fork`): the row columns share their files
    /// (see `Column::fork`: only the fork changes from then on, this table stays as it is for
    /// the queries reading it), the per-person arrays are copied.
    pub fn fork(&self) -> EventTable {
        EventTable {
            names: self.names.fork(),
            keys: self.keys.fork(),
            strings: self.strings.fork(),
            people: self.people.fork(),
            canonical: self.canonical.clone(),
            is_user: self.is_user.clone(),
            aliases: self.aliases.clone(),
            last_row: self.last_row.clone(),
            name_counts: self.name_counts.clone(),
            person: self.person.fork(),
            time: self.time.fork(),
            name: self.name.fork(),
            prop_end: self.prop_end.fork(),
            prop_block_start: self.prop_block_start.clone(),
            props: self.props.fork(),
            cold: self.cold.fork(),
            min_time: self.min_time,
            max_time: self.max_time,
            removed: self.removed.clone(),
            alive: self.alive.clone(),
            unsettled: self.unsettled,
            span_stale: self.span_stale,
            generation: self.generation,
            // The rows keep their numbers, so what is derived from them (the person order)
            // serves both.
            layout: LayoutVersion(self.layout.0),
            owner_log: self.owner_log.clone(),
            owner_log_start: self.owner_log_start,
            space: self.space.clone(),
            groups_read: std::sync::atomic::AtomicU8::new(self.groups_read.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }

    /// Checks the invariants the columns and the per-person arrays share (after loading a
    /// checkpoint), so that a bad file is an error at start, not a panic in a query.
    pub(in crate::core::store) fn check_consistent(&self) -> Result<(), String> {
        let n = self.len();
        let rows = [
            ("person", self.person.len()),
            ("name", self.name.len()),
            ("prop_end", self.prop_end.len()),
            ("cold", self.cold.len()),
        ];
        if let Some((column, len)) = rows.iter().find(|(_, len)| *len != n) {
            return Err(format!("column {column} has {len} rows, time has {n}"));
        }
        let people = self.people.len();
        if self.canonical.len() != people || self.is_user.len() != people || self.last_row.len() != people {
            return Err(format!("per-person arrays disagree with the {people} people"));
        }
        if self.prop_block_start.len() != n.div_ceil(PROP_BLOCK) || self.name_counts.len() > self.names.len() {
            return Err("property blocks or name counts disagree with the rows".into());
        }
        // The cold rows' anonymous people and previous rows are checked as their blocks are
        // decoded (a previous row is before its own; a person past the people reads as none).
        if !self.canonical.iter().all(|&p| (p as usize) < people)
            || !self.last_row.iter().all(|&row| row == NONE || (row as usize) < n)
        {
            return Err("a person's owner or last row does not exist".into());
        }
        let props_end = if n == 0 { 0 } else { self.prop_end_of(n - 1) };
        if props_end > self.props.len() {
            return Err("property offsets run past their column".into());
        }
        Ok(())
    }

    /// `check_consistent` for every row's person and name: a pass over two columns, which a
    /// start runs after their checksums passed (`engine::Verification`), not before the port.
    pub fn check_rows(&self) -> Result<(), String> {
        let people = self.people.len();
        if !self.person.iter().all(|&p| p != NONE && (p as usize) < people)
            || !self.name.iter().all(|&name| (name as usize) < self.name_counts.len())
        {
            return Err("a row names a person or an event name that does not exist".into());
        }
        Ok(())
    }

    /// Waits for the interners' lookups, which a start of a checkpoint builds after the port
    /// opens (`Deferred`): the error of one that failed.
    pub fn lookups_built(&self) -> Result<(), String> {
        for interner in [&self.names, &self.keys, &self.strings, &self.people] {
            interner.index.outcome().map_err(str::to_owned)?;
        }
        Ok(())
    }

    /// Where derived columns (the person order) should live: beside the table's.
    pub fn space(&self) -> Option<&Arc<ColumnSpace>> {
        self.space.as_ref()
    }

    pub fn len(&self) -> usize {
        self.time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }

    pub fn layout_version(&self) -> u64 {
        self.layout.0
    }

    /// How many times an anonymous person changed owner so far (see `owner_log`).
    pub fn owner_changes(&self) -> u64 {
        self.owner_log_start + self.owner_log.len() as u64
    }

    /// The people whose owner changed since the first `since` changes (in order, a person once
    /// per change), or `None` when those are no longer logged.
    pub fn owners_changed_since(&self, since: u64) -> Option<&[u32]> {
        let skip = usize::try_from(since.checked_sub(self.owner_log_start)?).ok()?;
        self.owner_log.get(skip..)
    }

    fn log_owner_changes(&mut self, people: &[u32]) {
        self.log_owner_changes_within(people, OWNER_LOG_LIMIT);
    }

    pub(in crate::core::store) fn log_owner_changes_within(&mut self, people: &[u32], limit: usize) {
        if self.owner_log.len() + people.len() > limit {
            // A layout built before this many changes is rebuilt anyway (`PersonOrder::serves`).
            self.owner_log_start = self.owner_changes();
            self.owner_log.clear();
        }
        self.owner_log.extend_from_slice(people);
    }

    fn person_id(&mut self, key: &str, is_user: bool) -> u32 {
        let id = self.people.intern(key);
        if id as usize == self.canonical.len() {
            self.canonical.push(id);
            self.is_user.push(is_user);
            self.last_row.push(NONE);
        }
        id
    }

    pub fn user_person(&mut self, user_id: &str) -> u32 {
        self.person_id(user_id, true)
    }

    pub fn find_user(&self, user_id: &str) -> Option<u32> {
        self.people.get(user_id)
    }

    pub fn find_anonymous(&self, anonymous_id: &str) -> Option<u32> {
        self.people.get(&anonymous_key(anonymous_id))
    }

    pub fn anonymous_person(&mut self, anonymous_id: &str) -> u32 {
        self.person_id(&anonymous_key(anonymous_id), false)
    }

    /// The id a person is known by outside: the user id, or the anonymous id.
    pub fn person_name(&self, person: u32) -> &str {
        let key = self.people.resolve(person);
        key.strip_prefix('\0').unwrap_or(key)
    }

    /// Links an anonymous id to a user; later aliases of the same anonymous id win.
    pub fn alias(&mut self, anonymous_id: &str, user_id: &str) {
        let anon = self.anonymous_person(anonymous_id);
        let user = self.user_person(user_id);
        let previous = self.canonical[anon as usize];
        if previous == user {
            return;
        }
        if previous != anon
            && let Some(list) = self.aliases.get_mut(&previous)
        {
            list.retain(|&p| p != anon);
        }
        self.canonical[anon as usize] = user;
        self.aliases.entry(user).or_default().push(anon);
        self.log_owner_changes(&[anon]);
    }

    pub fn push(&mut self, event: &Event) {
        let anonymous = if event.anonymous_id.is_empty() { NONE } else { self.anonymous_person(&event.anonymous_id) };
        let person = if event.user_id.is_empty() { anonymous } else { self.user_person(&event.user_id) };
        let properties = event.properties.iter().map(|(key, value)| (key.as_str(), ValueRef::from(value)));
        self.push_row(person, anonymous, &event.name, &event.event_id, event.timestamp, properties);
    }

    /// Appends an event of `person` (sent under the anonymous person `anonymous`, or `NONE`),
    /// its strings borrowed: for a reader that knows the person already.
    pub fn push_row<'a>(
        &mut self,
        person: u32,
        anonymous: u32,
        name: &str,
        event_id: &str,
        timestamp: Micros,
        properties: impl IntoIterator<Item = (&'a str, ValueRef<'a>)>,
    ) {
        let row = self.time.len() as u32;
        let name = self.names.intern(name);
        if name as usize == self.name_counts.len() {
            self.name_counts.push(0);
        }
        self.name_counts[name as usize] += 1;
        let row_start = self.props.len();
        for (key, value) in properties {
            // Ingest stops new keys long before (`Limits::max_property_keys`).
            let Some(key) = self.keys.intern_below(key, MAX_PROPERTY_KEYS) else {
                tracing::error!(key, "a property key past the key space is dropped");
                continue;
            };
            let encoded = crate::core::store::props::encode(key, value.cell(&mut self.strings));
            // Ingest allows at most `MAX_PROPERTIES` a row (`Limits::max_properties`).
            if self.props.len() - row_start + encoded.as_bytes().len() > u16::MAX as usize {
                tracing::error!(row, "properties past 65,535 bytes in a row are dropped");
                break;
            }
            self.props.extend_from_slice(encoded.as_bytes());
        }
        self.push_prop_end();
        let previous = self.link_row(person, row);
        self.cold.push(event_id, anonymous, previous);
        self.person.push(person);
        self.time.push(timestamp);
        self.name.push(name);
        if !self.removed.is_empty() {
            let person = person as usize;
            if self.alive.len() <= person {
                self.alive.resize(person + 1, 0);
            }
            self.alive[person] += 1;
        }
        self.min_time = Some(self.min_time.map_or(timestamp, |t| t.min(timestamp)));
        self.max_time = Some(self.max_time.map_or(timestamp, |t| t.max(timestamp)));
    }

    /// Makes row `row` `person`'s last; returns the row before it in the chain (`NONE`).
    fn link_row(&mut self, person: u32, row: u32) -> u32 {
        std::mem::replace(&mut self.last_row[person as usize], row)
    }

    /// A person's own rows (not those of people aliased to it), in arrival order.
    pub fn own_rows(&self, person: u32) -> Vec<u32> {
        self.touch(FileGroup::Cold);
        let mut rows = Vec::new();
        let mut row = self.last_row[person as usize];
        while row != NONE {
            if !self.removed.contains(row as usize) {
                rows.push(row);
            }
            let previous = self.cold.get(row as usize).map_or(NONE, |values| values.previous);
            // Previous rows come before their own (checked as blocks are decoded): no cycle.
            row = if previous < row { previous } else { NONE };
        }
        rows.reverse();
        rows
    }

    /// Whether a person has rows of its own.
    pub fn has_rows(&self, person: u32) -> bool {
        match self.removed.is_empty() {
            true => self.last_row[person as usize] != NONE,
            false => self.alive.get(person as usize).is_some_and(|&rows| rows > 0),
        }
    }

    /// Ends the properties of the row being added (row `prop_end.len()`) at `props.len()`.
    pub(in crate::core::store) fn push_prop_end(&mut self) {
        let row = self.prop_end.len();
        if row.is_multiple_of(PROP_BLOCK) {
            // A block starts where the row before it ends.
            let start = if row == 0 { 0 } else { self.prop_end_of(row - 1) };
            self.prop_block_start.push(start as u64);
        }
        let start = &mut self.prop_block_start[row / PROP_BLOCK];
        let offset = self.props.len() as u64 - (*start & !WRAPPED);
        if offset > u64::from(u16::MAX) {
            *start |= WRAPPED;
        }
        self.prop_end.push(offset as u16);
    }

    pub(in crate::core::store) fn prop_end_of(&self, row: usize) -> usize {
        let start = self.prop_block_start[row / PROP_BLOCK];
        let offset = u64::from(self.prop_end[row]);
        if start & WRAPPED == 0 {
            return (start + offset) as usize;
        }
        let ends = &self.prop_end[row - row % PROP_BLOCK..=row];
        let wraps = ends.windows(2).filter(|pair| pair[1] < pair[0]).count() as u64;
        ((start & !WRAPPED) + (wraps << 16) + offset) as usize
    }

    /// Notes that a read touched `group`'s columns (see `groups_read`). A load first, so that
    /// scans on many threads do not write one cache line per row.
    #[inline]
    fn touch(&self, group: FileGroup) {
        use std::sync::atomic::Ordering;
        if self.groups_read.load(Ordering::Relaxed) < group as u8 {
            self.groups_read.fetch_max(group as u8, Ordering::Release);
        }
    }

    /// The last group of column files (`FileGroup`) a read of this table has touched: what an
    /// answer computed from it waits for after a start.
    pub fn groups_read(&self) -> FileGroup {
        match self.groups_read.load(std::sync::atomic::Ordering::Acquire) {
            0 | 1 => FileGroup::Scanned,
            2 => FileGroup::Properties,
            _ => FileGroup::Cold,
        }
    }

    pub fn row_props(&self, row: usize) -> RowProps<'_> {
        self.touch(FileGroup::Properties);
        let start = if row == 0 { 0 } else { self.prop_end_of(row - 1) };
        RowProps::new(self.props.get(start..self.prop_end_of(row)).unwrap_or_default())
    }

    pub fn row_event_id(&self, row: usize) -> Cow<'_, str> {
        self.touch(FileGroup::Cold);
        self.cold.get(row).map_or(Cow::Borrowed(""), |values| values.event_id)
    }

    /// Rebuilds row `row` as an event.
    pub fn event(&self, row: usize) -> Event {
        self.touch(FileGroup::Cold);
        let person = self.person[row];
        let user_id = if person != NONE && self.is_user[person as usize] {
            self.person_name(person).to_owned()
        } else {
            String::new()
        };
        let cold = self.cold.get(row);
        let anonymous = cold.as_ref().map_or(NONE, |values| values.anonymous);
        let anonymous_id = if (anonymous as usize) < self.people.len() {
            self.person_name(anonymous).to_owned()
        } else {
            String::new()
        };
        let properties = self
            .row_props(row)
            .map(|prop| {
                let value = match prop.value() {
                    Cell::Null => Value::Null,
                    Cell::Bool(b) => Value::Bool(b),
                    Cell::Number(n) => Value::Number(n),
                    Cell::Str(s) => Value::String(self.strings.resolve(s).to_owned()),
                    Cell::Time(t) => Value::Timestamp(t),
                };
                (self.keys.resolve(prop.key()).to_owned(), value)
            })
            .collect();
        Event {
            event_id: cold.map(|values| values.event_id.into_owned()).unwrap_or_default(),
            name: self.names.resolve(self.name[row]).to_owned(),
            user_id,
            anonymous_id,
            timestamp: self.time.get(row),
            properties,
        }
    }

    /// Removes a row: no read of the table sees it from now on (see `tombstones`), and
    /// `settle_removals` ends the record that removed rows.
    pub fn erase(&mut self, row: u32) {
        let row = row as usize;
        if self.removed.contains(row) {
            return;
        }
        if self.removed.is_empty() {
            self.alive = self.live_rows_per_person();
        }
        self.removed.insert(row);
        self.alive[self.person[row] as usize] -= 1;
        self.name_counts[self.name[row] as usize] -= 1;
        let time = Some(self.time_of(row));
        self.span_stale |= time == self.min_time || time == self.max_time;
        self.unsettled = true;
    }

    /// Each person's rows not in `removed`.
    fn live_rows_per_person(&self) -> Vec<u32> {
        let mut alive = vec![0; self.people.len()];
        for (row, &person) in self.person.iter().enumerate() {
            if !self.removed.contains(row) {
                alive[person as usize] += 1;
            }
        }
        alive
    }

    /// Removes every row older than `before` (retention), finding the earliest and latest
    /// time of the rest in the same pass over the rows' times.
    pub fn remove_before(&mut self, before: Micros) {
        if self.min_time.is_none_or(|t| t >= before) {
            return;
        }
        let mut span = (None, None);
        for row in 0..self.len() {
            if self.removed.contains(row) {
                continue;
            }
            let time = self.time_of(row);
            if time < before {
                self.erase(row as u32);
            } else {
                widen(&mut span, time);
            }
        }
        (self.min_time, self.max_time) = span;
        self.span_stale = false;
    }

    /// Whether `row` was removed (`erase`).
    #[inline]
    pub fn is_removed(&self, row: usize) -> bool {
        self.removed.contains(row)
    }

    /// The removed rows in `rows`, ascending.
    pub fn removed_within(&self, rows: std::ops::Range<usize>) -> impl Iterator<Item = usize> + '_ {
        self.removed.within(rows)
    }

    /// The rows not removed.
    pub fn live_rows(&self) -> usize {
        self.len() - self.removed.count()
    }

    pub(in crate::core::store) fn removed(&self) -> &Tombstones {
        &self.removed
    }

    /// The removed rows a checkpoint saved (after the columns and per-person arrays are in).
    pub(in crate::core::store) fn restore_removed(&mut self, removed: Tombstones) -> Result<(), String> {
        removed.check(self.len())?;
        self.removed = removed;
        self.alive = self.live_rows_per_person();
        Ok(())
    }

    /// Ends a record's removals: the earliest and latest times are found again if a removed
    /// row held one, and the generation and layout change, so that cached answers and the
    /// person order are made again without the removed rows. Returns whether rows were
    /// removed.
    pub fn settle_removals(&mut self) -> bool {
        if !std::mem::take(&mut self.unsettled) {
            return false;
        }
        if std::mem::take(&mut self.span_stale) {
            let mut span = (None, None);
            for row in (0..self.len()).filter(|&row| !self.removed.contains(row)) {
                widen(&mut span, self.time_of(row));
            }
            (self.min_time, self.max_time) = span;
        }
        self.generation += 1;
        self.layout = LayoutVersion::next();
        true
    }

    /// Unlinks every anonymous id aliased to `user` (they become their own people again).
    pub fn unalias_all(&mut self, user: u32) -> Vec<u32> {
        let anons = self.aliases.remove(&user).unwrap_or_default();
        for &anon in &anons {
            self.canonical[anon as usize] = anon;
        }
        self.log_owner_changes(&anons);
        anons
    }

    /// The rows of a user, including rows of anonymous ids aliased to it, by time then arrival.
    pub fn user_rows(&self, person: u32) -> Vec<u32> {
        let mut rows = self.own_rows(person);
        if let Some(anons) = self.aliases.get(&person) {
            for &anon in anons {
                rows.extend(self.own_rows(anon));
            }
        }
        rows.sort_unstable_by_key(|&r| (self.time.get(r as usize), r));
        rows
    }
}

/// Read-only access to the columns, for the analyses: only the store changes them (through
/// `push`, `alias`, `erase` and `settle_removals`), so readers never see a half-applied record.
impl EventTable {
    pub fn names(&self) -> &Interner {
        &self.names
    }
    pub fn keys(&self) -> &Interner {
        &self.keys
    }
    pub fn strings(&self) -> &Interner {
        &self.strings
    }
    pub fn people(&self) -> &Interner {
        &self.people
    }
    /// Per person: the person whose events these are (itself, or the user it is aliased to).
    pub fn canonical(&self) -> &[u32] {
        &self.canonical
    }
    /// Per person: true for user ids, false for anonymous ids.
    pub fn is_user(&self) -> &[bool] {
        &self.is_user
    }
    /// Per user person: the anonymous people aliased to it.
    pub fn aliases(&self) -> &HashMap<u32, Vec<u32>> {
        &self.aliases
    }
    /// Per event name: its stored events.
    pub fn name_counts(&self) -> &[u64] {
        &self.name_counts
    }
    /// Per row: the person who did it.
    pub fn person(&self) -> &[u32] {
        &self.person
    }
    /// Row `row`'s time.
    #[inline]
    pub fn time_of(&self, row: usize) -> Micros {
        self.time.get(row)
    }
    /// Per row: its event name id.
    pub fn name(&self) -> &[u32] {
        &self.name
    }
    pub fn min_time(&self) -> Option<Micros> {
        self.min_time
    }
    pub fn max_time(&self) -> Option<Micros> {
        self.max_time
    }
    /// Bumped whenever rows are removed (see `generation`).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// An event of every property type, for the store's tests.
#[cfg(test)]
pub(crate) fn test_event(id: &str, user: &str, anon: &str, t: Micros) -> Event {
    Event {
        event_id: id.into(),
        name: "view".into(),
        user_id: user.into(),
        anonymous_id: anon.into(),
        timestamp: t,
        properties: vec![
            ("price".into(), Value::Number(9.5)),
            ("sku".into(), Value::String("a".into())),
            ("gift".into(), Value::Bool(true)),
            ("when".into(), Value::Timestamp(7)),
            ("note".into(), Value::Null),
        ],
    }
}

/// Widens the (earliest, latest) span to hold `time`.
fn widen(span: &mut (Option<Micros>, Option<Micros>), time: Micros) {
    span.0 = Some(span.0.map_or(time, |t| t.min(time)));
    span.1 = Some(span.1.map_or(time, |t| t.max(time)));
}

#[cfg(test)]
mod tests {
    use super::test_event as event;
    use super::*;

    #[test]
    fn a_loaded_interner_finds_every_string_and_refuses_broken_or_repeated_ones() {
        let mut interner = Interner::default();
        let strings = ["", "plan", "é", "naïve", "plan2"];
        for s in strings {
            interner.intern(s);
        }
        let index = Interner::built_index(&interner.bytes, &interner.ends).unwrap();
        assert_eq!(index.len(), strings.len());
        let loaded = Interner { index: Deferred::ready(index), ..interner };
        for (id, s) in strings.iter().enumerate() {
            assert_eq!(loaded.get(s), Some(id as u32));
        }
        assert_eq!(loaded.get("pla"), None);
        let broken = |bytes: &[u8], ends: &[u64]| Interner::built_index(bytes, ends).unwrap_err();
        // "é" is two bytes: an end between them cuts a character.
        assert_eq!(broken("aé".as_bytes(), &[2, 3]), "string 0 is not UTF-8");
        assert_eq!(
            broken(b"a\xff", &[1, 2]),
            "the strings are not UTF-8 (invalid utf-8 sequence of 1 bytes from index 1)"
        );
        assert_eq!(broken(b"abab", &[2, 4]), "string 1 is stored twice");
        assert_eq!(broken(b"abc", &[2, 1]), "string 1 ends at 1, outside 2..3");
        assert_eq!(broken(b"abc", &[4]), "string 0 ends at 4, outside 0..3");
    }

    #[test]
    fn the_owner_log_names_the_people_changed_since_and_forgets_past_its_limit() {
        let mut table = EventTable::default();
        table.alias("a1", "u1");
        table.alias("a2", "u1");
        table.alias("a2", "u1"); // no change
        let (a1, a2, u1) =
            (table.find_anonymous("a1").unwrap(), table.find_anonymous("a2").unwrap(), table.find_user("u1").unwrap());
        table.unalias_all(u1);
        assert_eq!(table.owner_changes(), 4);
        assert_eq!(table.owners_changed_since(0), Some(&[a1, a2, a1, a2][..]));
        assert_eq!(table.owners_changed_since(3), Some(&[a2][..]));
        assert_eq!(table.owners_changed_since(4), Some(&[][..]));
        assert_eq!(table.owners_changed_since(5), None);
        // Past the limit the log starts again: earlier changes are no longer listed.
        table.log_owner_changes_within(&[a1, a1, a1], 5);
        assert_eq!(table.owner_changes(), 7);
        assert_eq!(table.owners_changed_since(4), Some(&[a1, a1, a1][..]));
        assert_eq!(table.owners_changed_since(3), None);
    }

    #[test]
    fn rows_round_trip() {
        let mut table = EventTable::default();
        let events = [event("e1", "u1", "", 30), event("e2", "", "a1", 10), event("e3", "u1", "a1", 20)];
        for e in &events {
            table.push(e);
        }
        for (row, e) in events.iter().enumerate() {
            assert_eq!(&table.event(row), e);
        }
        assert_eq!(table.min_time, Some(10));
        assert_eq!(table.max_time, Some(30));
        assert_eq!(table.name_counts, vec![3]);
    }

    /// A new table of `table`'s rows that were not removed, as a compaction makes one.
    fn without_removed(table: &EventTable) -> EventTable {
        let mut fresh = EventTable::default();
        for row in (0..table.len()).filter(|&row| !table.is_removed(row)) {
            fresh.push(&table.event(row));
        }
        fresh
    }

    #[test]
    fn property_offsets_hold_across_blocks_and_compaction() {
        let mut table = EventTable::default();
        let events: Vec<Event> = (0..3 * PROP_BLOCK as i64 + 5)
            .map(|i| {
                let mut e = event(&format!("e{i}"), "u1", "", i);
                e.properties.truncate((i % 6) as usize);
                e
            })
            .collect();
        for e in &events {
            table.push(e);
        }
        assert_eq!(table.prop_block_start.len(), 4);
        for (row, e) in events.iter().enumerate() {
            assert_eq!(&table.event(row), e);
        }
        for row in (0..events.len()).step_by(3) {
            table.erase(row as u32);
        }
        assert!(table.settle_removals());
        let table = without_removed(&table);
        let kept: Vec<&Event> = events.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, e)| e).collect();
        assert_eq!(table.len(), kept.len());
        for (row, e) in kept.iter().enumerate() {
            assert_eq!(&&table.event(row), e);
        }
    }

    #[test]
    fn blocks_past_64_kb_of_properties_wrap_their_offsets_and_read_back() {
        let mut table = EventTable::default();
        let numbers = |count: usize, i: usize| -> Vec<(String, Value)> {
            (0..count).map(|k| (format!("k{k}"), Value::Number((i * k) as f64 / 3.0))).collect()
        };
        // Two blocks of rows of about 8 KB of properties each (9 or 10 bytes a third), with
        // empty rows among them, then a block of small rows.
        let mut events: Vec<Event> = (0..2 * PROP_BLOCK + 10)
            .map(|i| {
                let mut e = event(&format!("e{i}"), "u1", "", i as i64);
                e.properties = if i >= 2 * PROP_BLOCK {
                    vec![("k1".into(), Value::Number(i as f64))]
                } else if i % 5 == 0 {
                    Vec::new()
                } else {
                    numbers(800 + i, i)
                };
                e
            })
            .collect();
        // One row past 65,535 bytes keeps the properties that fit.
        let mut too_many = event("big", "u1", "", 1_000);
        too_many.properties = numbers(12_000, 7);
        events.push(too_many.clone());
        events.push(event("after", "u1", "", 1_001));
        let wrapped =
            |table: &EventTable| table.prop_block_start.iter().map(|start| start & WRAPPED != 0).collect::<Vec<_>>();
        let big = events.len() - 2;
        for e in &events[..big] {
            table.push(e);
        }
        assert_eq!(wrapped(&table), [true, true, false]);
        for e in &events[big..] {
            table.push(e);
        }
        assert_eq!(wrapped(&table), [true, true, true]);
        for (row, e) in events.iter().enumerate().filter(|(row, _)| *row != big) {
            assert_eq!(&table.event(row), e, "row {row}");
        }
        let kept = table.event(big).properties;
        let bytes = table.prop_end_of(big) - table.prop_end_of(big - 1);
        assert!(kept.len() < 12_000 && bytes <= usize::from(u16::MAX) && bytes > usize::from(u16::MAX) - 14);
        assert_eq!(kept[..], too_many.properties[..kept.len()]);
        // Compaction lays the kept rows out afresh, wrapping where they do.
        for row in (0..events.len()).step_by(2) {
            table.erase(row as u32);
        }
        assert!(table.settle_removals());
        let table = without_removed(&table);
        let kept: Vec<&Event> = events.iter().skip(1).step_by(2).collect();
        for (row, e) in kept.iter().enumerate() {
            assert_eq!(&&table.event(row), e, "row {row}");
        }
        assert!(table.prop_block_start[0] & WRAPPED != 0);
    }

    #[test]
    fn aliased_anonymous_rows_count_for_the_user() {
        let mut table = EventTable::default();
        table.push(&event("e1", "u1", "", 30));
        table.push(&event("e2", "", "a1", 10));
        table.push(&event("e3", "", "a2", 5));
        let user = table.find_user("u1").unwrap();
        assert_eq!(table.user_rows(user), vec![0]);
        table.alias("a1", "u1");
        assert_eq!(table.user_rows(user), vec![1, 0]);
        let anon = table.person[1];
        assert_eq!(table.canonical[anon as usize], user);
        // Re-aliasing to another user moves the rows.
        table.alias("a1", "u2");
        assert_eq!(table.user_rows(user), vec![0]);
        let u2 = table.find_user("u2").unwrap();
        assert_eq!(table.user_rows(u2), vec![1]);
    }

    #[test]
    fn removed_rows_leave_every_read_and_a_compacted_table() {
        let mut table = EventTable::default();
        let events: Vec<Event> = (0..6).map(|i| event(&format!("e{i}"), &format!("u{}", i % 2), "", i * 10)).collect();
        for e in &events {
            table.push(e);
        }
        assert!(!table.settle_removals(), "nothing removed");
        assert_eq!(table.generation, 0);
        let layout = table.layout_version();
        table.erase(0);
        table.erase(3);
        table.erase(3);
        assert!(table.settle_removals());
        assert!(!table.settle_removals(), "settled once");
        assert_eq!(table.generation, 1);
        assert_ne!(table.layout_version(), layout, "the person order is made again");
        // Rows keep their numbers; the removed ones are in no read.
        assert_eq!((table.len(), table.live_rows()), (6, 4));
        assert_eq!((0..6).filter(|&r| table.is_removed(r)).collect::<Vec<_>>(), [0, 3]);
        assert_eq!((table.min_time, table.max_time), (Some(10), Some(50)));
        assert_eq!(table.name_counts, vec![4]);
        let (u0, u1) = (table.find_user("u0").unwrap(), table.find_user("u1").unwrap());
        assert_eq!((table.user_rows(u0), table.user_rows(u1)), (vec![2, 4], vec![1, 5]));
        // A row added after a removal counts; a person with every row removed has none.
        table.push(&event("e6", "u2", "", 5));
        let u2 = table.find_user("u2").unwrap();
        assert_eq!(table.min_time, Some(5));
        for row in [1, 5, 6] {
            table.erase(row);
        }
        assert!(table.settle_removals());
        assert!(table.has_rows(u0) && !table.has_rows(u1) && !table.has_rows(u2));
        assert_eq!((table.min_time, table.max_time, table.live_rows()), (Some(20), Some(40), 2));
        let compacted = without_removed(&table);
        let kept: Vec<Event> = (0..compacted.len()).map(|r| compacted.event(r)).collect();
        assert_eq!(kept, [events[2].clone(), events[4].clone()]);
        for r in 0..7 {
            table.erase(r);
        }
        assert!(table.settle_removals());
        assert!(table.live_rows() == 0 && table.min_time.is_none() && !table.has_rows(u0));
    }

    #[test]
    fn retention_removes_older_rows_and_finds_the_span_in_one_pass() {
        let mut table = EventTable::default();
        for (i, at) in [30, 10, 50, 20, 40].into_iter().enumerate() {
            table.push(&event(&format!("e{i}"), &format!("u{}", i % 2), "", at));
        }
        table.remove_before(5);
        assert!(!table.settle_removals(), "nothing older");
        table.erase(2); // the latest, 50
        table.remove_before(25);
        assert!(table.settle_removals());
        assert_eq!((0..5).filter(|&r| table.is_removed(r)).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!((table.min_time, table.max_time, table.live_rows()), (Some(30), Some(40), 2));
        table.remove_before(100);
        assert!(table.settle_removals());
        assert_eq!((table.min_time, table.max_time, table.live_rows()), (None, None, 0));
    }
}
