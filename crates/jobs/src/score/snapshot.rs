//! score's state at a Delta version: the account history and the recent transaction ids as they
//! stood once every row up to that version was written. A start loads it and reads only the
//! commits after it, instead of the whole table: the start's time and memory then grow with
//! the accounts, not with the table.
//!
//! One file per table and ClickHouse database in `score.state_dir`, replaced whole (written
//! beside, synced, renamed). It is used only for the table it was made from (the Delta table id,
//! which a table made again at the same place does not share) and a model whose history reads
//! the same fields with the same window; a file cut short or changed fails its checksum. A file
//! that does not fit is said in the log and the start reads the table as without one.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use txpipe_core::features::History;

use super::dedup::RecentIds;
use super::report::ScoreReport;

const MAGIC: &[u8; 8] = b"TXPSCOR1";

/// What a snapshot must have been made for.
pub(super) struct Key<'a> {
    pub location: &'a str,
    pub database: &'a str,
    pub table_id: &'a str,
    pub history: &'a str,
}

/// Where and when a run writes its state.
pub(super) struct Snapshots {
    pub path: PathBuf,
    pub location: String,
    pub database: String,
    pub table_id: String,
    pub history_key: String,
    pub every: Duration,
    pub last: Instant,
    /// The version of the state written last by this run.
    pub version: Option<u64>,
}

impl Snapshots {
    pub fn key(&self) -> Key<'_> {
        Key {
            location: &self.location,
            database: &self.database,
            table_id: &self.table_id,
            history: &self.history_key,
        }
    }

    /// The state file, if one fits this table and model (one that does not is said and left).
    pub fn load(&self) -> Option<Loaded> {
        match tokio::task::block_in_place(|| read(&self.path, &self.key())) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "not using the state file; reading the table instead");
                None
            }
        }
    }

    /// Whether a state newer than the last written is due at `version`.
    pub fn due(&self, version: Option<u64>) -> bool {
        version.is_some_and(|v| self.version.is_none_or(|s| s < v)) && self.last.elapsed() >= self.every
    }

    /// Writes the state at `version` (every row up to it in the history); a failure is said
    /// and the run goes on (the next start reads more of the table).
    pub fn save(&mut self, version: u64, recent: &RecentIds, history: &History, report: &mut ScoreReport) {
        let started = Instant::now();
        let written =
            tokio::task::block_in_place(|| write(&self.path, &self.key(), version, recent, history));
        self.last = Instant::now();
        match written {
            Ok(bytes) => {
                self.version = Some(version);
                report.snapshots += 1;
                metrics::counter!(crate::telemetry::names::SCORE_STATE_WRITES).increment(1);
                tracing::info!(
                    version,
                    accounts = history.len(),
                    mb = bytes >> 20,
                    seconds = started.elapsed().as_secs_f64(),
                    path = %self.path.display(),
                    "state written"
                );
            }
            Err(e) => tracing::warn!(error = %e, path = %self.path.display(), "writing the state failed"),
        }
    }
}

/// FNV-1a, 64 bits: the checksum of a file, and the name of a table's file.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The file of the table at `location` scored into `database`.
pub(super) fn file(dir: &Path, location: &str, database: &str) -> PathBuf {
    let mut h = Fnv::new();
    h.add(location.as_bytes());
    h.add(&[0]);
    h.add(database.as_bytes());
    dir.join(format!("score-{:016x}.state", h.0))
}

struct Summed<T> {
    inner: T,
    sum: Fnv,
}

impl<W: Write> Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sum.add(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Summed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sum.add(&buf[..n]);
        Ok(n)
    }
}

fn put_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn get_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn get_str(r: &mut impl Read) -> io::Result<String> {
    let n = get_u64(r)?;
    if n > 1 << 16 {
        return Err(invalid("a header string too long"));
    }
    let mut b = vec![0; n as usize];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(|_| invalid("a header string that is not UTF-8"))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Writes the state at `version` to `path`; the bytes written.
pub(super) fn write(
    path: &Path,
    key: &Key<'_>,
    version: u64,
    recent: &RecentIds,
    history: &History,
) -> io::Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("state.tmp");
    let file = File::create(&tmp)?;
    let mut w = Summed { inner: BufWriter::with_capacity(1 << 20, file), sum: Fnv::new() };
    w.write_all(MAGIC)?;
    for s in [key.location, key.database, key.table_id, key.history] {
        put_str(&mut w, s)?;
    }
    w.write_all(&version.to_le_bytes())?;
    recent.write_to(&mut w)?;
    history.write_to(&mut w)?;
    let sum = w.sum.0;
    let mut inner = w.inner;
    inner.write_all(&sum.to_le_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let bytes = file.metadata()?.len();
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(bytes)
}

/// What a snapshot file held.
pub(super) struct Loaded {
    pub version: u64,
    pub recent: RecentIds,
    pub history: History,
}

/// Reads the state in `path` made for `key`: None when there is no file; an error (to be said,
/// then done without) when it is for another table or model, or damaged.
pub(super) fn read(path: &Path, key: &Key<'_>) -> std::result::Result<Option<Loaded>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut r = Summed { inner: BufReader::with_capacity(1 << 20, file), sum: Fnv::new() };
    let loaded = (|| -> io::Result<std::result::Result<Loaded, String>> {
        let mut magic = [0; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("not a score state file of this release"));
        }
        let made_for = [get_str(&mut r)?, get_str(&mut r)?, get_str(&mut r)?, get_str(&mut r)?];
        let wanted = [key.location, key.database, key.table_id, key.history];
        let what = ["table location", "ClickHouse database", "Delta table id", "model history"];
        for ((had, want), what) in made_for.iter().zip(wanted).zip(what) {
            if had != want {
                return Ok(Err(format!("made for another {what} ({had:?}, now {want:?})")));
            }
        }
        let version = get_u64(&mut r)?;
        let recent = RecentIds::read_from(&mut r)?;
        let history = History::read_from(&mut r)?;
        let sum = r.sum.0;
        let stored = get_u64(&mut r.inner)?;
        if stored != sum {
            return Err(invalid("checksum mismatch"));
        }
        if r.inner.read(&mut [0])? != 0 {
            return Err(invalid("bytes after the end"));
        }
        Ok(Ok(Loaded { version, recent, history }))
    })();
    match loaded {
        Ok(found) => found.map(Some),
        Err(e) => Err(format!("{}: damaged ({e})", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_is_used_only_for_its_table_and_model_and_only_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "datalake/clean", "default");
        let key = Key {
            location: "datalake/clean",
            database: "default",
            table_id: "t-1",
            history: "fields a window 1",
        };
        // No file: nothing, and no error.
        assert!(read(&path, &key).unwrap().is_none());

        let mut history = History::new();
        let mut recent = RecentIds::new();
        for (i, account) in ["a", "b", "a", "c"].iter().enumerate() {
            history.observe(account, i as i64 * 1_000_000, Some(5.0), Some("FR"), 60_000_000);
            assert!(recent.first(&format!("tx-{i}")));
        }
        write(&path, &key, 7, &recent, &history).unwrap();
        let loaded = read(&path, &key).unwrap().unwrap();
        assert_eq!((loaded.version, loaded.history.len()), (7, 3));
        let mut ids = loaded.recent;
        assert!(!ids.first("tx-2"), "the ids seen are remembered, with their seed");
        assert!(ids.first("tx-9"));

        // The same place, a table made again (another id), or a model with another history.
        for other in [
            Key { table_id: "t-2", ..key },
            Key { history: "fields a window 2", ..key },
            Key { database: "other", ..key },
        ] {
            let err = read(&path, &other).err().expect("refused");
            assert!(err.contains("made for another"), "{err}");
        }
        // Cut short, or a byte changed: refused.
        let bytes = std::fs::read(&path).unwrap();
        for (i, b) in [(bytes.len() - 3, None), (bytes.len() / 2, Some(1u8)), (10, Some(0x20))] {
            let mut changed = bytes.clone();
            match b {
                None => changed.truncate(i),
                Some(x) => changed[i] ^= x,
            }
            std::fs::write(&path, &changed).unwrap();
            let err = read(&path, &key).err().expect("refused");
            assert!(err.contains("damaged") || err.contains("made for another"), "{err}");
        }
    }
}
