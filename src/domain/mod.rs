//! Domain vocabulary shared by the API and the pipeline: device types, device keys, tenancy.

pub mod carrier_line;
pub mod device_uid;
pub mod tenancy;

/// The device types of SPEC §3, numbered as the old system's `device_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// Keyed by IMEI (15 digits, Luhn-valid); an optional second IMEI.
    Smartphone,
    /// Keyed by serial number (8–20 of `[A-Z0-9]`, case-insensitive).
    Tablet,
}

impl DeviceType {
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            1 => Some(Self::Smartphone),
            2 => Some(Self::Tablet),
            _ => None,
        }
    }

    pub fn code(self) -> i16 {
        match self {
            Self::Smartphone => 1,
            Self::Tablet => 2,
        }
    }
}

/// What the rows of an upload's file name a device by: the device type's own key, or (for
/// a CARRIER_STATUS action) the SIM's ICCID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Device(DeviceType),
    Iccid,
}

impl KeyKind {
    pub fn of_upload(kind: entity::action::ActionKind, device_type: DeviceType) -> Self {
        match kind {
            entity::action::ActionKind::CarrierStatus => Self::Iccid,
            _ => Self::Device(device_type),
        }
    }
}

impl From<DeviceType> for KeyKind {
    fn from(device_type: DeviceType) -> Self {
        Self::Device(device_type)
    }
}
