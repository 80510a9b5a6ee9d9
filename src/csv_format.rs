//! The CSV layout of SPEC §4, as clients see it.

use crate::domain::{DeviceType, KeyKind};

/// The header line a valid file needs, and an example row (CRLF, as RFC 4180 writes it).
/// A carrier action's file names lines by ICCID, with the device's IMEI optional.
pub fn template(kind: impl Into<KeyKind>) -> String {
    match kind.into() {
        KeyKind::Device(DeviceType::Smartphone) => "imei,imei2\r\n490154203237518,\r\n".to_owned(),
        KeyKind::Device(DeviceType::Tablet) => "serialNumber\r\nR52N80ABCDE\r\n".to_owned(),
        KeyKind::Iccid => "iccid,imei,servicePlan\r\n89014103211118510720,490154203237518,\r\n".to_owned(),
    }
}
