//! Which bytes k3s hashes for a `K10` token's CA hash (`pkg/clientaccess/token.go`, `hashCA`).
//!
//! A `/cacerts` holding one certificate is hashed over its literal bytes (the cluster's own
//! self-signed CA). A bundle of several (a custom CA with an intermediate) is hashed over the DER
//! of the root that the bundle's first certificate chains to, among the bundle's other
//! certificates: those without an authority key identifier, or whose authority and subject key
//! identifiers are equal, are roots; the rest are intermediates. When no chain is found, k3s
//! falls back to the bundle's bytes, and so does this.
//!
//! k3s finds the chain with Go's `x509.Verify`; here it is followed by issuer and subject names
//! and key identifiers, without checking signatures (a bundle whose signatures do not verify is
//! hashed differently by k3s: over its bytes). The hash only pins which CA a joiner trusts; the
//! TLS handshake then verifies signatures for real.

/// The fields of one certificate the chain is followed by.
struct Cert<'a> {
    der: &'a [u8],
    issuer: &'a [u8],
    subject: &'a [u8],
    authority_key_id: Option<&'a [u8]>,
    subject_key_id: Option<&'a [u8]>,
}

impl Cert<'_> {
    fn is_root(&self) -> bool {
        match self.authority_key_id {
            None => true,
            Some(aki) => self.subject_key_id == Some(aki),
        }
    }

    /// Whether `issuer` could have issued `self`: names match, and key identifiers when both
    /// are present.
    fn issued_by(&self, issuer: &Cert) -> bool {
        self.issuer == issuer.subject
            && match (self.authority_key_id, issuer.subject_key_id) {
                (Some(aki), Some(ski)) => aki == ski,
                _ => true,
            }
    }
}

/// The bytes to hash for `bundle` (PEM), as k3s chooses them.
pub fn hashed_bytes(bundle: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let ders: Vec<CertificateDer> = CertificateDer::pem_slice_iter(bundle)
        .filter_map(Result::ok)
        .collect();
    if ders.len() < 2 {
        return bundle.to_vec();
    }
    let Some(certs) = ders
        .iter()
        .map(|d| parse(d.as_ref()))
        .collect::<Option<Vec<Cert>>>()
    else {
        return bundle.to_vec();
    };
    let (first, others) = (&certs[0], &certs[1..]);
    let mut current = first;
    // A chain longer than the bundle would loop.
    for _ in 0..certs.len() {
        let Some(issuer) = others.iter().find(|c| current.issued_by(c)) else {
            break;
        };
        if issuer.is_root() {
            return issuer.der.to_vec();
        }
        current = issuer;
    }
    bundle.to_vec()
}

/// One DER element: (tag, contents, the whole element, what follows it).
type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// The DER element at the start of `der`.
fn tlv(der: &[u8]) -> Option<Element<'_>> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, header, rest) = if first < 0x80 {
        (first as usize, 2, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &der[..header + len], &rest[len..]))
}

const SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
const AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];

fn parse(der: &[u8]) -> Option<Cert<'_>> {
    let (_, cert, _, _) = tlv(der)?;
    let (_, tbs, _, _) = tlv(cert)?;
    let mut rest = tbs;
    // [0] version is optional.
    let (tag, _, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    let (_, _, _, rest) = tlv(rest)?; // serial
    let (_, _, _, rest) = tlv(rest)?; // signature algorithm
    let (_, _, issuer, rest) = tlv(rest)?;
    let (_, _, _, rest) = tlv(rest)?; // validity
    let (_, _, subject, mut rest) = tlv(rest)?;
    let (_, _, _, after) = tlv(rest)?; // subject public key info
    rest = after;
    let mut cert = Cert {
        der,
        issuer,
        subject,
        authority_key_id: None,
        subject_key_id: None,
    };
    while let Some((tag, contents, _, after)) = tlv(rest) {
        rest = after;
        if tag != 0xa3 {
            continue;
        }
        let (_, mut extensions, _, _) = tlv(contents)?;
        while let Some((_, extension, _, after)) = tlv(extensions) {
            extensions = after;
            let (_, oid, _, mut fields) = tlv(extension)?;
            let (tag, _, _, after) = tlv(fields)?;
            if tag == 0x01 {
                fields = after; // critical
            }
            let (_, value, _, _) = tlv(fields)?;
            if oid == SUBJECT_KEY_ID {
                cert.subject_key_id = Some(tlv(value)?.1);
            } else if oid == AUTHORITY_KEY_ID {
                // AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT ... }
                let (_, mut aki, _, _) = tlv(value)?;
                while let Some((tag, id, _, after)) = tlv(aki) {
                    aki = after;
                    if tag == 0x80 {
                        cert.authority_key_id = Some(id);
                    }
                }
            }
        }
    }
    Some(cert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    fn ca(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.use_authority_key_identifier_extension = true;
        params
    }

    #[test]
    fn a_bundle_is_hashed_over_its_root_and_a_single_ca_over_its_bytes() {
        let root_key = KeyPair::generate().unwrap();
        let root = ca("root").self_signed(&root_key).unwrap();
        let mid_key = KeyPair::generate().unwrap();
        let mid = ca("intermediate")
            .signed_by(&mid_key, &root, &root_key)
            .unwrap();
        let bundle = format!("{}{}", mid.pem(), root.pem());
        assert_eq!(hashed_bytes(bundle.as_bytes()), root.der().to_vec());
        // Either order of the others; the first certificate is where the chain starts.
        let other_key = KeyPair::generate().unwrap();
        let other = ca("other").self_signed(&other_key).unwrap();
        let bundle3 = format!("{}{}{}", mid.pem(), other.pem(), root.pem());
        assert_eq!(hashed_bytes(bundle3.as_bytes()), root.der().to_vec());
        // One certificate: its literal bytes, trailing newline and all.
        let single = root.pem();
        assert_eq!(hashed_bytes(single.as_bytes()), single.as_bytes());
        // No chain from the first certificate: the bundle's bytes, as k3s falls back to.
        let unrelated = format!("{}{}", other.pem(), mid.pem());
        assert_eq!(hashed_bytes(unrelated.as_bytes()), unrelated.as_bytes());
    }

    #[test]
    fn garbage_is_hashed_as_bytes() {
        assert_eq!(hashed_bytes(b"not pem"), b"not pem");
    }
}
