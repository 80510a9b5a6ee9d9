//! The CSV layout of SPEC §4, as clients see it.

use crate::domain::DeviceType;

/// The header line a valid file needs, and an example row (CRLF, as RFC 4180 writes it).
pub fn template(device_type: DeviceType) -> String {
    match device_type {
        DeviceType::Smartphone => "imei,imei2\r\n490154203237518,\r\n".to_owned(),
        DeviceType::Tablet => "serialNumber\r\nR52N80ABCDE\r\n".to_owned(),
    }
}
