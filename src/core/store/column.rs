//! Append-only typed columns kept in files and read through `mmap`.
//!
//! A project's columns (times, names, people, properties, event ids, the person order) are
//! most of its memory. Kept in `Vec`s they are anonymous memory: the process must hold all of
//! them, and they are rebuilt at every start. In a file mapped shared they live in the page
//! cache instead, which the kernel writes back and evicts under pressure, so the process's
//! own memory stays bounded by what it holds besides events (LMDB and QuestDB's column files
//! work this way). A `Column` reads as a slice, like a `Vec`; growing it extends the file
//! (blocks reserved with `fallocate`, so a full disk fails the growth, not a later write
//! through the map with SIGBUS) and maps it again.
//!
//! Columns made by `Column::memory` (the default, and every test table) are plain `Vec`s.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytemuck::Pod;
use memmap2::MmapMut;

/// A directory whose files back columns, with a counter naming new files.
///
/// A scratch space's files live only as long as their columns. A durable space's files are
/// what checkpoints list (`store::segment`): a file the last checkpoint lists stays when its
/// column goes (a restart needs it) until the next checkpoint no longer lists it.
#[derive(Debug)]
pub struct ColumnSpace {
    dir: PathBuf,
    next: AtomicU64,
    durable: bool,
    /// Files the last checkpoint lists (durable spaces only).
    pinned: parking_lot::Mutex<HashSet<String>>,
    /// Where columns derived from this space's (the person order) go: they are rebuilt, never
    /// listed, so a durable space sends them to a scratch one.
    derived: Option<Arc<ColumnSpace>>,
}

impl ColumnSpace {
    /// Uses `dir` (created when missing) for column files; files already in it are removed:
    /// they were scratch files of an earlier process.
    pub fn scratch(dir: &Path) -> std::io::Result<Arc<ColumnSpace>> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        Ok(Arc::new(ColumnSpace {
            dir: dir.to_owned(),
            next: AtomicU64::new(0),
            durable: false,
            pinned: Default::default(),
            derived: None,
        }))
    }

    /// Uses `dir` (created when missing) for checkpointed column files, numbering new ones after
    /// those already there; derived columns go to `derived`.
    pub fn durable(dir: &Path, derived: Arc<ColumnSpace>) -> std::io::Result<Arc<ColumnSpace>> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            // Its entry, before a checkpoint made in it lets the log be truncated.
            if let Some(parent) = dir.parent() {
                crate::storage::files::sync_dir_entries(parent)?;
            }
        }
        let mut next = 0;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            if let Some(n) = name.to_str().and_then(number_of) {
                next = next.max(n + 1);
            }
        }
        Ok(Arc::new(ColumnSpace {
            dir: dir.to_owned(),
            next: AtomicU64::new(next),
            durable: true,
            pinned: Default::default(),
            derived: Some(derived),
        }))
    }

    /// For tests: a durable space in `dir/segments`, its derived columns in `dir/scratch`.
    #[cfg(test)]
    pub fn durable_for_tests(dir: &Path) -> Arc<ColumnSpace> {
        let scratch = ColumnSpace::scratch(&dir.join("scratch")).expect("scratch space");
        ColumnSpace::durable(&dir.join("segments"), scratch).expect("durable space")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new file name in this space, `<n>.<extension>`.
    pub fn new_name(&self, extension: &str) -> String {
        format!("{}.{extension}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// The space for columns derived from this one's.
    pub fn derived(self: &Arc<Self>) -> Arc<ColumnSpace> {
        self.derived.clone().unwrap_or_else(|| Arc::clone(self))
    }

    /// A new empty column backed by a new file of this space (a column that cannot get one
    /// stops the process, see `fatal`).
    pub fn column<T: Pod>(self: &Arc<Self>) -> Column<T> {
        self.try_column().unwrap_or_else(|(path, err)| fatal(self.durable, "cannot create", &path, &err))
    }

    /// `column`, failing instead of stopping (for checkpoints, which can report it).
    pub fn try_column<T: Pod>(self: &Arc<Self>) -> Result<Column<T>, (PathBuf, std::io::Error)> {
        let name = self.new_name("col");
        let path = self.dir.join(&name);
        match FileColumn::create(&path) {
            Ok(()) => Ok(Column {
                len: 0,
                backing: Backing::File(FileColumn {
                    file: Arc::new(ColumnFile { path, name, space: Arc::clone(self) }),
                    map: None,
                    capacity_bytes: 0,
                    written_bytes: 0,
                }),
                space: Some(Arc::clone(self)),
                full_blocks: Default::default(),
            }),
            Err(err) => Err((path, err)),
        }
    }

    /// The column a checkpoint listed: file `name`, its first `len` values.
    pub fn open<T: Pod>(self: &Arc<Self>, name: &str, len: usize) -> std::io::Result<Column<T>> {
        let path = self.dir.join(name);
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
        let capacity_bytes = file.metadata()?.len() as usize;
        if capacity_bytes < len * size_of::<T>() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} holds {capacity_bytes} bytes, fewer than the {len} values listed", path.display()),
            ));
        }
        // SAFETY: as in `FileColumn::grow_to`: files of this space are opened by this process only.
        let map = if capacity_bytes == 0 { None } else { Some(unsafe { MmapMut::map_mut(&file)? }) };
        Ok(Column {
            len,
            backing: Backing::File(FileColumn {
                file: Arc::new(ColumnFile { path, name: name.to_owned(), space: Arc::clone(self) }),
                map,
                capacity_bytes,
                // Anything may be in the file past the listed values (appended after the
                // checkpoint).
                written_bytes: capacity_bytes,
            }),
            space: Some(Arc::clone(self)),
            full_blocks: Default::default(),
        })
    }

    /// Records the files a new checkpoint lists, and removes those the previous one listed
    /// and this one does not (no column holds them any more: a checkpoint lists every live
    /// column of the space).
    pub fn pin(&self, listed: HashSet<String>) -> std::io::Result<()> {
        let previous = std::mem::replace(&mut *self.pinned.lock(), listed.clone());
        for name in previous.difference(&listed) {
            remove_if_present(&self.dir.join(name))?;
        }
        Ok(())
    }

    /// Adds `files` to the pinned ones, deleting nothing: a checkpoint pins what its manifest
    /// lists before writing it, so a column dropped meanwhile cannot delete a listed file even
    /// when the manifest's write fails half way (renamed, its directory not synced). The next
    /// `pin` removes whatever of them the next manifest does not list.
    pub fn pin_also(&self, files: impl IntoIterator<Item = String>) {
        self.pinned.lock().extend(files);
    }

    /// At start: removes every numbered file (`<n>.<ext>`, the names this space gives) the
    /// checkpoint does not list (left by a crash), and pins the listed ones. Other files (the
    /// manifest) are not the space's to remove.
    pub fn keep_only(&self, listed: HashSet<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if number_of(&name).is_some() && !listed.contains(&name) {
                remove_if_present(&entry.path())?;
            }
        }
        *self.pinned.lock() = listed;
        Ok(())
    }
}

/// The number of a file name this space gives (`<n>.<ext>`).
fn number_of(name: &str) -> Option<u64> {
    let (number, extension) = name.split_once('.')?;
    if extension.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse().ok()
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// A durable column that cannot grow has nowhere to put an event the log already holds: stop
/// the process, and let the restart replay it once there is room (nothing acknowledged is
/// lost). A scratch column (the person order) is only a query's: that query fails (a panic in
/// its task), not the process; so does anything whose file or directory is gone (removed under
/// a server being torn down, or by hand), as a restart would not bring it back.
fn fatal(durable: bool, what: &str, path: &Path, err: &std::io::Error) -> ! {
    let removed = err.kind() == std::io::ErrorKind::NotFound || path.parent().is_some_and(|dir| !dir.exists());
    if !durable || removed {
        panic!("{what} column file {}: {err}", path.display());
    }
    tracing::error!(path = %path.display(), error = %err, "{what} a column file; stopping (acknowledged events are in the log and come back at restart)");
    eprintln!("sextant: {what} column file {}: {err}", path.display());
    std::process::abort()
}

/// Growth step bounds: start at a page's worth, double, but reserve at most 4 MiB at a time, so
/// a file holds at most 4 MiB it does not use yet.
const MIN_GROWTH_BYTES: usize = 4096;
const MAX_GROWTH_BYTES: usize = 4 << 20;

#[derive(Debug)]
struct FileColumn {
    file: Arc<ColumnFile>,
    map: Option<MmapMut>,
    capacity_bytes: usize,
    /// The file reads as zeros past this many bytes: it was never written there (growth
    /// reserves zeroed blocks), so zeroing values there is needless.
    written_bytes: usize,
}

/// A column's file, shared by the column and its forks (`Column::fork`): it is removed when
/// the last of them goes (unless a checkpoint lists it).
#[derive(Debug)]
struct ColumnFile {
    path: PathBuf,
    name: String,
    space: Arc<ColumnSpace>,
}

impl std::ops::Deref for FileColumn {
    type Target = ColumnFile;

    fn deref(&self) -> &ColumnFile {
        &self.file
    }
}

impl FileColumn {
    /// The file is opened only to grow it: the map alone keeps the data, so thousands of
    /// columns hold no file descriptors.
    fn create(path: &Path) -> std::io::Result<()> {
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path).map(drop)
    }

    /// Makes the file and its map hold at least `bytes`. Inlined check: it runs on every push.
    #[inline]
    fn grow_to(&mut self, bytes: usize) {
        if bytes > self.capacity_bytes {
            self.grow(bytes);
        }
    }

    #[cold]
    fn grow(&mut self, bytes: usize) {
        let step = self.capacity_bytes.clamp(MIN_GROWTH_BYTES, MAX_GROWTH_BYTES);
        let target = bytes.max(self.capacity_bytes + step).next_multiple_of(MIN_GROWTH_BYTES);
        let file = match std::fs::OpenOptions::new().read(true).write(true).open(&self.path) {
            Ok(file) => file,
            Err(err) => fatal(self.space.durable, "cannot open", &self.path, &err),
        };
        if let Err(err) = reserve(&file, target) {
            fatal(self.space.durable, "cannot grow", &self.path, &err);
        }
        // SAFETY: the file is this column's own (a fresh name in its space, which nothing
        // else opens), and of its forks, which read only values below their length that no
        // sharer writes again (`Column::fork`); the old map is dropped before any slice of the
        // new one is handed out (`&mut self`).
        match unsafe { MmapMut::map_mut(&file) } {
            Ok(map) => {
                self.map = Some(map);
                self.capacity_bytes = target;
            }
            Err(err) => fatal(self.space.durable, "cannot map", &self.path, &err),
        }
    }

    /// The mapped values (none before the first growth; a map is page-aligned, so any
    /// plain type's alignment holds). A map sized in pages holds whole values of a type whose
    /// size is a power of two; of others (12-byte keys), the whole ones before its end.
    fn values<T: Pod>(&self) -> &[T] {
        self.map.as_deref().map_or(&[], |bytes| bytemuck::cast_slice(whole_values::<T>(bytes)))
    }

    fn values_mut<T: Pod>(&mut self) -> &mut [T] {
        match self.map.as_deref_mut() {
            Some(bytes) => {
                let whole = whole_values::<T>(bytes).len();
                bytemuck::cast_slice_mut(&mut bytes[..whole])
            }
            None => &mut [],
        }
    }
}

/// The bytes of `bytes` that hold whole values of `T`.
fn whole_values<T>(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len() / size_of::<T>() * size_of::<T>()]
}

impl Drop for ColumnFile {
    fn drop(&mut self) {
        if self.space.durable && self.space.pinned.lock().contains(&self.name) {
            return;
        }
        // A leftover is harmless: scratch spaces are emptied, durable ones tidied, at start.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Extends `file` to `bytes` with its blocks allocated.
fn reserve(file: &File, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(bytes).map_err(|_| std::io::Error::other("column file too large"))?;
    // SAFETY: a plain syscall on a file descriptor this process owns.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // Filesystems without fallocate: a sparse extension, as good as it gets there.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(bytes as u64),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

#[derive(Debug)]
enum Backing<T> {
    Memory(Vec<T>),
    File(FileColumn),
}

/// A growable array of plain values, in memory or in a mapped file (see the module doc).
#[derive(Debug)]
pub struct Column<T: Pod> {
    len: usize,
    backing: Backing<T>,
    /// Where a `fresh` column of the same kind goes.
    space: Option<Arc<ColumnSpace>>,
    /// Checksums of the full `CHECKSUM_BLOCK`s hashed so far (values are appended, never
    /// changed, in durable columns; a mutable borrow forgets them).
    full_blocks: parking_lot::Mutex<Vec<u64>>,
}

/// Bytes per checksummed block of a column: a checkpoint hashes only the blocks that are new.
pub const CHECKSUM_BLOCK: usize = 4 << 20;

/// The checksum of `bytes` that files are verified with: XXH3-64 (`xxhash_rust::xxh3::xxh3_64`
/// gives the same value; `twox_hash` picks AVX2 at run time, and a start hashes every file).
pub fn checksum(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

/// The checksum of each `CHECKSUM_BLOCK` of `bytes` (the last one possibly shorter).
pub fn block_checksums(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks(CHECKSUM_BLOCK).map(checksum).collect()
}

impl<T: Pod> Default for Column<T> {
    fn default() -> Self {
        Column::memory()
    }
}

impl<T: Pod> Column<T> {
    pub fn memory() -> Column<T> {
        Column { len: 0, backing: Backing::Memory(Vec::new()), space: None, full_blocks: Default::default() }
    }

    /// A column in `space` when there is one, else in memory.
    pub fn in_space(space: Option<&Arc<ColumnSpace>>) -> Column<T> {
        space.map_or_else(Column::memory, |space| space.column())
    }

    /// A new empty column where this one lives (a new file in the same space, or memory).
    pub fn fresh(&self) -> Column<T> {
        Column::in_space(self.space.as_ref())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// A column with the same values, for a snapshot of the data (`ProjectData::fork`): one in
    /// memory is copied; one in a file maps the same file, which goes when the last of the two
    /// does. From then on only one of the two may change, and only by appending (`push`,
    /// `extend_from_slice`, `reserve`; not `truncate`, `resize_zeroed` or a mutable slice):
    /// the other reads its values in the file below its length, which then stay as they are.
    pub fn fork(&self) -> Column<T> {
        let backing = match &self.backing {
            Backing::Memory(values) => Backing::Memory(values.clone()),
            Backing::File(file) => {
                // The map covers the file as it is now, values and reserve: its bytes past the
                // values are the writer's to fill, and a growth maps anew.
                let map = (file.capacity_bytes > 0).then(|| {
                    let opened = std::fs::OpenOptions::new().read(true).write(true).open(&file.path);
                    let opened =
                        opened.unwrap_or_else(|err| fatal(file.space.durable, "cannot open", &file.path, &err));
                    // SAFETY: as in `FileColumn::grow`: the file is this column's and its forks'
                    // only, and no sharer writes below another's length again.
                    unsafe { MmapMut::map_mut(&opened) }
                        .unwrap_or_else(|err| fatal(file.space.durable, "cannot map", &file.path, &err))
                });
                Backing::File(FileColumn {
                    file: Arc::clone(&file.file),
                    map,
                    capacity_bytes: file.capacity_bytes,
                    written_bytes: file.written_bytes,
                })
            }
        };
        Column {
            len: self.len,
            backing,
            space: self.space.clone(),
            full_blocks: parking_lot::Mutex::new(self.full_blocks.lock().clone()),
        }
    }

    /// The file's name in its space (none for a column in memory).
    pub fn file_name(&self) -> Option<&str> {
        match &self.backing {
            Backing::File(file) => Some(&file.name),
            Backing::Memory(_) => None,
        }
    }

    /// Makes the values written so far durable.
    pub fn sync(&self) -> std::io::Result<()> {
        if let Backing::File(file) = &self.backing {
            if let Some(map) = &file.map {
                map.flush()?;
            }
            // The size that growing set is file metadata: fsync it too.
            std::fs::File::open(&file.path)?.sync_all()?;
        }
        Ok(())
    }

    /// The checksums of the values' bytes by `CHECKSUM_BLOCK` (not of the unused capacity
    /// after them); full blocks are hashed once and remembered.
    pub fn checksums(&self) -> Vec<u64> {
        let bytes: &[u8] = bytemuck::cast_slice(self.as_slice());
        let full = bytes.len() / CHECKSUM_BLOCK;
        let mut known = self.full_blocks.lock();
        known.truncate(full);
        while known.len() < full {
            let at = known.len() * CHECKSUM_BLOCK;
            known.push(checksum(&bytes[at..at + CHECKSUM_BLOCK]));
        }
        let mut sums = known.clone();
        if bytes.len() > full * CHECKSUM_BLOCK {
            sums.push(checksum(&bytes[full * CHECKSUM_BLOCK..]));
        }
        sums
    }

    /// Gives back the file's blocks reserved past the values (growth reserves up to 4 MiB
    /// ahead), for a stopped data directory to hold only data. Growing again reserves anew.
    pub fn release_reserve(&mut self) -> std::io::Result<()> {
        let bytes = self.len * size_of::<T>();
        if let Backing::File(file) = &mut self.backing
            && file.capacity_bytes > bytes
        {
            // The map may stay larger than the file: only the values' pages are ever read.
            std::fs::OpenOptions::new().write(true).open(&file.path)?.set_len(bytes as u64)?;
            file.capacity_bytes = bytes;
            file.written_bytes = file.written_bytes.min(bytes);
        }
        Ok(())
    }

    /// Takes `sums` (checked against the file already) as this column's block checksums.
    pub fn assume_checksums(&self, sums: &[u64]) {
        let full = std::mem::size_of_val(self.as_slice()) / CHECKSUM_BLOCK;
        *self.full_blocks.lock() = sums[..full.min(sums.len())].to_vec();
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `additional` more values.
    pub fn reserve(&mut self, additional: usize) {
        match &mut self.backing {
            Backing::Memory(values) => values.reserve(additional),
            Backing::File(file) => file.grow_to((self.len + additional) * size_of::<T>()),
        }
    }

    /// Extends the column to `len` values, the new ones all zero bytes.
    pub fn resize_zeroed(&mut self, len: usize) {
        self.full_blocks.get_mut().clear();
        match &mut self.backing {
            Backing::Memory(values) => values.resize(len, T::zeroed()),
            Backing::File(file) => {
                file.grow_to(len * size_of::<T>());
                // Values past `len` may be left from an earlier truncate, up to where the file
                // was ever written; past that it reads as zeros already (a fresh column's
                // whole file: a sort's scratch columns are not written twice).
                let dirty = (file.written_bytes / size_of::<T>()).min(len);
                if dirty > self.len {
                    file.values_mut::<T>()[self.len..dirty].fill(T::zeroed());
                }
                file.written_bytes = file.written_bytes.max(len * size_of::<T>());
            }
        }
        self.len = len;
    }

    pub fn push(&mut self, value: T) {
        self.extend_from_slice(std::slice::from_ref(&value));
    }

    pub fn extend_from_slice(&mut self, values: &[T]) {
        match &mut self.backing {
            Backing::Memory(stored) => stored.extend_from_slice(values),
            Backing::File(file) => {
                let end = self.len + values.len();
                file.grow_to(end * size_of::<T>());
                file.values_mut::<T>()[self.len..end].copy_from_slice(values);
                file.written_bytes = file.written_bytes.max(end * size_of::<T>());
            }
        }
        self.len += values.len();
    }

    pub fn extend(&mut self, values: impl IntoIterator<Item = T>) {
        let values = values.into_iter();
        self.reserve(values.size_hint().0);
        for value in values {
            self.push(value);
        }
    }

    pub fn truncate(&mut self, len: usize) {
        self.full_blocks.get_mut().clear();
        if let Backing::Memory(values) = &mut self.backing {
            values.truncate(len);
        }
        self.len = self.len.min(len);
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    pub fn last(&self) -> Option<&T> {
        self.as_slice().last()
    }

    pub fn as_slice(&self) -> &[T] {
        match &self.backing {
            Backing::Memory(values) => values,
            Backing::File(file) => &file.values()[..self.len],
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        self.full_blocks.get_mut().clear();
        match &mut self.backing {
            Backing::Memory(values) => values,
            Backing::File(file) => &mut file.values_mut()[..self.len],
        }
    }
}

impl<T: Pod> std::ops::Deref for Column<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> std::ops::DerefMut for Column<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T: Pod> From<Vec<T>> for Column<T> {
    fn from(values: Vec<T>) -> Self {
        Column { len: values.len(), backing: Backing::Memory(values), space: None, full_blocks: Default::default() }
    }
}

impl<T: Pod + PartialEq> PartialEq for Column<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_the_xxh3_64_that_earlier_checkpoints_listed() {
        // Checkpoints written before `checksum` moved to twox-hash hold xxhash-rust's values:
        // every length class XXH3 treats apart (≤16, ≤128, ≤240, long with a partial stripe and
        // block), streamed in uneven pieces too.
        let bytes: Vec<u8> =
            (0..(CHECKSUM_BLOCK + 4099) as u64).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect();
        for len in [0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1023, 1024, 1025, 65_536, 1 << 20, bytes.len()] {
            let expected = xxhash_rust::xxh3::xxh3_64(&bytes[..len]);
            assert_eq!(checksum(&bytes[..len]), expected, "length {len}");
            let mut streamed = twox_hash::XxHash3_64::default();
            for piece in bytes[..len].chunks(1000) {
                std::hash::Hasher::write(&mut streamed, piece);
            }
            assert_eq!(std::hash::Hasher::finish(&streamed), expected, "length {len}, streamed");
        }
        assert_eq!(block_checksums(&bytes).len(), 2);
    }

    #[test]
    fn durable_spaces_keep_listed_and_foreign_files_and_number_after_the_highest() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["3.col", "7.state", "9.col", "MANIFEST", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let scratch = ColumnSpace::scratch(&dir.path().join("scratch")).unwrap();
        let space = ColumnSpace::durable(dir.path(), scratch).unwrap();
        space.keep_only(["3.col".to_owned(), "7.state".to_owned()].into()).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["3.col", "7.state", "MANIFEST", "notes.txt", "scratch"]);
        assert_eq!(space.new_name("col"), "10.col");
        // A pinned file outlives its column; an unpinned one goes with it.
        let listed: Column<u32> = space.open("3.col", 0).unwrap();
        let mut unlisted: Column<u32> = space.column();
        unlisted.push(1);
        let unlisted_name = unlisted.file_name().unwrap().to_owned();
        drop((listed, unlisted));
        assert!(dir.path().join("3.col").exists() && !dir.path().join(unlisted_name).exists());
        space.pin(HashSet::new()).unwrap();
        assert!(!dir.path().join("3.col").exists() && !dir.path().join("7.state").exists());
        // Pinned ahead of a manifest: a dropped column keeps its file until a later `pin`
        // leaves it out.
        let mut ahead: Column<u32> = space.column();
        ahead.push(1);
        let ahead_name = ahead.file_name().unwrap().to_owned();
        space.pin_also([ahead_name.clone()]);
        drop(ahead);
        assert!(dir.path().join(&ahead_name).exists());
        space.pin(HashSet::new()).unwrap();
        assert!(!dir.path().join(&ahead_name).exists());
    }

    /// A fork reads the values as they were while the column it forked from grows (across new
    /// maps) and the file stays until both are gone; in memory the fork is a copy.
    #[test]
    fn a_fork_keeps_its_values_while_the_other_grows_and_shares_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let space = ColumnSpace::scratch(&dir.path().join("cols")).unwrap();
        for mut column in [space.column::<u64>(), Column::memory()] {
            column.extend(0..1000u64);
            let snapshot = column.fork();
            // The writer appends past the fork's length, well past the file's first map.
            column.extend(1000..300_000u64);
            assert_eq!(snapshot.len(), 1000);
            assert!(snapshot.iter().copied().eq(0..1000u64));
            assert!(column.iter().copied().eq(0..300_000u64));
            let name = column.file_name().map(str::to_owned);
            drop(column);
            assert!(snapshot.iter().copied().eq(0..1000u64), "the fork outlives the column");
            if let Some(name) = name {
                assert!(space.dir().join(&name).exists(), "the fork still maps the file");
                drop(snapshot);
                assert!(!space.dir().join(&name).exists(), "the last sharer takes the file");
            }
        }
        // As the writer uses it: the fork grows (across maps, as does an empty column's) while
        // the column it forked from keeps its values.
        for kept in [0u32, 1000] {
            let mut column: Column<u32> = space.column();
            column.extend(0..kept);
            let mut grown = column.fork();
            grown.extend(kept..300_000);
            assert!(column.iter().copied().eq(0..kept) && grown.iter().copied().eq(0..300_000u32));
            drop(grown);
            assert!(column.iter().copied().eq(0..kept));
        }
    }

    #[test]
    fn file_columns_read_like_vecs_and_grow_across_maps() {
        let dir = tempfile::tempdir().unwrap();
        let space = ColumnSpace::scratch(&dir.path().join("cols")).unwrap();
        let mut file: Column<u64> = space.column();
        let mut memory: Column<u64> = Column::memory();
        for i in 0..100_000u64 {
            file.push(i * 3);
            memory.push(i * 3);
        }
        file.extend_from_slice(&[7, 8, 9]);
        memory.extend_from_slice(&[7, 8, 9]);
        assert_eq!(file.len(), 100_003);
        assert_eq!(file, memory);
        assert_eq!(file[99_999], 299_997);
        file[0] = 42;
        assert_eq!(file.first(), Some(&42));
        file.truncate(10);
        assert_eq!(file.len(), 10);
        assert_eq!(file.last(), Some(&27));
        let fresh = file.fresh();
        assert!(fresh.is_empty());
        // Block checksums: remembered full blocks agree with hashing the bytes afresh.
        let mut big: Column<u64> = space.column();
        big.extend(0..(CHECKSUM_BLOCK as u64 / 8) * 2 + 5);
        let first = big.checksums();
        assert_eq!(first.len(), 3);
        big.extend_from_slice(&[1; 1000]);
        assert_eq!(big.checksums(), block_checksums(bytemuck::cast_slice(&big[..])));
        assert_eq!(big.checksums()[..2], first[..2]);
        big[0] = 99;
        assert_ne!(big.checksums()[0], first[0], "a mutable borrow forgets the remembered blocks");
        let mut zeroed = fresh;
        zeroed.resize_zeroed(3);
        assert_eq!(&zeroed[..], &[0, 0, 0]);
        // Values written and then cut off are zeroed when the column grows over them again,
        // in the map and past a released reserve alike; a fresh file is zeros unwritten.
        zeroed.as_mut_slice().fill(5);
        zeroed.extend_from_slice(&[6; 2000]);
        zeroed.truncate(1);
        zeroed.resize_zeroed(4000);
        assert_eq!((zeroed[0], zeroed[1..].iter().filter(|&&v| v != 0).count()), (5, 0));
        zeroed.as_mut_slice().fill(7);
        zeroed.truncate(2);
        zeroed.release_reserve().unwrap();
        zeroed.resize_zeroed(3000);
        assert_eq!(zeroed[..2], [7, 7]);
        assert!(zeroed[2..].iter().all(|&v| v == 0));
        let listed: Column<u64> = {
            let mut written: Column<u64> = space.column();
            written.extend_from_slice(&[9; 600]);
            written.sync().unwrap();
            let name = written.file_name().unwrap().to_owned();
            std::fs::copy(space.dir().join(&name), space.dir().join("copy.col")).unwrap();
            space.open("copy.col", 100).unwrap()
        };
        let mut reopened = listed;
        // A column opened from a file may hold anything past its listed values.
        reopened.resize_zeroed(700);
        assert!(reopened[..100].iter().all(|&v| v == 9) && reopened[100..].iter().all(|&v| v == 0));
        drop(reopened);
        // Dropped columns take their files with them.
        drop((file, zeroed, big));
        assert_eq!(std::fs::read_dir(dir.path().join("cols")).unwrap().count(), 0);
    }
}
