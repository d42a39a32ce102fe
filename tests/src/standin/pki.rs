//! The stand-in cluster CA: created by the first server, persisted, copied by joiners, and used to
//! sign each node's serving certificate.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The hash a `K10` token carries: sha256 (lowercase hex) of the exact CA PEM bytes served at
/// `/cacerts`.
pub fn ca_hash(ca_pem: &[u8]) -> String {
    hex::encode(Sha256::digest(ca_pem))
}

/// The SEC1 `ECPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (DER), as PEM: the form RKE2 writes
/// its EC keys in (`-----BEGIN EC PRIVATE KEY-----`). PKCS#8 may leave the curve out of the inner
/// key (it is in the algorithm identifier); it is put back as SEC1's `parameters [0]`, as OpenSSL
/// and Go write it, since Go (etcd, RKE2) refuses a SEC1 key without it.
pub fn sec1_pem(pkcs8_der: &[u8]) -> Result<String> {
    use base64::Engine;
    /// One DER element at the start of `der`: (tag, contents, whole element, rest).
    type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);
    fn tlv(der: &[u8]) -> Result<Element<'_>> {
        let (&tag, rest) = der.split_first().context("truncated der")?;
        let (&first, rest) = rest.split_first().context("truncated der")?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                bail!("unsupported der length");
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            bail!("truncated der");
        }
        let header = der.len() - rest.len();
        Ok((tag, &rest[..len], &der[..header + len], &rest[len..]))
    }
    fn element(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = contents.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(contents);
        out
    }
    let (tag, info, _, _) = tlv(pkcs8_der)?;
    if tag != 0x30 {
        bail!("not a pkcs#8 sequence");
    }
    let (_, _, _, rest) = tlv(info)?;
    let (_, algorithm, _, rest) = tlv(rest)?;
    let (tag, sec1, _, _) = tlv(rest)?;
    if tag != 0x04 {
        bail!("pkcs#8 without a private key octet string");
    }
    // The algorithm identifier: ecPublicKey, then the named curve.
    let (_, _, _, curve) = tlv(algorithm)?;
    let (_, _, curve_oid, _) = tlv(curve).context("pkcs#8 without a named curve")?;
    let (tag, key, _, _) = tlv(sec1)?;
    if tag != 0x30 {
        bail!("not an ECPrivateKey sequence");
    }
    let (_, _, version, rest) = tlv(key)?;
    let (_, _, private_key, rest) = tlv(rest)?;
    let mut fields = [version, private_key].concat();
    if rest.first() == Some(&0xa0) {
        fields.extend_from_slice(rest);
    } else {
        fields.extend(element(0xa0, curve_oid));
        fields.extend_from_slice(rest);
    }
    let der = element(0x30, &fields);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN EC PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END EC PRIVATE KEY-----\n");
    Ok(pem)
}

/// A CA as persisted: the certificate and key in PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCa {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// A serving certificate chain and its key, ready for rustls.
pub struct ServingCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ClusterCa {
    /// A new CA named like RKE2's (`rke2-server-ca@<unix seconds>`).
    pub fn generate() -> Result<Self> {
        Self::generate_named("rke2-server-ca")
    }

    /// A new CA named `<name>@<unix seconds>`, as RKE2 names its CAs (`etcd-server-ca`, ...).
    pub fn generate_named(name: &str) -> Result<Self> {
        let key = KeyPair::generate().context("generating the ca key")?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut params = CertificateParams::default();
        params.distinguished_name = ca_name(&format!("{name}@{now}"));
        ca_extensions(&mut params);
        let cert = params.self_signed(&key).context("self-signing the ca")?;
        Ok(ClusterCa {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        })
    }

    pub fn hash(&self) -> String {
        ca_hash(&self.cert_pem)
    }

    /// Checks that the key belongs to the certificate, by signing a throw-away certificate and
    /// verifying it against the CA.
    pub fn validate(&self) -> Result<()> {
        let serving = self.serving_cert(&["127.0.0.1".to_string()])?;
        let ca_der = self.cert_der()?;
        let anchor = webpki_anchor(&ca_der)?;
        verify_chain(&serving.chain[0], &anchor).context("the ca key does not match the ca")
    }

    pub fn cert_der(&self) -> Result<CertificateDer<'static>> {
        CertificateDer::from_pem_slice(&self.cert_pem).context("parsing the ca certificate pem")
    }

    /// A serving certificate for `sans` (IP addresses or DNS names) signed by this CA; the chain
    /// holds the leaf, then the CA.
    pub fn serving_cert(&self, sans: &[String]) -> Result<ServingCert> {
        let leaf = self.sign_leaf(
            subject("rke2", Some("rke2")),
            sans,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            None,
            "serving",
        )?;
        Ok(ServingCert {
            chain: vec![leaf.cert.der().clone(), leaf.ca_der],
            key: PrivateKeyDer::try_from(leaf.key.serialize_der())
                .map_err(|e| anyhow::anyhow!("serving key: {e}"))?,
        })
    }

    /// A client certificate (`CN=<common_name>, O=<organization>`, client auth) signed by this CA,
    /// as PEM certificate and PEM key.
    /// A client certificate and its key, the key in SEC1 form (`EC PRIVATE KEY`) as RKE2 writes
    /// it. `ttl`: valid for that long from now (RKE2 renews before expiry), else for years.
    pub fn client_cert(
        &self,
        common_name: &str,
        organization: &str,
        ttl: Option<std::time::Duration>,
    ) -> Result<(String, String)> {
        let leaf = self.sign_leaf(
            subject(common_name, Some(organization)),
            &[],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            ttl,
            "client",
        )?;
        Ok((leaf.cert.pem(), sec1_pem(&leaf.key.serialize_der())?))
    }

    /// etcd's `server-client` certificate: serves etcd's client port for `sans` and authenticates
    /// as a client (RKE2 uses the one certificate for both), with its key in SEC1 form as RKE2
    /// writes it.
    pub fn server_client_cert(&self, sans: &[String]) -> Result<(String, String)> {
        let leaf = self.sign_leaf(
            subject("etcd-server", None),
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            None,
            "etcd",
        )?;
        Ok((leaf.cert.pem(), sec1_pem(&leaf.key.serialize_der())?))
    }

    /// A leaf certificate for `subject`, `sans` (IP addresses or DNS names) and `usages`, with a
    /// fresh key, signed by this CA. `ttl`: valid for that long from now, else for years.
    fn sign_leaf(
        &self,
        subject: DistinguishedName,
        sans: &[String],
        usages: Vec<ExtendedKeyUsagePurpose>,
        ttl: Option<std::time::Duration>,
        what: &str,
    ) -> Result<SignedLeaf> {
        let issuer_key = KeyPair::from_pem(
            std::str::from_utf8(&self.key_pem).context("the ca key is not utf-8")?,
        )
        .context("parsing the ca key")?;
        let ca_der = self.cert_der()?;
        let issuer = self.issuer(&ca_der, &issuer_key)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject;
        params.subject_alt_names = sans
            .iter()
            .map(|san| san_type(san))
            .collect::<Result<Vec<_>>>()?;
        params.extended_key_usages = usages;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        if let Some(ttl) = ttl {
            let now = time::OffsetDateTime::now_utc();
            // A little slack before: certificate times have whole seconds.
            params.not_before = now - time::Duration::seconds(5);
            params.not_after = now + ttl;
        }
        let key = KeyPair::generate().with_context(|| format!("generating the {what} key"))?;
        let cert = params
            .signed_by(&key, &issuer, &issuer_key)
            .with_context(|| format!("signing the {what} certificate"))?;
        Ok(SignedLeaf { cert, key, ca_der })
    }

    /// Rebuilds an rcgen issuer equivalent to the stored CA: same subject (read back from the DER,
    /// with the same string types so it matches byte for byte) and same key.
    fn issuer(&self, ca_der: &[u8], key: &KeyPair) -> Result<Certificate> {
        let mut params = CertificateParams::default();
        params.distinguished_name = subject_of(ca_der)?;
        ca_extensions(&mut params);
        params
            .self_signed(key)
            .context("rebuilding the ca as an issuer")
    }
}

/// A signed leaf, its key, and the CA certificate that signed it.
struct SignedLeaf {
    cert: Certificate,
    key: KeyPair,
    ca_der: CertificateDer<'static>,
}

fn subject(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(organization) = organization {
        dn.push(DnType::OrganizationName, organization);
    }
    dn
}

fn ca_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_extensions(params: &mut CertificateParams) {
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
}

fn san_type(san: &str) -> Result<SanType> {
    Ok(match san.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            san.to_string()
                .try_into()
                .with_context(|| format!("{san:?} is neither an ip address nor a dns name"))?,
        ),
    })
}

fn webpki_anchor(ca_der: &CertificateDer<'_>) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der.clone()).context("adding the ca")?;
    Ok(roots)
}

fn verify_chain(leaf: &CertificateDer<'_>, roots: &rustls::RootCertStore) -> Result<()> {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots.clone()),
        crate::http::crypto_provider(),
    )
    .build()
    .context("building a verifier")?;
    use rustls::client::danger::ServerCertVerifier;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    verifier
        .verify_server_cert(leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

// --- a minimal DER reader, only to read back the subject name of our own CA ---------------------

/// One tag-length-value; returns (tag, content, rest).
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first().context("der: unexpected end")?;
    let (&first, rest) = rest.split_first().context("der: missing length")?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            bail!("der: unsupported length encoding");
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        bail!("der: length {len} past the end");
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], want: u8) -> Result<(&[u8], &[u8])> {
    let (tag, content, rest) = tlv(input)?;
    if tag != want {
        bail!("der: expected tag {want:#04x}, found {tag:#04x}");
    }
    Ok((content, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

/// The subject distinguished name of a certificate (common name and organization only, which is
/// all our CAs carry).
fn subject_of(cert_der: &[u8]) -> Result<DistinguishedName> {
    let (cert, _) = expect(cert_der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    rest = tlv(rest)?.2; // serialNumber
    rest = expect(rest, SEQUENCE)?.1; // signature algorithm
    rest = expect(rest, SEQUENCE)?.1; // issuer
    rest = expect(rest, SEQUENCE)?.1; // validity
    let (mut rdns, _) = expect(rest, SEQUENCE)?; // subject

    let mut dn = DistinguishedName::new();
    while !rdns.is_empty() {
        let (set, next) = expect(rdns, SET)?;
        rdns = next;
        let (attr, _) = expect(set, SEQUENCE)?;
        let (oid, value) = expect(attr, OID)?;
        let (tag, text, _) = tlv(value)?;
        let text = std::str::from_utf8(text)
            .context("der: name is not utf-8")?
            .to_string();
        let value = match tag {
            UTF8_STRING => DnValue::Utf8String(text),
            PRINTABLE_STRING => DnValue::PrintableString(
                text.try_into()
                    .map_err(|e| anyhow::anyhow!("der: printable string: {e}"))?,
            ),
            other => bail!("der: unsupported string type {other:#04x} in the ca name"),
        };
        let kind = match oid {
            OID_COMMON_NAME => DnType::CommonName,
            OID_ORGANIZATION => DnType::OrganizationName,
            _ => bail!("der: unsupported attribute in the ca name"),
        };
        dn.push(kind, value);
    }
    Ok(dn)
}

/// A client certificate's identity as kube-apiserver's x509 authenticator reads it: the common
/// name is the user, each organization a group (`O=system:masters` makes an admin,
/// `O=system:nodes` a kubelet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertUser {
    pub name: String,
    pub groups: Vec<String>,
}

impl CertUser {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// The user and groups of a (verified) client certificate. Other subject attributes are skipped,
/// as the authenticator skips them.
pub fn cert_user(cert_der: &[u8]) -> Result<CertUser> {
    let (cert, _) = expect(cert_der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    rest = tlv(rest)?.2; // serialNumber
    rest = expect(rest, SEQUENCE)?.1; // signature algorithm
    rest = expect(rest, SEQUENCE)?.1; // issuer
    rest = expect(rest, SEQUENCE)?.1; // validity
    let (mut rdns, _) = expect(rest, SEQUENCE)?; // subject
    let mut user = CertUser::default();
    while !rdns.is_empty() {
        let (mut set, next) = expect(rdns, SET)?;
        rdns = next;
        while !set.is_empty() {
            let (attr, more) = expect(set, SEQUENCE)?;
            set = more;
            let (oid, value) = expect(attr, OID)?;
            let (_, text, _) = tlv(value)?;
            let text = String::from_utf8_lossy(text).into_owned();
            match oid {
                OID_COMMON_NAME => user.name = text,
                OID_ORGANIZATION => user.groups.push(text),
                _ => {}
            }
        }
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_certs_chain_to_the_stored_ca() {
        let ca = ClusterCa::generate().unwrap();
        ca.validate().unwrap();
        // A copy made from the PEMs alone (what a joiner holds) signs certs that verify too.
        let copy = ClusterCa {
            cert_pem: ca.cert_pem.clone(),
            key_pem: ca.key_pem.clone(),
        };
        copy.validate().unwrap();
        assert_eq!(copy.hash(), ca.hash());
        assert_eq!(ca.hash().len(), 64);
    }

    #[test]
    fn a_foreign_key_is_rejected() {
        let a = ClusterCa::generate().unwrap();
        let b = ClusterCa::generate().unwrap();
        let mixed = ClusterCa {
            cert_pem: a.cert_pem,
            key_pem: b.key_pem,
        };
        assert!(mixed.validate().is_err());
    }

    #[test]
    fn reads_back_the_subject() {
        let ca = ClusterCa::generate().unwrap();
        let der = ca.cert_der().unwrap();
        let dn = subject_of(&der).unwrap();
        match dn.get(&DnType::CommonName) {
            Some(DnValue::Utf8String(cn)) => assert!(cn.starts_with("rke2-server-ca@")),
            other => panic!("unexpected common name {other:?}"),
        }
    }

    #[test]
    fn sec1_keys_name_their_curve() {
        use base64::Engine;
        let ca = ClusterCa::generate_named("etcd-server-ca").unwrap();
        let (_, key) = ca.server_client_cert(&["127.9.0.1".into()]).unwrap();
        assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{key}");
        let b64: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        // parameters [0] { prime256v1 }, as Go's x509.ParseECPrivateKey needs it.
        let p256 = [
            0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ];
        assert!(der.windows(p256.len()).any(|w| w == p256), "{der:02x?}");
        assert!(matches!(
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));
    }

    #[test]
    fn sans_accept_ips_and_names() {
        let ca = ClusterCa::generate().unwrap();
        let cert = ca
            .serving_cert(&["127.9.0.1".into(), "lb.example.test".into()])
            .unwrap();
        assert_eq!(cert.chain.len(), 2);
        assert!(ca.serving_cert(&["n\u{f6}t-ascii".into()]).is_err());
    }

    #[test]
    fn client_certs_name_their_user_and_groups() {
        let ca = ClusterCa::generate().unwrap();
        let (cert, _) = ca
            .client_cert("system:admin", "system:masters", None)
            .unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let user = cert_user(&der).unwrap();
        assert_eq!(user.name, "system:admin");
        assert!(user.in_group("system:masters"));
        assert!(!user.in_group("system:nodes"));
        // A CA certificate has a common name and no organization.
        let user = cert_user(&ca.cert_der().unwrap()).unwrap();
        assert!(user.name.starts_with("rke2-server-ca@"));
        assert!(user.groups.is_empty());
        assert!(cert_user(b"not der").is_err());
    }
}
