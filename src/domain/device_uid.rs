//! Validation and normalisation of device keys: the `INVALID_DEVICE_UID` rule of SPEC §5.

use super::{DeviceType, KeyKind};

/// Why a device key was refused; the text becomes the result row's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUid {
    #[error("the device key is empty")]
    Empty,
    #[error("an IMEI has exactly 15 digits")]
    ImeiFormat,
    #[error("the IMEI fails its Luhn check digit")]
    ImeiChecksum,
    #[error("a serial number has 8 to 20 letters or digits")]
    SerialFormat,
    #[error("an ICCID has 19 or 20 digits")]
    IccidFormat,
    #[error("the ICCID fails its Luhn check digit")]
    IccidChecksum,
    #[error("imei2: {0}")]
    Second(Box<InvalidUid>),
    #[error("imei: {0}")]
    Imei(Box<InvalidUid>),
}

/// The canonical key of a device as the file wrote it, or why it is not one.
///
/// Surrounding whitespace is ignored; serial numbers compare case-insensitively, so they are
/// upper-cased here and every later comparison is plain equality.
pub fn normalize(kind: impl Into<KeyKind>, raw: &str) -> Result<String, InvalidUid> {
    let key = raw.trim();
    if key.is_empty() {
        return Err(InvalidUid::Empty);
    }
    match kind.into() {
        KeyKind::Iccid => {
            if !(19..=20).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidUid::IccidFormat);
            }
            if !luhn_valid(key) {
                return Err(InvalidUid::IccidChecksum);
            }
            Ok(key.to_owned())
        }
        KeyKind::Device(DeviceType::Smartphone) => {
            if key.len() != 15 || !key.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidUid::ImeiFormat);
            }
            if !luhn_valid(key) {
                return Err(InvalidUid::ImeiChecksum);
            }
            Ok(key.to_owned())
        }
        KeyKind::Device(DeviceType::Tablet) => {
            if !(8..=20).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(InvalidUid::SerialFormat);
            }
            Ok(key.to_ascii_uppercase())
        }
    }
}

/// Luhn (mod 10) check over ASCII digits, the last one being the check digit.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// The digit that makes `body` (14 digits of an IMEI, 18–19 of an ICCID) Luhn-valid; for
/// tests and demo data.
pub fn luhn_check_digit(body: &str) -> char {
    ('0'..='9')
        .find(|d| luhn_valid(&format!("{body}{d}")))
        .unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_real_imei_is_valid() {
        assert_eq!(
            normalize(DeviceType::Smartphone, "490154203237518"),
            Ok("490154203237518".into())
        );
        assert_eq!(
            normalize(DeviceType::Smartphone, " 350377187371347\t"),
            Ok("350377187371347".into())
        );
    }

    #[test]
    fn an_imei_with_a_wrong_check_digit_is_refused() {
        assert_eq!(
            normalize(DeviceType::Smartphone, "490154203237519"),
            Err(InvalidUid::ImeiChecksum)
        );
    }

    #[test]
    fn an_imei_of_the_wrong_length_or_with_letters_is_refused() {
        for bad in [
            "49015420323751",
            "4901542032375180",
            "49015420323751A",
            "4901 5420323751",
        ] {
            assert_eq!(
                normalize(DeviceType::Smartphone, bad),
                Err(InvalidUid::ImeiFormat),
                "{bad}"
            );
        }
        assert_eq!(normalize(DeviceType::Smartphone, "   "), Err(InvalidUid::Empty));
    }

    #[test]
    fn serials_are_upper_cased_and_length_checked() {
        assert_eq!(normalize(DeviceType::Tablet, "ab12cd34"), Ok("AB12CD34".into()));
        assert_eq!(
            normalize(DeviceType::Tablet, "A".repeat(20).as_str()),
            Ok("A".repeat(20))
        );
        assert_eq!(
            normalize(DeviceType::Tablet, "AB12CD3"),
            Err(InvalidUid::SerialFormat)
        );
        assert_eq!(
            normalize(DeviceType::Tablet, &"A".repeat(21)),
            Err(InvalidUid::SerialFormat)
        );
        assert_eq!(
            normalize(DeviceType::Tablet, "AB12-CD34"),
            Err(InvalidUid::SerialFormat)
        );
        assert_eq!(
            normalize(DeviceType::Tablet, "ÄB12CD34"),
            Err(InvalidUid::SerialFormat)
        );
    }

    proptest! {
        #[test]
        fn completing_any_14_digits_with_the_check_digit_gives_a_valid_imei(body in "[0-9]{14}") {
            let imei = format!("{body}{}", luhn_check_digit(&body));
            prop_assert_eq!(normalize(DeviceType::Smartphone, &imei), Ok(imei.clone()));
        }

        #[test]
        fn changing_one_digit_of_a_valid_imei_breaks_it(body in "[0-9]{14}", pos in 0usize..15, delta in 1u8..10) {
            let imei = format!("{body}{}", luhn_check_digit(&body));
            let mut bytes = imei.into_bytes();
            bytes[pos] = b'0' + (bytes[pos] - b'0' + delta) % 10;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(normalize(DeviceType::Smartphone, &changed), Err(InvalidUid::ImeiChecksum));
        }

        #[test]
        fn iccids_of_19_or_20_digits_with_their_check_digit_are_valid(body in "[0-9]{18,19}", pos in 0usize..19, delta in 1u8..10) {
            let iccid = format!("{body}{}", luhn_check_digit(&body));
            prop_assert_eq!(normalize(KeyKind::Iccid, &format!(" {iccid} ")), Ok(iccid.clone()));
            let mut bytes = iccid.into_bytes();
            bytes[pos] = b'0' + (bytes[pos] - b'0' + delta) % 10;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(normalize(KeyKind::Iccid, &changed), Err(InvalidUid::IccidChecksum));
        }

        #[test]
        fn iccids_of_other_lengths_or_with_letters_are_refused(raw in "[0-9]{1,18}|[0-9]{21,25}|[0-9]{10}[A-F][0-9]{8}") {
            prop_assert_eq!(normalize(KeyKind::Iccid, &raw), Err(InvalidUid::IccidFormat));
        }

        #[test]
        fn serials_compare_case_insensitively(serial in "[a-zA-Z0-9]{8,20}") {
            prop_assert_eq!(
                normalize(DeviceType::Tablet, &serial),
                normalize(DeviceType::Tablet, &serial.to_ascii_uppercase())
            );
        }
    }
}
