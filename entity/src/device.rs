//! A managed device, unique by `(device_type, uid)` across all tenants.

use sea_orm::entity::prelude::*;

/// Device states of SPEC §3; the numbers are the old system's `state_id`s.
pub mod state {
    pub const IDLE: i16 = 1;
    pub const READY_FOR_USE: i16 = 2;
    pub const ACTIVE: i16 = 4;
    pub const LOCKED: i16 = 5;
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "devices")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub tenant_id: String,
    /// 1 SMARTPHONE (keyed by IMEI), 2 TABLET (keyed by upper-cased serial number).
    pub device_type: i16,
    /// The normalised key: the IMEI, or the serial number in upper case.
    pub uid: String,
    /// A smartphone's optional second IMEI.
    pub uid2: Option<String>,
    pub state: i16,
    pub service_type: i32,
    pub brand_id: Option<i32>,
    pub workflow_id: Option<String>,
    /// The SIM's ICCID (19–20 digits, Luhn-valid), unique across all tenants; a line's key at
    /// the carrier.
    pub iccid: Option<String>,
    /// The line's status at the carrier as last confirmed; `None` until a carrier action ran.
    pub carrier_status: Option<crate::carrier_status::CarrierStatus>,
    /// What the carrier assigned when it confirmed an activation.
    pub msisdn: Option<String>,
    pub ip_address: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
