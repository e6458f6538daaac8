//! A virtual board's persistent slots, kept in one JSON file per board serial.
//!
//! The file only ever holds committed content: it is rewritten whole, atomically (temp file
//! in the same directory, fsync, rename, fsync of the directory), with mode 0600 because it
//! holds a private key. Staged (uncommitted) data lives in the board's RAM, never here.
//! Slot bytes are zeroized when a `Flash` is dropped, and `Debug` shows lengths only.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::{Zeroize, Zeroizing};

use super::error::JigError;
use super::protocol::Slot;

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
    pub fn new(serial: &str) -> Flash {
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
        let err = |detail: String| JigError::Flash {
            path: path.to_path_buf(),
            detail,
        };
        let bytes = Zeroizing::new(fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?);
        let file: FlashFile =
            serde_json::from_slice(&bytes).map_err(|e| err(format!("not a flash file: {e}")))?;
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
    pub fn load_or_new(path: &Path, serial: &str) -> Result<Flash, JigError> {
        if path.exists() {
            Flash::load(path)
        } else {
            Ok(Flash::new(serial))
        }
    }

    /// Writes the whole flash to `path` atomically, mode 0600.
    pub fn store(&self, path: &Path) -> Result<(), JigError> {
        let bytes = self.serialize();
        let tmp = self.write_temp(path, &bytes)?;
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.flash_err(path, format!("cannot rename into place: {e}"))
        })?;
        sync_dir(path);
        Ok(())
    }

    /// Emulates power loss half-way through `store`: part of the new image reaches a temp
    /// file, nothing is renamed, so the committed file keeps its previous content.
    pub fn store_torn(&self, path: &Path) -> Result<(), JigError> {
        let bytes = self.serialize();
        self.write_temp(path, &bytes[..bytes.len() / 2])?;
        Ok(())
    }

    /// Removes temp files a torn store left next to `path`.
    pub fn clean_temp_files(path: &Path) {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return;
        };
        let prefix = format!(".{}.tmp.", name.to_string_lossy());
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Number of commits this flash has seen.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn set_generation(&mut self, generation: u32) {
        self.generation = generation;
    }

    pub fn slot(&self, slot: Slot) -> Option<&[u8]> {
        self.slots[slot.index()].as_deref().map(|v| v.as_slice())
    }

    pub fn set_slot(&mut self, slot: Slot, data: &[u8]) {
        self.slots[slot.index()] = Some(Zeroizing::new(data.to_vec()));
    }

    pub fn clear_slot(&mut self, slot: Slot) {
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

    fn write_temp(&self, path: &Path, bytes: &[u8]) -> Result<PathBuf, JigError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(
            ".{name}.tmp.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.flash_err(&tmp, format!("cannot create: {e}")))?;
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.flash_err(&tmp, format!("cannot write: {e}")));
        }
        Ok(tmp)
    }

    fn flash_err(&self, path: &Path, detail: String) -> JigError {
        JigError::Flash {
            path: path.to_path_buf(),
            detail,
        }
    }
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
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
        assert_eq!(g.serial(), "VB/01");
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
        Flash::clean_temp_files(&path);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
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
