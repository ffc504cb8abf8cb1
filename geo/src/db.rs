//! The shared, hot-reloadable database handle.

use std::fmt;
use std::fs::{self, File};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use maxminddb::Reader;

use crate::record::CountryRecord;
use crate::reserved;
use crate::{CountryCode, DbInfo, GeoError};

/// A GeoIP country database that answers lookups while it is being reloaded.
///
/// The loaded file is memory-mapped read-only, so that several processes on one host that
/// open the same file share its pages instead of each holding a private copy. Replace the
/// file by renaming a new one over it, never by writing it in place (see [`GeoDb::reload_if_changed`]). It
/// sits behind an [`ArcSwapOption`]: a lookup takes a lock-free snapshot, a reload builds a complete new reader off to the side and swaps it in with
/// one atomic store. Lookups never wait for a reload and never see half a database, and a
/// reload that fails leaves the previous database serving.
///
/// `GeoDb` is `Send + Sync`; share one in an `Arc`.
pub struct GeoDb {
    /// `None` for [`GeoDb::disabled`].
    path: Option<PathBuf>,
    current: ArcSwapOption<Loaded>,
    /// Serialises reloads so that two racing reloads cannot install an older file after a
    /// newer one. Lookups never touch it.
    reload_lock: Mutex<()>,
}

/// The bytes of one version of the file.
enum Source {
    /// The file, memory-mapped read-only.
    Mapped(maxminddb::Mmap),
    /// An empty file (nothing to map; parsing it fails).
    Empty,
}

impl AsRef<[u8]> for Source {
    fn as_ref(&self) -> &[u8] {
        match self {
            Source::Mapped(map) => map,
            Source::Empty => &[],
        }
    }
}

/// Map `file` read-only.
///
/// The mapping stays valid for as long as it exists only if nobody truncates or rewrites the
/// file in place meanwhile. The documented way to replace the database is to write the new
/// file next to it and rename it over the old one (`deploy/fetch-geo-db.sh` does): a rename
/// gives the path a new inode and leaves the mapped one untouched until the last mapping of it
/// goes away. Writing into the mapped file itself (`cp` over it) is not supported: a lookup
/// could see the bytes change under it, or fault on a truncated page.
#[allow(unsafe_code)]
fn map(file: &File) -> std::io::Result<maxminddb::Mmap> {
    // SAFETY: `Mmap::map` is sound as long as the mapped file is not modified or truncated
    // while the map exists. The database is replaced by renaming a new file over it (see
    // above), which never touches the mapped inode; writing it in place is outside this
    // type's contract (documented on `GeoDb` and in the README).
    unsafe { maxminddb::Mmap::map(file) }
}

/// One loaded version of the file.
struct Loaded {
    reader: Reader<Source>,
    stamp: FileStamp,
    info: DbInfo,
}

/// What identifies one version of the file on disk.
///
/// Length and modification time are the portable part. On Unix the inode and change time
/// are compared too, because replacing the file by renaming a new one over it changes
/// those even when an archive extraction gave the new file the old one's mtime and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
    #[cfg(unix)]
    changed: (i64, i64),
}

impl FileStamp {
    fn of(metadata: &fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            #[cfg(unix)]
            inode: (metadata.dev(), metadata.ino()),
            #[cfg(unix)]
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

impl GeoDb {
    /// Opens the MaxMind DB file at `path`, memory-mapped.
    ///
    /// # Errors
    ///
    /// [`GeoError::Io`] when the file cannot be read, [`GeoError::InvalidDatabase`] when it
    /// is not a valid MaxMind DB; both name the path.
    pub fn open(path: impl AsRef<Path>) -> Result<GeoDb, GeoError> {
        let path = path.as_ref().to_path_buf();
        let loaded = load(&path)?;
        Ok(GeoDb {
            path: Some(path),
            current: ArcSwapOption::from_pointee(loaded),
            reload_lock: Mutex::new(()),
        })
    }

    /// A handle without a database: every lookup answers `None`, [`info`](Self::info) is
    /// `None`, and reloading does nothing. Used when no database is configured.
    pub fn disabled() -> GeoDb {
        GeoDb {
            path: None,
            current: ArcSwapOption::empty(),
            reload_lock: Mutex::new(()),
        }
    }

    /// The file this handle reads, or `None` when disabled.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The ISO country code of `ip`, or `None` when the database has none for it.
    ///
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are looked up as the IPv4 address.
    /// Private, loopback, link-local, documentation, multicast and other special-purpose
    /// addresses answer `None` without consulting the database. A record the database
    /// cannot decode also answers `None`: a lookup never fails and never panics.
    pub fn lookup_country(&self, ip: IpAddr) -> Option<CountryCode> {
        let ip = reserved::normalize(ip);
        if reserved::is_special(ip) {
            return None;
        }
        let guard = self.current.load();
        let loaded = guard.as_deref()?;
        // An IPv4-only database rejects IPv6 lookups with an error; skip building it.
        if ip.is_ipv6() && loaded.info.ip_version != 6 {
            return None;
        }
        let result = loaded.reader.lookup(ip).ok()?;
        let record = result.decode::<CountryRecord>().ok()??;
        record.best()
    }

    /// Reads the file again and swaps the new version in, whether or not it changed.
    ///
    /// On a disabled handle this does nothing and succeeds.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open). The previously loaded database keeps serving lookups.
    pub fn reload(&self) -> Result<(), GeoError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let _serialised = self.lock_reloads();
        self.current.store(Some(Arc::new(load(path)?)));
        Ok(())
    }

    /// Reloads when the file on disk differs (size, modification time, and on Unix inode
    /// and change time) from the loaded version; returns whether it reloaded.
    ///
    /// Cheap when nothing changed (one `stat`), so it can be polled every few seconds.
    /// Replace the file by writing a new one next to it and renaming it over the old one:
    /// a file copied in place may be seen half-written, which fails to load and is retried
    /// at the next call. On a disabled handle this returns `Ok(false)`.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), also when the file has disappeared. The previously loaded
    /// database keeps serving lookups.
    pub fn reload_if_changed(&self) -> Result<bool, GeoError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let _serialised = self.lock_reloads();
        let on_disk = fs::metadata(path).map_err(|source| io_error(path, source))?;
        let unchanged = self
            .current
            .load()
            .as_deref()
            .is_some_and(|loaded| loaded.stamp == FileStamp::of(&on_disk));
        if unchanged {
            return Ok(false);
        }
        self.current.store(Some(Arc::new(load(path)?)));
        Ok(true)
    }

    /// Type, build date and IP version of the loaded database, or `None` when disabled.
    pub fn info(&self) -> Option<DbInfo> {
        self.current
            .load()
            .as_deref()
            .map(|loaded| loaded.info.clone())
    }

    fn lock_reloads(&self) -> std::sync::MutexGuard<'_, ()> {
        // The mutex guards no data, so a panic elsewhere while holding it leaves nothing
        // inconsistent: recover from poisoning instead of propagating it.
        self.reload_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoDb")
            .field("path", &self.path)
            .field("info", &self.info())
            .finish()
    }
}

fn io_error(path: &Path, source: std::io::Error) -> GeoError {
    GeoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Maps and parses the file. The stamp comes from the same open file handle as the bytes,
/// so a rename between the two cannot pair one version's stamp with another's contents.
fn load(path: &Path) -> Result<Loaded, GeoError> {
    let file = File::open(path).map_err(|source| io_error(path, source))?;
    let metadata = file.metadata().map_err(|source| io_error(path, source))?;
    // A device or FIFO would be read forever (`/dev/zero`) or block; only files qualify.
    if !metadata.is_file() {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(io_error(path, source));
    }
    let bytes = if metadata.len() == 0 {
        Source::Empty
    } else {
        Source::Mapped(map(&file).map_err(|source| io_error(path, source))?)
    };
    let reader = Reader::from_source(bytes).map_err(|source| GeoError::InvalidDatabase {
        path: path.to_path_buf(),
        source,
    })?;
    let info = DbInfo::from_metadata(reader.metadata());
    Ok(Loaded {
        reader,
        stamp: FileStamp::of(&metadata),
        info,
    })
}
