//! Checksums and shape rules that turn "a run of digits" into a detection.
//! Each takes the run with separators already removed.

/// Luhn (mod 10) check used by every payment card network.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// A payment card number: 13–19 digits passing Luhn.
pub fn is_card(digits: &[u8]) -> bool {
    (13..=19).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) && luhn_valid(digits)
}

/// A card written with one separator between groups of four digits (the
/// last group may be shorter): `4111.1111.1111.1111`. Decimals, dates and
/// versions use dots and slashes too, but not in this shape.
pub fn is_in_groups_of_four(raw: &str) -> bool {
    let Some(separator) = raw.chars().find(|c| !c.is_ascii_digit()) else {
        return false;
    };
    let groups: Vec<&str> = raw.split(separator).collect();
    let Some((last, full)) = groups.split_last() else {
        return false;
    };
    let digits = |g: &&str| g.bytes().all(|b| b.is_ascii_digit());
    full.len() >= 3
        && full.iter().all(|g| g.len() == 4 && digits(g))
        && (1..=4).contains(&last.len())
        && digits(last)
}

/// A Chinese resident identity number (GB 11643-1999): 17 digits, a
/// plausible birth date, and an ISO 7064 MOD 11-2 check character.
pub fn is_cn_resident_id(chars: &[u8]) -> bool {
    if chars.len() != 18 || !chars[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let num = |range: std::ops::Range<usize>| {
        chars[range]
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let (year, month, day) = (num(6..10), num(10..12), num(12..14));
    if !(1900..=2100).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return false;
    }
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let sum: u32 = chars[..17]
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    chars[17].to_ascii_uppercase() == CHECK[(sum % 11) as usize]
}

/// A Chinese mobile number: 11 digits starting 13–19, optionally with the
/// country code 86 in front.
pub fn is_cn_mobile(digits: &[u8]) -> bool {
    let local = match digits.len() {
        11 => digits,
        13 if digits.starts_with(b"86") => &digits[2..],
        _ => return false,
    };
    local[0] == b'1' && (b'3'..=b'9').contains(&local[1]) && local.iter().all(u8::is_ascii_digit)
}

/// A US social security number written AAA-GG-SSSS (dashes or spaces), with
/// the SSA's never-issued ranges excluded. Nine bare digits are not
/// flagged: too many order numbers look like that.
pub fn is_us_ssn(raw: &str) -> bool {
    let parts: Vec<&str> = raw.split(['-', ' ']).collect();
    let [area, group, serial] = parts.as_slice() else {
        return false;
    };
    if area.len() != 3 || group.len() != 2 || serial.len() != 4 {
        return false;
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'-' || b == b' ')
    {
        return false;
    }
    *area != "000"
        && *area != "666"
        && !area.starts_with('9')
        && *group != "00"
        && *serial != "0000"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_refuses_near_misses() {
        assert!(is_card(b"4111111111111111"));
        assert!(is_card(b"5500005555555559"));
        assert!(is_card(b"378282246310005")); // Amex, 15 digits
        assert!(is_card(b"6011111111111117"));
        assert!(
            !is_card(b"4111111111111112"),
            "16 digits failing Luhn is not a card"
        );
        assert!(!is_card(b"411111111111"), "12 digits is too short");
        assert!(!is_card(b"41111111111111111111"), "20 digits is too long");
    }

    #[test]
    fn groups_of_four() {
        assert!(is_in_groups_of_four("4111.1111.1111.1111"));
        assert!(is_in_groups_of_four("4111/1111/1111/1111"));
        assert!(is_in_groups_of_four("6011_1111_1111_1117"));
        assert!(is_in_groups_of_four("4222.2222.2222.2"), "13 digits");
        assert!(!is_in_groups_of_four("4111.1111/1111.1111"), "mixed");
        assert!(!is_in_groups_of_four("3.141592653589793"), "a decimal");
        assert!(!is_in_groups_of_four("4111111111111111"), "no separator");
        assert!(!is_in_groups_of_four("2025/11/26"));
    }

    #[test]
    fn resident_id_checksum_and_date() {
        assert!(is_cn_resident_id(b"11010519491231002X"));
        assert!(is_cn_resident_id(b"11010519491231002x"));
        assert!(is_cn_resident_id(b"440308199901010012"));
        assert!(
            !is_cn_resident_id(b"110105194912310021"),
            "wrong check character"
        );
        assert!(!is_cn_resident_id(b"110105194913310021"), "month 13");
        assert!(!is_cn_resident_id(b"1101051949123100"), "too short");
    }

    #[test]
    fn mobile_numbers() {
        assert!(is_cn_mobile(b"13812345678"));
        assert!(is_cn_mobile(b"8619912345678"));
        assert!(!is_cn_mobile(b"12812345678"), "second digit 2");
        assert!(!is_cn_mobile(b"23812345678"));
        assert!(!is_cn_mobile(b"1381234567"));
    }

    #[test]
    fn ssn_shapes_and_reserved_ranges() {
        assert!(is_us_ssn("123-45-6789"));
        assert!(is_us_ssn("123 45 6789"));
        assert!(!is_us_ssn("123456789"));
        assert!(!is_us_ssn("000-12-3456"));
        assert!(!is_us_ssn("666-12-3456"));
        assert!(!is_us_ssn("900-12-3456"));
        assert!(!is_us_ssn("123-00-4567"));
        assert!(!is_us_ssn("123-45-0000"));
        assert!(!is_us_ssn("1234-5-6789"));
    }
}
