//! Certificate revocation: the cluster CA's certificate revocation list (CRL).
//!
//! `flotilla certs revoke SERIAL` signs a new CRL with the CA key and writes it as `crl.pem`
//! beside `ca.pem`. The coordinator reads that file at start and whenever it changes: new
//! handshakes are checked against it by rustls (a revoked certificate fails the TLS handshake),
//! and connections already open with a revoked certificate are closed. A CRL is a standard
//! X.509 CRL (`openssl crl -in crl.pem -text` reads it), so other TLS servers in front of the
//! cluster can use the same file.
//!
//! Serial numbers are written as colon-separated upper-case hex bytes (`4F:1A:…`), as
//! `openssl x509 -serial` prints them without the colons; both forms are accepted.

use std::collections::BTreeSet;
use std::path::Path;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::tls::{ClusterCa, TlsError};

/// The CRLs a coordinator enforces, and the serials they revoke.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// Serial numbers (big-endian, no leading zero bytes) revoked by any CRL above.
    serials: BTreeSet<Vec<u8>>,
}

/// One revoked certificate as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub serial: String,
    /// Unix seconds.
    pub revoked_at: i64,
}

impl RevocationList {
    /// Reads the CRLs in `path` (PEM, one or more). A missing file is an empty list: a
    /// cluster that never revoked anything has none.
    pub fn load(path: &Path) -> Result<RevocationList, TlsError> {
        let bytes = read_optional(path)?.unwrap_or_default();
        Self::from_pem(&bytes).map_err(|message| TlsError::Revocation {
            path: path.into(),
            message,
        })
    }

    /// Parses the CRLs in a PEM file's contents (empty: nothing revoked).
    pub fn from_pem(bytes: &[u8]) -> Result<RevocationList, String> {
        let crls = parse_crls(bytes)?;
        let mut serials = BTreeSet::new();
        for (index, crl) in crls.iter().enumerate() {
            for (serial, _) in
                revoked_in(crl).map_err(|error| format!("CRL {}: {error}", index + 1))?
            {
                serials.insert(serial);
            }
        }
        Ok(RevocationList { crls, serials })
    }

    /// The CRLs, as rustls's verifier takes them.
    pub fn crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.crls.clone()
    }

    /// Whether `certificate`'s serial number is revoked.
    pub fn revokes(&self, certificate: &CertificateDer<'_>) -> bool {
        serial_of(certificate).is_ok_and(|serial| self.serials.contains(&serial))
    }

    pub fn len(&self) -> usize {
        self.serials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }
}

/// `path`'s contents, or None when there is no such file.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, TlsError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(TlsError::Read {
            path: path.into(),
            message: error.to_string(),
        }),
    }
}

/// The CRL blocks of a PEM file's contents.
fn parse_crls(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("not a PEM CRL: {error}"))?;
    if crls.is_empty() && !bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("holds no X509 CRL block".into());
    }
    Ok(crls)
}

/// The serials (leading zeros dropped) one CRL revokes, with their revocation times (Unix
/// seconds).
fn revoked_in(crl: &CertificateRevocationListDer<'_>) -> Result<Vec<(Vec<u8>, i64)>, String> {
    let (_, parsed) =
        x509_parser::parse_x509_crl(crl.as_ref()).map_err(|error| error.to_string())?;
    Ok(parsed
        .iter_revoked_certificates()
        .map(|revoked| {
            (
                trim(revoked.raw_serial()),
                revoked.revocation_date.timestamp(),
            )
        })
        .collect())
}

/// Writes `crl_pem` to `path` aside and renames it into place, so a coordinator polling the
/// file never reads half a list.
pub fn write_crl(path: &Path, crl_pem: &str) -> Result<(), TlsError> {
    let staging = path.with_extension("pem.new");
    crate::tls::remove_if_present(&staging)?;
    crate::tls::write_private(&staging, crl_pem, false, &mut Vec::new())?;
    std::fs::rename(&staging, path).map_err(|error| TlsError::Write {
        path: path.into(),
        message: error.to_string(),
    })
}

fn trim(bytes: &[u8]) -> Vec<u8> {
    let start = bytes
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

/// A certificate's serial number (big-endian bytes, leading zeros dropped).
pub fn serial_of(certificate: &CertificateDer<'_>) -> Result<Vec<u8>, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|error| TlsError::BadCertificate(error.to_string()))?;
    Ok(trim(parsed.raw_serial()))
}

/// `4F:1A:…`
pub fn format_serial(serial: &[u8]) -> String {
    serial
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads a serial as [`format_serial`] writes it, or as plain hex (`4f1a…`).
pub fn parse_serial(text: &str) -> Result<Vec<u8>, TlsError> {
    let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    let bad = || {
        TlsError::BadCertificate(format!(
            "{text:?} is not a serial number (hex bytes, as `flotilla certs show` prints them)"
        ))
    };
    if digits.is_empty() || digits.len() > 40 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes = (0..padded.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&padded[at..at + 2], 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, _>>()?;
    Ok(trim(&bytes))
}

impl ClusterCa {
    /// A new CRL signed by this CA that revokes everything `previous` (this CA's current
    /// `crl.pem`, or empty) revoked plus `serials`, with the next CRL number. Valid for ten
    /// years: the coordinator does not enforce a CRL's next-update date, and a revocation
    /// must not lapse because nobody reissued the list.
    pub fn revoke(&self, previous: &[u8], serials: &[Vec<u8>]) -> Result<String, TlsError> {
        let mut entries: Vec<RevokedCertParams> = Vec::new();
        let mut number: u64 = 0;
        let mut seen = BTreeSet::new();
        let crls = parse_crls(previous)
            .map_err(|error| TlsError::Generate(format!("the current CRL: {error}")))?;
        for crl in &crls {
            let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref())
                .map_err(|error| TlsError::Generate(format!("the current CRL: {error}")))?;
            if parsed.issuer().as_raw() != self.subject_raw()?.as_slice() {
                continue; // another CA's list (during a rotation)
            }
            if let Some(current) = parsed.crl_number() {
                number = number.max(u64::try_from(current).unwrap_or(u64::MAX - 1));
            }
            for revoked in parsed.iter_revoked_certificates() {
                let serial = trim(revoked.raw_serial());
                if seen.insert(serial.clone()) {
                    entries.push(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&serial),
                        revocation_time: time::OffsetDateTime::from_unix_timestamp(
                            revoked.revocation_date.timestamp(),
                        )
                        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                        reason_code: None,
                        invalidity_date: None,
                    });
                }
            }
        }
        let now = time::OffsetDateTime::now_utc();
        for serial in serials {
            if seen.insert(serial.clone()) {
                entries.push(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now,
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                });
            }
        }
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(3650),
            crl_number: SerialNumber::from((number + 1).to_be_bytes().to_vec()),
            issuing_distribution_point: None,
            revoked_certs: entries,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|error| TlsError::Generate(error.to_string()))?;
        crl.pem()
            .map_err(|error| TlsError::Generate(error.to_string()))
    }

    fn subject_raw(&self) -> Result<Vec<u8>, TlsError> {
        let der = self.cert_der();
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|error| TlsError::BadCertificate(error.to_string()))?;
        Ok(parsed.subject().as_raw().to_vec())
    }
}

/// Every certificate `path`'s CRLs revoke, for `flotilla certs revoked`.
pub fn list(path: &Path) -> Result<Vec<Revoked>, TlsError> {
    let bytes = read_optional(path)?.unwrap_or_default();
    let invalid = |message: String| TlsError::Revocation {
        path: path.into(),
        message,
    };
    let mut all = Vec::new();
    for crl in &parse_crls(&bytes).map_err(invalid)? {
        all.extend(
            revoked_in(crl)
                .map_err(invalid)?
                .into_iter()
                .map(|(serial, revoked_at)| Revoked {
                    serial: format_serial(&serial),
                    revoked_at,
                }),
        );
    }
    Ok(all)
}

/// How often [`watch_file`] checks the file for changes.
pub const POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Polls the CRL file at `path` every [`POLL`] until `shutdown`. Each time its contents change
/// to a list that parses (a removed file revokes nothing), `install` gets it; when `install`
/// refuses it (returns an error) or it does not parse, the error is logged and the previous
/// list stays in force, so a half-written file never lets a revoked certificate back in.
pub async fn watch_file(
    path: std::path::PathBuf,
    shutdown: tokio_util::sync::CancellationToken,
    mut install: impl FnMut(RevocationList) -> Result<(), String>,
) {
    let mut last = std::fs::read(&path).ok();
    let mut ticker = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let current = tokio::fs::read(&path).await.ok();
        if current == last {
            continue;
        }
        let list = RevocationList::from_pem(current.as_deref().unwrap_or_default());
        last = current;
        let revoked = list.as_ref().map_or(0, RevocationList::len);
        match list.and_then(&mut install) {
            Ok(()) => {
                tracing::info!(path = %path.display(), revoked, "revocation list reloaded");
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "the revocation list changed but cannot be used; the previous one stays in force");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Role;

    #[test]
    fn serials_read_back_in_both_forms() {
        assert_eq!(
            parse_serial("4F:1A:00").expect("colons"),
            vec![0x4f, 0x1a, 0]
        );
        assert_eq!(
            parse_serial("004f1a00").expect("plain"),
            vec![0x4f, 0x1a, 0]
        );
        assert_eq!(parse_serial("abc").expect("odd"), vec![0x0a, 0xbc]);
        assert_eq!(format_serial(&[0x4f, 0x1a, 0]), "4F:1A:00");
        assert!(parse_serial("zz").is_err());
        assert!(parse_serial("").is_err());
    }

    #[test]
    fn a_revoked_certificate_is_listed_and_others_are_not() {
        let ca = ClusterCa::generate("test").expect("ca");
        let kept = ca.issue_pem(Role::Client, "kept", &[]).expect("issue");
        let stolen = ca.issue_pem(Role::Client, "stolen", &[]).expect("issue");
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).expect("der");
        let first = ca
            .revoke(b"", &[parse_serial(&stolen.serial).expect("serial")])
            .expect("revoke");
        let list = RevocationList::from_pem(first.as_bytes()).expect("parse");
        assert!(list.revokes(&der(&stolen.cert_pem)));
        assert!(!list.revokes(&der(&kept.cert_pem)));
        // A second revocation keeps the first.
        let other = ca.issue_pem(Role::Agent, "other", &[]).expect("issue");
        let second = ca
            .revoke(
                first.as_bytes(),
                &[parse_serial(&other.serial).expect("serial")],
            )
            .expect("revoke again");
        let list = RevocationList::from_pem(second.as_bytes()).expect("parse");
        assert_eq!(list.len(), 2);
        assert!(list.revokes(&der(&stolen.cert_pem)) && list.revokes(&der(&other.cert_pem)));
        assert!(RevocationList::from_pem(b"garbage").is_err());
    }
}
