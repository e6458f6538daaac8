//! Sealing of private keys (station-made, or made by AWS) kept in the ledger until their
//! board has them.
//!
//! Why keep them at all: a station that crashes between "certificate issued" and "written to
//! the board" can then finish the device on restart instead of orphaning an active
//! certificate. Why encrypted: the ledger is a shared, exported, backed-up file; the key file
//! is not. Keys are sealed with AES-256-GCM under a random master key in `<ledger>.key`
//! (mode 0600), with the board serial as associated data so a sealed key cannot be moved to
//! another device's row. The sealed copy is deleted once the board is verified, or when the
//! device gives the key up (it fails, is interrupted, or abandons its certificate).
//!
//! The key file belongs to its ledger: back it up whenever the ledger is backed up (kept where
//! the ledger's readers cannot read it, or the encryption protects nothing). Without it, the
//! unfinished devices whose keys are sealed cannot resume, so
//! [`Ledger::open`](super::Ledger::open) refuses to start rather than make a new key
//! ([`open_key_file`], which every backend uses with what its sealed rows are).
//!
//! A PostgreSQL ledger is shared by many stations, and each station has its own key file
//! (`station.ledger_key`), which never leaves the station: the database never holds a key
//! that opens its sealed rows. A station's key file is checked against the rows *it* sealed
//! (the rows whose `station` is its id); another station's sealed rows are not its business.
//! So a board left unfinished by station A and placed on station B resumes on B without its
//! private key (B's key does not open it, as for any sealed key that does not open): B
//! abandons what A held and provisions the board afresh. Back up each station's key file.

use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::LedgerError;

/// The master key file next to a ledger.
pub(crate) fn key_path(ledger: &Path) -> PathBuf {
    super::beside(ledger, ".key")
}

/// What a ledger holds sealed: how many rows, and one of them (serial, sealed key) to check
/// a key file against.
#[derive(Debug, Default)]
pub(crate) struct SealedKeys {
    pub count: i64,
    pub sample: Option<(String, Vec<u8>)>,
}

/// The key file `key` of the ledger at `ledger` (its path, or a PostgreSQL ledger's URL
/// without password): the existing file, checked against a sealed row; a new one only for a
/// ledger without sealed keys. Refused when sealed keys exist and the key file is missing
/// ([`LedgerError::KeyMissing`]) or does not open them ([`LedgerError::KeyMismatch`]); the
/// file is then left as found.
pub(crate) fn open_key_file(
    ledger: &Path,
    key: &Path,
    sealed: SealedKeys,
) -> Result<Sealer, LedgerError> {
    let key = key.to_path_buf();
    let io = |source| LedgerError::Io {
        path: key.clone(),
        source,
    };
    match Sealer::load(&key).map_err(io)? {
        Some(sealer) => {
            if let Some((serial, blob)) = sealed.sample
                && sealer.open(&serial, &blob).is_none()
            {
                return Err(LedgerError::KeyMismatch {
                    path: ledger.to_path_buf(),
                    key,
                    serial,
                    sealed: sealed.count,
                });
            }
            Ok(sealer)
        }
        None if sealed.count > 0 => Err(LedgerError::KeyMissing {
            path: ledger.to_path_buf(),
            key,
            sealed: sealed.count,
        }),
        None => Sealer::create_new(&key).map_err(io),
    }
}

/// Seals and opens private keys.
pub(crate) struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Sealer {
    /// Loads the master key; `None` if there is no key file.
    fn load(path: &Path) -> std::io::Result<Option<Sealer>> {
        match std::fs::read(path) {
            Ok(b) => Sealer::from_bytes(path, &Zeroizing::new(b)).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a new random master key file (mode 0600), exclusively: the key is written to a
    /// temporary file and linked to `path`, which fails if `path` exists; then the existing
    /// key is loaded instead. Two processes creating a key at once thus end with one key.
    pub(crate) fn create_new(path: &Path) -> std::io::Result<Sealer> {
        let rng = SystemRandom::new();
        let mut k = Zeroizing::new(vec![0u8; 32]);
        rng.fill(&mut k)
            .map_err(|_| std::io::Error::other("no system randomness"))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(
            ".tmp{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let tmp = PathBuf::from(tmp);
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let written = f.write_all(&k).and_then(|_| f.sync_all());
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                    && let Ok(d) = std::fs::File::open(dir)
                {
                    let _ = d.sync_all();
                }
                Sealer::from_bytes(path, &k)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Sealer::load(path)?
                .ok_or_else(|| std::io::Error::other("the key file vanished while it was created")),
            Err(e) => Err(e),
        }
    }

    fn from_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<Sealer> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte key", path.display()),
            )
        })?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// nonce ‖ ciphertext ‖ tag, bound to `serial`.
    pub(crate) fn seal(&self, serial: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system random source is available");
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(serial.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM sealing of a small buffer");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        buf.iter_mut().for_each(|b| *b = 0);
        out
    }

    /// Opens a sealed key; `None` if it was not sealed for `serial` under this master key.
    pub(crate) fn open(&self, serial: &str, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = Zeroizing::new(rest.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(serial.as_bytes()), &mut buf)
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(&dir.path().join("ledger.db"));
        assert!(Sealer::load(&path).unwrap().is_none());
        let first = Sealer::create_new(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // A second creator finds the file there and uses it instead of writing its own.
        let second = Sealer::create_new(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let sealed = first.seal("SN-1", b"key");
        assert_eq!(&second.open("SN-1", &sealed).unwrap()[..], b"key");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn seals_per_serial_and_keeps_the_key_file_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(&dir.path().join("ledger.db"));
        let s = Sealer::create_new(&path).unwrap();
        let sealed = s.seal("SN-1", b"-----BEGIN PRIVATE KEY-----");
        assert!(!sealed.windows(5).any(|w| w == b"BEGIN"));
        assert_eq!(
            &s.open("SN-1", &sealed).unwrap()[..],
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(s.open("SN-2", &sealed).is_none(), "bound to its serial");
        // The same key file opens it later.
        let again = Sealer::load(&path).unwrap().unwrap();
        assert!(again.open("SN-1", &sealed).is_some());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
