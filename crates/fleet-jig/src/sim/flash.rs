//! A virtual board's persistent slots, kept in one JSON file per board serial.
//!
//! The file only ever holds committed content: it is rewritten whole, atomically (the new
//! image goes to a spare file beside it, which then trades places with it in one atomic
//! rename), with mode 0600 because it holds a private key. Staged (uncommitted) data lives in the board's RAM, never here.
//! Slot bytes are zeroized when a `Flash` is dropped, and `Debug` shows lengths only.
//!
//! # Durability: no fsync
//!
//! The guarantee a virtual board must give is the protocol's: after a crash at any instant
//! it holds all previous slot values or all new ones, never a mix. The events a virtual
//! board lives through are the station process dying (killed, crashed), the board being
//! unplugged, or an emulated power cut ([`Flash::store_torn`]). A rename replaces the file
//! atomically in the kernel, and the kernel's page cache outlives the process, so write +
//! rename alone gives that guarantee for all of them. An fsync of the file and of its
//! directory would add protection only against the *host* losing power, which a virtual
//! board does not emulate, and it costs milliseconds per COMMIT on the line's critical path
//! (the station waits for COMMIT's answer). So `store` does not fsync. A real board's
//! firmware must make its commit power-safe on its own flash (A/B copies or a journal).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, Zeroizing};

use crate::error::JigError;
use crate::wire::protocol::Slot;

const FORMAT: &str = "fleet-station-virtual-flash/1";

/// Committed content of a board's slots.
#[derive(Clone, Default)]
pub struct Flash {
    serial: String,
    generation: u32,
    slots: [Option<Zeroizing<Vec<u8>>>; 5],
}

impl std::fmt::Debug for Flash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<(Slot, usize)> = Slot::ALL
            .iter()
            .filter_map(|s| self.slot(*s).map(|d| (*s, d.len())))
            .collect();
        f.debug_struct("Flash")
            .field("serial", &self.serial)
            .field("generation", &self.generation)
            .field("slot_lengths", &lens)
            .finish()
    }
}

/// A flash's spare file, created and open, ready for [`Flash::store_prepared`].
#[derive(Debug)]
pub(crate) struct Spare {
    file: File,
    /// Its name, or `None` for an anonymous file (`O_TMPFILE`).
    named: Option<PathBuf>,
    /// A flash file was there when the spare was made: swap with it (else put it in place).
    replaces: bool,
}

impl Spare {
    /// Removes the spare (a board that leaves the jig without committing). An anonymous one
    /// just goes away when closed.
    pub(crate) fn discard(self) {
        drop(self.file);
        if let Some(path) = &self.named {
            let _ = fs::remove_file(path);
        }
    }
}

/// The on-disk form. Values are hex; zeroized on drop.
#[derive(serde::Serialize, serde::Deserialize)]
struct FlashFile {
    format: String,
    serial: String,
    generation: u32,
    slots: BTreeMap<String, String>,
}

impl Drop for FlashFile {
    fn drop(&mut self) {
        for v in self.slots.values_mut() {
            v.zeroize();
        }
    }
}

impl Flash {
    /// An empty flash for a board.
    pub(crate) fn new(serial: &str) -> Flash {
        Flash {
            serial: serial.to_string(),
            ..Flash::default()
        }
    }

    /// Where the flash of board `serial` lives in `dir`.
    pub fn path_for(dir: &Path, serial: &str) -> PathBuf {
        let safe: String = serial
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        dir.join(format!("{safe}.flash.json"))
    }

    /// Reads a flash file.
    pub fn load(path: &Path) -> Result<Flash, JigError> {
        let bytes = Zeroizing::new(fs::read(path).map_err(|e| JigError::Flash {
            path: path.to_path_buf(),
            detail: format!("cannot read: {e}"),
        })?);
        Flash::parse(&bytes, path)
    }

    /// Reads back the flash `store_prepared` just wrote to `path` (`written` is what it
    /// returned): when the file holds exactly those bytes it holds `self`; otherwise whatever
    /// it holds is parsed.
    pub(crate) fn read_back(&self, path: &Path, written: &[u8]) -> Result<Flash, JigError> {
        let bytes = Zeroizing::new(fs::read(path).map_err(|e| JigError::Flash {
            path: path.to_path_buf(),
            detail: format!("cannot read back: {e}"),
        })?);
        if *bytes == *written {
            Ok(self.clone())
        } else {
            Flash::parse(&bytes, path)
        }
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<Flash, JigError> {
        let err = |detail: String| JigError::Flash {
            path: path.to_path_buf(),
            detail,
        };
        let file: FlashFile =
            serde_json::from_slice(bytes).map_err(|e| err(format!("not a flash file: {e}")))?;
        if file.format != FORMAT {
            return Err(err(format!("unknown format {:?}", file.format)));
        }
        let mut flash = Flash::new(&file.serial);
        flash.generation = file.generation;
        for (name, value) in &file.slots {
            let slot = Slot::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| err(format!("unknown slot {name:?}")))?;
            let data = Zeroizing::new(
                hex::decode(value).map_err(|_| err(format!("slot {name} is not hex")))?,
            );
            flash.slots[slot.index()] = Some(data);
        }
        Ok(flash)
    }

    /// Loads the flash at `path`, or an empty one for `serial` when there is no file yet.
    pub(crate) fn load_or_new(path: &Path, serial: &str) -> Result<Flash, JigError> {
        if path.exists() {
            Flash::load(path)
        } else {
            Ok(Flash::new(serial))
        }
    }

    /// Writes the whole flash to `path` atomically, mode 0600: the new image goes to a spare
    /// file, which becomes `path` in one atomic step — linked in as `path` when there is no
    /// flash file yet, else swapped with it (`renameat2(RENAME_EXCHANGE)`) under the name
    /// [`Flash::spare_path`], which then holds the previous image and is emptied, so no old
    /// key lingers. Not fsynced: see the module docs.
    pub(crate) fn store(&self, path: &Path) -> Result<(), JigError> {
        self.store_prepared(path, Flash::prepare_spare(path)?)
            .map(|_| ())
    }

    /// Creates the spare file of the flash at `path` and keeps it open, so a later
    /// [`store_prepared`](Self::store_prepared) does not have to allocate an inode (the slow
    /// part of a store, done under the directory's lock when the file has a name). The spare
    /// is an anonymous file in the flash's directory (`O_TMPFILE`: no name, nothing to clean
    /// up if it is never used) where the file system allows it, else `.<name>.tmp`.
    pub(crate) fn prepare_spare(path: &Path) -> Result<Spare, JigError> {
        let replaces = path.exists();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let anonymous = OpenOptions::new()
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir);
        match anonymous {
            Ok(file) => Ok(Spare {
                file,
                named: None,
                replaces,
            }),
            Err(_) => Flash::prepare_named_spare(path, replaces),
        }
    }

    /// The spare as `.<name>.tmp` beside `path`, created or emptied.
    fn prepare_named_spare(path: &Path, replaces: bool) -> Result<Spare, JigError> {
        let spare = Flash::spare_path(path);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&spare)
            .map_err(|e| JigError::Flash {
                path: spare.clone(),
                detail: format!("cannot create: {e}"),
            })?;
        Ok(Spare {
            file,
            named: Some(spare),
            replaces,
        })
    }

    /// [`store`](Self::store) through a spare file prepared earlier. Returns the image
    /// written, for [`read_back`](Self::read_back).
    pub(crate) fn store_prepared(
        &self,
        path: &Path,
        mut spare: Spare,
    ) -> Result<Zeroizing<Vec<u8>>, JigError> {
        let bytes = self.serialize();
        let spare_path = Flash::spare_path(path);
        spare
            .file
            .write_all(&bytes)
            .map_err(|e| self.flash_err(&spare_path, format!("cannot write: {e}")))?;
        if spare.named.is_none() {
            // The first flash file: the anonymous spare appears as `path`, whole, in one link.
            if !spare.replaces && link_open_file(&spare.file, path).is_ok() {
                return Ok(bytes);
            }
            // Otherwise it takes the spare's name, to be swapped in below.
            let _ = fs::remove_file(&spare_path);
            if link_open_file(&spare.file, &spare_path).is_err() {
                // No way to name it (no /proc?): write a named spare after all.
                spare = Flash::prepare_named_spare(path, spare.replaces)?;
                spare
                    .file
                    .write_all(&bytes)
                    .map_err(|e| self.flash_err(&spare_path, format!("cannot write: {e}")))?;
            }
        }
        drop(spare.file);
        // An exchange, unlike a rename over an existing file, does not make ext4 start
        // writing the new file back on the spot (its replace-via-rename heuristic).
        if spare.replaces && exchange(&spare_path, path).is_ok() {
            let _ = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&spare_path);
            return Ok(bytes);
        }
        fs::rename(&spare_path, path)
            .map_err(|e| self.flash_err(path, format!("cannot rename into place: {e}")))?;
        Ok(bytes)
    }

    /// Emulates power loss half-way through `store`: part of the new image reaches the spare
    /// file, nothing is renamed, so the committed file keeps its previous content.
    pub(crate) fn store_torn(&self, path: &Path) -> Result<(), JigError> {
        let bytes = self.serialize();
        let mut spare = Flash::prepare_named_spare(path, path.exists())?;
        spare
            .file
            .write_all(&bytes[..bytes.len() / 2])
            .map_err(|e| self.flash_err(&Flash::spare_path(path), format!("cannot write: {e}")))
    }

    /// The spare file `store` writes before swapping it in: `.<name>.tmp` beside `path`.
    pub(crate) fn spare_path(path: &Path) -> PathBuf {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        path.with_file_name(format!(".{name}.tmp"))
    }

    /// Number of commits this flash has seen.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub(crate) fn set_generation(&mut self, generation: u32) {
        self.generation = generation;
    }

    pub fn slot(&self, slot: Slot) -> Option<&[u8]> {
        self.slots[slot.index()].as_deref().map(|v| v.as_slice())
    }

    pub(crate) fn set_slot(&mut self, slot: Slot, data: &[u8]) {
        self.slots[slot.index()] = Some(Zeroizing::new(data.to_vec()));
    }

    pub(crate) fn clear_slot(&mut self, slot: Slot) {
        self.slots[slot.index()] = None;
    }

    pub fn certificate(&self) -> Option<&[u8]> {
        self.slot(Slot::Certificate)
    }

    pub fn private_key(&self) -> Option<&[u8]> {
        self.slot(Slot::PrivateKey)
    }

    pub fn root_ca(&self) -> Option<&[u8]> {
        self.slot(Slot::RootCa)
    }

    pub fn device_config(&self) -> Option<&[u8]> {
        self.slot(Slot::DeviceConfig)
    }

    pub fn thing_name(&self) -> Option<&str> {
        self.slot(Slot::ThingName)
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Certificate, private key and thing name are all present.
    pub fn has_identity(&self) -> bool {
        [Slot::Certificate, Slot::PrivateKey, Slot::ThingName]
            .iter()
            .all(|s| self.slot(*s).is_some_and(|d| !d.is_empty()))
    }

    fn serialize(&self) -> Zeroizing<Vec<u8>> {
        let file = FlashFile {
            format: FORMAT.to_string(),
            serial: self.serial.clone(),
            generation: self.generation,
            slots: Slot::ALL
                .iter()
                .filter_map(|s| {
                    self.slot(*s)
                        .map(|d| (s.name().to_string(), hex::encode(d)))
                })
                .collect(),
        };
        // Serializing plain strings and integers cannot fail.
        Zeroizing::new(serde_json::to_vec_pretty(&file).unwrap_or_default())
    }

    fn flash_err(&self, path: &Path, detail: String) -> JigError {
        JigError::Flash {
            path: path.to_path_buf(),
            detail,
        }
    }
}

/// Gives an open file (an anonymous `O_TMPFILE` one) the name `to`; fails if `to` exists.
fn link_open_file(file: &File, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; following the /proc link names the open file.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Swaps the files at `a` and `b` atomically (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn store_load_round_trip_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = Flash::path_for(dir.path(), "VB/01");
        assert!(path.ends_with("VB_01.flash.json"));
        let mut f = Flash::new("VB/01");
        f.set_slot(Slot::Certificate, b"CERT\0\xff");
        f.set_slot(Slot::PrivateKey, b"KEY");
        f.set_slot(Slot::ThingName, b"thing");
        f.set_generation(3);
        f.store(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let g = Flash::load(&path).unwrap();
        assert_eq!(g.serial, "VB/01");
        assert_eq!(g.generation(), 3);
        assert_eq!(g.certificate(), Some(&b"CERT\0\xff"[..]));
        assert_eq!(g.thing_name(), Some("thing"));
        assert_eq!(g.root_ca(), None);
        assert!(g.has_identity());
        assert!(!format!("{g:?}").contains("KEY"));
    }

    #[test]
    fn torn_store_keeps_previous_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = Flash::path_for(dir.path(), "A");
        let mut f = Flash::new("A");
        f.set_slot(Slot::Certificate, b"old");
        f.store(&path).unwrap();
        f.set_slot(Slot::Certificate, b"new");
        f.store_torn(&path).unwrap();
        assert_eq!(Flash::load(&path).unwrap().certificate(), Some(&b"old"[..]));
        assert!(Flash::spare_path(&path).exists());
        fs::remove_file(Flash::spare_path(&path)).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A store after a torn one overwrites the spare and swaps it in; the previous image
        // does not linger in the spare.
        f.store(&path).unwrap();
        f.set_slot(Slot::Certificate, b"newer");
        f.store(&path).unwrap();
        assert_eq!(
            Flash::load(&path).unwrap().certificate(),
            Some(&b"newer"[..])
        );
        assert_eq!(fs::metadata(Flash::spare_path(&path)).unwrap().len(), 0);
        let mode = fs::metadata(Flash::spare_path(&path))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_prepared_spare_leaves_nothing_behind_used_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = Flash::path_for(dir.path(), "S");
        // Unused: nothing to clean up.
        Flash::prepare_spare(&path).unwrap().discard();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        // Used for a first commit: it is the flash file, and the only file.
        let mut f = Flash::new("S");
        f.set_slot(Slot::ThingName, b"t");
        f.store_prepared(&path, Flash::prepare_spare(&path).unwrap())
            .unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![path.file_name().unwrap().to_owned()]);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Used to replace it: swapped in; the spare name is left empty.
        f.set_slot(Slot::ThingName, b"u");
        f.store_prepared(&path, Flash::prepare_spare(&path).unwrap())
            .unwrap();
        assert_eq!(Flash::load(&path).unwrap().thing_name(), Some("u"));
        assert_eq!(fs::metadata(Flash::spare_path(&path)).unwrap().len(), 0);
    }

    #[test]
    fn read_back_returns_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = Flash::path_for(dir.path(), "R");
        let mut f = Flash::new("R");
        f.set_slot(Slot::Certificate, b"cert");
        f.set_generation(1);
        let written = f
            .store_prepared(&path, Flash::prepare_spare(&path).unwrap())
            .unwrap();
        let back = f.read_back(&path, &written).unwrap();
        assert_eq!(back.certificate(), Some(&b"cert"[..]));
        // The file changed under us (a flash fault): what it holds now is parsed.
        let mut g = f.clone();
        g.set_slot(Slot::Certificate, b"CERT");
        g.store(&path).unwrap();
        let back = f.read_back(&path, &written).unwrap();
        assert_eq!(back.certificate(), Some(&b"CERT"[..]));
        // Gone: an error, not a panic.
        fs::remove_file(&path).unwrap();
        assert!(f.read_back(&path, &written).is_err());
    }

    #[test]
    fn corrupt_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.flash.json");
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(Flash::load(&path), Err(JigError::Flash { .. })));
        fs::write(
            &path,
            br#"{"format":"fleet-station-virtual-flash/1","serial":"x","generation":0,"slots":{"nope":""}}"#,
        )
        .unwrap();
        assert!(Flash::load(&path).is_err());
        assert!(Flash::load(&dir.path().join("missing")).is_err());
        assert!(Flash::load_or_new(&dir.path().join("missing"), "m").is_ok());
    }
}
