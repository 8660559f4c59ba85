//! Revocation by fingerprint: a deny-list of certificate SHA-256s, checked at every
//! handshake on both sides of a connection.
//!
//! **The file.** One fingerprint per line: the SHA-256 of the whole certificate (DER)
//! as 64 hex digits, as `raft-server certs` prints it (`CertInfo::fingerprint`).
//! Upper case and `:` separators (as `openssl x509 -noout -fingerprint -sha256`
//! prints it, after the `=`) are accepted too. Everything after a `#` is a comment;
//! blank lines are ignored. A line that is not a fingerprint makes the whole file an
//! error (so a typo never silently un-revokes anything).
//!
//! **Where it is checked.** The accepting side wraps rustls's webpki client verifier
//! ([`DenyingClientVerifier`]), the dialing side its webpki server verifier
//! ([`DenyingServerVerifier`]). Each lets webpki verify the chain, names and dates
//! first and then refuses a listed certificate with
//! [`CertificateError::Revoked`] (the TLS alert `certificate_revoked`), logging its
//! fingerprint and principal. A connection already established is not re-checked by
//! TLS; the transport closes a revoked peer's connection when it reloads (see
//! `QuicTransport::reload`).

use crate::cert::CertInfo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

/// Certificates refused at the handshake, by SHA-256 fingerprint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DenyList {
    revoked: BTreeSet<[u8; 32]>,
}

/// Why a deny-list could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DenyListError {
    /// The file could not be read.
    #[error("cannot read it ({0}); check the path and permissions")]
    Read(#[source] std::io::Error),
    /// A line is not a fingerprint.
    #[error(
        "line {line}: {text:?} is not a SHA-256 fingerprint (64 hex digits, as `raft-server certs` prints them; `#` starts a comment)"
    )]
    Line {
        /// The line number, from 1.
        line: usize,
        /// The line as written (without its comment).
        text: String,
    },
}

impl DenyList {
    /// A list that refuses nothing.
    pub fn empty() -> DenyList {
        DenyList::default()
    }

    /// Parses the file format (see the module documentation).
    pub fn parse(text: &str) -> Result<DenyList, DenyListError> {
        let mut revoked = BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = || DenyListError::Line {
                line: n + 1,
                text: line.to_string(),
            };
            let digits: Vec<u8> = line.bytes().filter(|&b| b != b':').collect();
            if digits.len() != 64 {
                return Err(bad());
            }
            let mut sha = [0u8; 32];
            for (i, pair) in digits.chunks(2).enumerate() {
                let hi = hex_digit(pair[0]).ok_or_else(bad)?;
                let lo = hex_digit(pair[1]).ok_or_else(bad)?;
                sha[i] = hi << 4 | lo;
            }
            revoked.insert(sha);
        }
        Ok(DenyList { revoked })
    }

    /// Reads and parses a deny-list file.
    pub fn load(path: &Path) -> Result<DenyList, DenyListError> {
        let text = std::fs::read_to_string(path).map_err(DenyListError::Read)?;
        DenyList::parse(&text)
    }

    /// Whether the certificate with this SHA-256 is revoked.
    pub fn contains(&self, sha256: &[u8; 32]) -> bool {
        self.revoked.contains(sha256)
    }

    /// Whether `cert` (DER) is revoked.
    pub fn denies(&self, cert: &CertificateDer<'_>) -> bool {
        !self.revoked.is_empty() && self.contains(&sha256(cert))
    }

    /// How many fingerprints it lists.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    /// Whether it lists none.
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }

    /// `Ok` unless `cert` is revoked; then logs the refusal (fingerprint and
    /// principal) and returns the TLS error that refuses it.
    fn check(&self, cert: &CertificateDer<'_>, side: &'static str) -> Result<(), rustls::Error> {
        if !self.denies(cert) {
            return Ok(());
        }
        let (fingerprint, principal) = match CertInfo::parse(cert) {
            Ok(info) => (info.fingerprint(), info.principal),
            Err(_) => (crate::cert::hex(&sha256(cert)), "<unreadable>".to_string()),
        };
        tracing::warn!(
            %fingerprint,
            %principal,
            side,
            "refused a revoked certificate (its fingerprint is in the deny-list)"
        );
        Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn sha256(cert: &CertificateDer<'_>) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The accepting side's verifier: webpki's, then the deny-list.
#[derive(Debug)]
pub struct DenyingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    deny: Arc<DenyList>,
}

impl DenyingClientVerifier {
    /// Wraps `inner` (rustls's `WebPkiClientVerifier`), refusing what `deny` lists.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, deny: Arc<DenyList>) -> DenyingClientVerifier {
        DenyingClientVerifier { inner, deny }
    }
}

impl ClientCertVerifier for DenyingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.deny.check(end_entity, "accepting")?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The dialing side's verifier: webpki's, then the deny-list.
#[derive(Debug)]
pub struct DenyingServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    deny: Arc<DenyList>,
}

impl DenyingServerVerifier {
    /// Wraps `inner`, refusing what `deny` lists.
    pub fn new(inner: Arc<WebPkiServerVerifier>, deny: Arc<DenyList>) -> DenyingServerVerifier {
        DenyingServerVerifier { inner, deny }
    }
}

impl ServerCertVerifier for DenyingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.deny.check(end_entity, "dialing")?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn bytes(hex: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
        }
        out
    }

    #[test]
    fn the_file_format_takes_comments_blank_lines_and_openssl_style() {
        let b = A.replace("0011", "0012");
        let openssl_style = b
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let list = DenyList::parse(&format!(
            "# revoked 2025-01-01\n\n  {A}  # app's old laptop\n{openssl_style}\n"
        ))
        .expect("parses");
        assert_eq!(list.len(), 2);
        assert!(list.contains(&bytes(A)));
        assert!(list.contains(&bytes(&b)));
        assert!(!list.contains(&[0u8; 32]));
        assert!(
            DenyList::parse("# nothing yet\n")
                .expect("empty")
                .is_empty()
        );
    }

    #[test]
    fn a_bad_line_makes_the_whole_file_an_error_naming_the_line() {
        for bad in ["abc", &format!("{A}0"), &A.replace('0', "g")] {
            let e =
                DenyList::parse(&format!("# ok\n{A}\n{bad}\n")).expect_err("a bad line is refused");
            assert!(e.to_string().starts_with("line 3:"), "{e}");
        }
    }
}
