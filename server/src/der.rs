//! The few DER reads the server needs (certificate validity, RSA public key
//! components); not worth an X.509 parser dependency.

use chrono::{DateTime, NaiveDateTime, Utc};

/// Reads one tag-length-value with the expected tag; returns (value, rest).
pub fn read_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Skips one element whatever its tag.
fn skip_any(input: &[u8]) -> Option<&[u8]> {
    let tag = *input.first()?;
    read_tlv(input, tag).map(|(_, rest)| rest)
}

/// notAfter of an X.509 certificate.
pub fn certificate_not_after(cert_der: &[u8]) -> Option<DateTime<Utc>> {
    let (cert, _) = read_tlv(cert_der, 0x30)?;
    let (tbs, _) = read_tlv(cert, 0x30)?;
    // [0] EXPLICIT version is optional.
    let rest = if tbs.first() == Some(&0xa0) {
        skip_any(tbs)?
    } else {
        tbs
    };
    let rest = skip_any(rest)?; // serialNumber
    let rest = skip_any(rest)?; // signature algorithm
    let rest = skip_any(rest)?; // issuer
    let (validity, _) = read_tlv(rest, 0x30)?;
    let after_not_before = skip_any(validity)?;
    let tag = *after_not_before.first()?;
    let (time, _) = read_tlv(after_not_before, tag)?;
    let text = std::str::from_utf8(time).ok()?;
    let parsed = match tag {
        // UTCTime YYMMDDHHMMSSZ: years 50-99 are 19xx (RFC 5280).
        0x17 => {
            let yy: i32 = text.get(..2)?.parse().ok()?;
            let century = if yy >= 50 { "19" } else { "20" };
            NaiveDateTime::parse_from_str(&format!("{century}{text}"), "%Y%m%d%H%M%SZ").ok()?
        }
        0x18 => NaiveDateTime::parse_from_str(text, "%Y%m%d%H%M%SZ").ok()?,
        _ => return None,
    };
    Some(parsed.and_utc())
}

/// The URI subject alternative names of an X.509 certificate (where a
/// SPIFFE ID lives), in the order written. A certificate that does not
/// parse has none.
pub fn certificate_uri_sans(cert_der: &[u8]) -> Vec<String> {
    uri_sans(cert_der).unwrap_or_default()
}

/// DER of OID 2.5.29.17 (subjectAltName).
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// GeneralName's uniformResourceIdentifier: [6] IMPLICIT IA5String.
const URI_NAME: u8 = 0x86;

fn uri_sans(cert_der: &[u8]) -> Option<Vec<String>> {
    let (cert, _) = read_tlv(cert_der, 0x30)?;
    let (tbs, _) = read_tlv(cert, 0x30)?;
    let mut rest = if tbs.first() == Some(&0xa0) {
        skip_any(tbs)?
    } else {
        tbs
    };
    // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo.
    for _ in 0..6 {
        rest = skip_any(rest)?;
    }
    // issuerUniqueID [1] and subjectUniqueID [2] are optional; the
    // extensions are [3] EXPLICIT.
    while let Some(&tag) = rest.first() {
        if tag == 0xa3 {
            break;
        }
        rest = skip_any(rest)?;
    }
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let (wrapped, _) = read_tlv(rest, 0xa3)?;
    let (mut extensions, _) = read_tlv(wrapped, 0x30)?;
    while !extensions.is_empty() {
        let (extension, next) = read_tlv(extensions, 0x30)?;
        extensions = next;
        let (oid, mut fields) = read_tlv(extension, 0x06)?;
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        if fields.first() == Some(&0x01) {
            fields = skip_any(fields)?; // critical
        }
        let (value, _) = read_tlv(fields, 0x04)?;
        let (mut names, _) = read_tlv(value, 0x30)?;
        let mut uris = Vec::new();
        while let Some(&tag) = names.first() {
            let (name, next) = read_tlv(names, tag)?;
            names = next;
            if tag == URI_NAME {
                uris.push(std::str::from_utf8(name).ok()?.to_string());
            }
        }
        return Some(uris);
    }
    Some(Vec::new())
}

/// n and e from a PKCS#1 RSAPublicKey (SEQUENCE { INTEGER n, INTEGER e }),
/// without DER's sign-padding zero.
pub fn rsa_public_components(der: &[u8]) -> Option<(&[u8], &[u8])> {
    fn strip(i: &[u8]) -> &[u8] {
        match i.split_first() {
            Some((0, tail)) if !tail.is_empty() => tail,
            _ => i,
        }
    }
    let (seq, _) = read_tlv(der, 0x30)?;
    let (n, rest) = read_tlv(seq, 0x02)?;
    let (e, _) = read_tlv(rest, 0x02)?;
    Some((strip(n), strip(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rsa_components() {
        // SEQUENCE { INTEGER 0x00c1, INTEGER 0x010001 }
        let der = [
            0x30, 0x09, 0x02, 0x02, 0x00, 0xc1, 0x02, 0x03, 0x01, 0x00, 0x01,
        ];
        assert_eq!(
            rsa_public_components(&der),
            Some((&[0xc1u8][..], &[1u8, 0, 1][..]))
        );
        assert_eq!(rsa_public_components(&der[..5]), None);
    }

    #[test]
    fn reads_uri_sans_beside_dns_names() {
        let mut params = rcgen::CertificateParams::new(vec!["client.example".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/apps/sa/web".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            certificate_uri_sans(cert.der()),
            vec!["spiffe://cluster.local/ns/apps/sa/web".to_string()]
        );
        let plain = rcgen::CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(certificate_uri_sans(plain.der()).is_empty());
        assert!(certificate_uri_sans(&cert.der()[..40]).is_empty());
    }

    #[test]
    fn truncated_input_is_refused_not_panicking() {
        assert_eq!(read_tlv(&[0x30, 0x82, 0x01], 0x30), None);
        assert_eq!(read_tlv(&[0x30, 0x05, 0x00], 0x30), None);
        assert_eq!(certificate_not_after(&[0x30, 0x00]), None);
        assert_eq!(certificate_not_after(&[]), None);
    }
}
