//! Lowercase hex: how digests appear in file formats (`sha256:<hex>`
//! secret hashes), resource names and annotations. One encoder, so every
//! writer and every reader agrees on the case and the width.

/// Two lowercase hex digits per byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_lowercase_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }
}
