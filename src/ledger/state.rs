//! What the ledger records and answers, whatever stores it: a device's state and the changes
//! to it ([`Transition`]), the rows it reads back ([`DeviceRow`], [`Orphan`]), where a device
//! resumes ([`Resume`]) and how `begin` went ([`Begun`]; [`Began`] inside the ledger). The
//! rules every backend applies live here too: when a device resumes, and what status an
//! abandoned certificate gets.

use std::collections::BTreeMap;

use crate::fleet::payloads::Secret;
use crate::keys::KeySource;

/// Where a device stands. Stored as its lowercase name ([`as_str`](Self::as_str)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceState {
    /// A provisioning attempt started and the device holds no key material: a board seen on
    /// a jig, or a device whose certificate was abandoned or whose key was released.
    Started,
    /// Key material was reserved: a station-made key (sealed here), the public key of the
    /// board's CSR, or none yet (AWS makes the key).
    KeyReserved,
    /// AWS issued a certificate (id, PEM, token and its expiry recorded).
    CertificateIssued,
    /// RegisterThing accepted: the thing exists and the certificate is active.
    Registered,
    /// Credentials written and committed on the board.
    Written,
    /// Read-back matched: the board holds its identity.
    Verified,
    /// Gave up; `reason` says why.
    Failed,
    /// The run stopped before the device finished (a load test interrupted); `reason` says
    /// why. Like `Failed`, the next run starts it over.
    Interrupted,
}

impl DeviceState {
    /// Every state, in the order a device goes through them.
    pub const ALL: [DeviceState; 8] = [
        DeviceState::Started,
        DeviceState::KeyReserved,
        DeviceState::CertificateIssued,
        DeviceState::Registered,
        DeviceState::Written,
        DeviceState::Verified,
        DeviceState::Failed,
        DeviceState::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Started => "started",
            DeviceState::KeyReserved => "key_reserved",
            DeviceState::CertificateIssued => "certificate_issued",
            DeviceState::Registered => "registered",
            DeviceState::Written => "written",
            DeviceState::Verified => "verified",
            DeviceState::Failed => "failed",
            DeviceState::Interrupted => "interrupted",
        }
    }

    /// A state by its stored name; `None` for a name this version does not know.
    pub(crate) fn parse(s: &str) -> Option<DeviceState> {
        Some(match s {
            "started" => DeviceState::Started,
            "key_reserved" => DeviceState::KeyReserved,
            "certificate_issued" => DeviceState::CertificateIssued,
            "registered" => DeviceState::Registered,
            "written" => DeviceState::Written,
            "verified" => DeviceState::Verified,
            "failed" => DeviceState::Failed,
            "interrupted" => DeviceState::Interrupted,
            _ => return None,
        })
    }

    /// A stored state as it is reported: a name this version does not know reads as `Failed`
    /// (final: the device is neither resumed nor counted as verified).
    pub(crate) fn stored(s: &str) -> DeviceState {
        DeviceState::parse(s).unwrap_or(DeviceState::Failed)
    }

    /// Verified, Failed and Interrupted are final (for this attempt: a failed or
    /// interrupted board placed again starts over).
    pub(crate) fn is_final(self) -> bool {
        matches!(
            self,
            DeviceState::Verified | DeviceState::Failed | DeviceState::Interrupted
        )
    }

    /// A device left in this state holds a key or a certificate and resumes there when its
    /// board is placed again. A device at `started` holds nothing and simply starts afresh.
    pub(crate) fn resumes(self) -> bool {
        !self.is_final() && self != DeviceState::Started
    }
}

/// A state change to record.
#[derive(Clone)]
pub enum Transition {
    /// The key is chosen; a station-made key is sealed in the ledger until the board is
    /// verified or the device gives the key up.
    KeyReserved {
        source: KeySource,
        /// SHA-256 (hex) of the public key's SubjectPublicKeyInfo, when known.
        public_key_sha256: Option<String>,
        private_key: Option<Secret>,
    },
    CertificateIssued {
        certificate_id: String,
        certificate_pem: String,
        token: Secret,
        token_expires_ms: u64,
        /// CreateKeysAndCertificate: the private key AWS returned.
        private_key: Option<Secret>,
        public_key_sha256: Option<String>,
    },
    Registered {
        thing_name: String,
        device_configuration: BTreeMap<String, String>,
    },
    Written,
    Verified,
    /// The device's current certificate (or its unanswered certificate request) can no
    /// longer be used: its token expired or was refused, or the station stopped while the
    /// request was in flight. The certificate — or, with no certificate yet, the key whose
    /// request may have been answered — becomes an orphan, and the device goes back to
    /// `started` holding no key material: the next attempt reserves a fresh key, so one
    /// in-flight key is never recorded twice.
    ///
    /// An `Active` orphan may be recorded before the thing's name is known (RegisterThing
    /// refused a token an earlier, lost attempt had used); the device's next `Registered`
    /// names the thing, and the ledger fills it into that orphan.
    CertificateAbandoned {
        reason: String,
        /// What AWS may hold: `Pending` only when no RegisterThing can have used the token.
        status: OrphanStatus,
    },
    /// The key reserved for a certificate request is given back before any request was
    /// sent (the station stopped while the device waited for its turn): nothing can have
    /// been issued for it, so nothing is orphaned, and the device is back at `started`.
    /// Recorded only for a device at `key_reserved` without a certificate: one that holds a
    /// certificate by then keeps it, and its state.
    KeyReleased {
        reason: String,
    },
    Failed {
        reason: String,
    },
    /// The run stopped before the device finished (a load test interrupted). Its current
    /// certificate becomes an orphan as with `Failed`.
    Interrupted {
        reason: String,
    },
}

impl std::fmt::Debug for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens and keys never reach a log line.
        match self {
            Transition::CertificateIssued { certificate_id, .. } => f
                .debug_struct("CertificateIssued")
                .field("certificate_id", certificate_id)
                .finish_non_exhaustive(),
            Transition::Registered { thing_name, .. } => f
                .debug_struct("Registered")
                .field("thing_name", thing_name)
                .finish_non_exhaustive(),
            Transition::Failed { reason }
            | Transition::Interrupted { reason }
            | Transition::KeyReleased { reason } => f
                .debug_struct(self.state().as_str())
                .field("reason", reason)
                .finish(),
            Transition::CertificateAbandoned { reason, status } => f
                .debug_struct("certificate_abandoned")
                .field("reason", reason)
                .field("status", status)
                .finish(),
            other => f.write_str(other.state().as_str()),
        }
    }
}

impl Transition {
    /// The state the device is in once this change is recorded.
    pub(crate) fn state(&self) -> DeviceState {
        match self {
            Transition::KeyReserved { .. } => DeviceState::KeyReserved,
            Transition::CertificateAbandoned { .. } | Transition::KeyReleased { .. } => {
                DeviceState::Started
            }
            Transition::CertificateIssued { .. } => DeviceState::CertificateIssued,
            Transition::Registered { .. } => DeviceState::Registered,
            Transition::Written => DeviceState::Written,
            Transition::Verified => DeviceState::Verified,
            Transition::Failed { .. } => DeviceState::Failed,
            Transition::Interrupted { .. } => DeviceState::Interrupted,
        }
    }
}

/// A device row (without secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub id: i64,
    pub serial: String,
    pub jig: String,
    pub station: String,
    pub state: DeviceState,
    pub key_source: Option<String>,
    pub certificate_id: Option<String>,
    pub thing_name: Option<String>,
    pub reason: Option<String>,
    pub attempts: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// What AWS may hold for an orphaned certificate. Stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanStatus {
    /// Never registered: `PENDING_ACTIVATION`, deleted by AWS when its token expires.
    Pending,
    /// Registered: `ACTIVE` and attached to a thing; deactivate and delete it.
    Active,
    /// Either (a request or a registration was in flight when the answer was lost).
    Unknown,
}

impl OrphanStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OrphanStatus::Pending => "pending",
            OrphanStatus::Active => "active",
            OrphanStatus::Unknown => "unknown",
        }
    }

    /// The status of what a device in `state` gives up, or `None` when it holds nothing AWS
    /// can have issued. `believed` is what the caller knows (a refused token, a lost answer);
    /// it counts only for a certificate the device holds, and a registered certificate is
    /// active whatever the caller believed.
    pub(crate) fn of_abandoned(
        state: DeviceState,
        has_certificate: bool,
        believed: Option<OrphanStatus>,
    ) -> Option<OrphanStatus> {
        let by_state = match state {
            DeviceState::CertificateIssued => OrphanStatus::Pending,
            DeviceState::Registered | DeviceState::Written => OrphanStatus::Active,
            // A request may have been in flight: AWS may hold a pending certificate for
            // this key.
            DeviceState::KeyReserved => OrphanStatus::Unknown,
            _ => return None,
        };
        Some(match (by_state, believed) {
            (OrphanStatus::Active, _) => OrphanStatus::Active,
            (_, Some(s)) if has_certificate => s,
            (s, _) => s,
        })
    }
}

/// A certificate that will never reach a board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// `None` when the request was in flight at a crash and its answer never arrived: AWS
    /// may have issued a certificate the station never learned the id of.
    pub certificate_id: Option<String>,
    pub public_key_sha256: Option<String>,
    pub serial: String,
    /// `pending` (never registered: AWS deletes it when its token expires), `active`
    /// (registered and attached to a thing: deactivate and delete it), `unknown`.
    pub status: String,
    pub thing_name: Option<String>,
    pub reason: String,
    pub recorded_ms: i64,
    /// The station whose certificate it was: the one that reserved the key or received the
    /// certificate (on a file ledger, the ledger's station).
    pub station: String,
}

/// What a restarted station needs to finish a device where it stopped.
pub struct Resume {
    pub state: DeviceState,
    pub key_source: Option<KeySource>,
    /// The station-made or AWS-made private key (unsealed), if the ledger holds it.
    pub private_key: Option<Secret>,
    pub public_key_sha256: Option<String>,
    pub certificate_id: Option<String>,
    pub certificate_pem: Option<String>,
    pub token: Option<Secret>,
    pub token_expires_ms: Option<i64>,
    pub thing_name: Option<String>,
    pub device_configuration: BTreeMap<String, String>,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("state", &self.state)
            .field("certificate_id", &self.certificate_id)
            .field("thing_name", &self.thing_name)
            .finish_non_exhaustive()
    }
}

/// A device the station is working on now.
#[derive(Debug)]
pub struct Begun {
    pub id: i64,
    /// Set when the device was left part-way by an earlier run.
    pub resume: Option<Resume>,
}

/// How recording `begin` went: what a backend answers.
#[derive(Debug)]
pub(crate) enum Began {
    /// A new device, or one starting over: failed, interrupted, or back at `started`.
    Fresh(i64),
    /// Left part-way by an earlier run: it continues from its resume point.
    Resumed(i64, Resume),
    /// Verified already: refused, nothing recorded. `thing` is empty if the row names none.
    Verified { thing: String },
    /// Another station holds the serial's lease: refused, nothing recorded.
    Held { station: String, expires_in_s: i64 },
}
