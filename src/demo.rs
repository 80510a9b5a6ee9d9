//! The demo data of SPEC §7, with the exact ids the README, docs and tests rely on.

use chrono::Utc;
use entity::action::{self, ActionKind};
use entity::prelude::*;
use entity::{tenant, workflow};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait, Set, TransactionTrait};

use crate::config::Settings;

pub const DEMO: &str = "demo";
pub const DEMO_EAST: &str = "demo-east";
pub const ACME: &str = "acme";
pub const PREPAID_ONBOARDING: &str = "68a5ae7a4cb9e87b88b7d344";
pub const INVENTORY_AUDIT: &str = "68a5ae7a4cb9e87b88b7d345";
pub const ACME_PREPAID: &str = "68a5ae7a4cb9e87b88b7d346";
/// Service types used by the demo (numbers of the old platform).
pub const PREPAID: i32 = 2;
pub const INVENTORY: i32 = 6;

/// Whether the database has no tenants at all (a new database).
pub async fn is_empty(db: &impl ConnectionTrait) -> Result<bool, sea_orm::DbErr> {
    Ok(Tenant::find().count(db).await? == 0)
}

/// Seeds when asked (`--demo-data`) or when the embedded database is new, as `serve` and
/// `migrate` both do; `None` when neither holds.
pub async fn seed_if_wanted<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    settings: &Settings,
) -> Result<Option<Seeded>, sea_orm::DbErr> {
    if settings.demo_data || (settings.uses_embedded_database() && is_empty(db).await?) {
        return seed(db).await.map(Some);
    }
    Ok(None)
}

/// What one [`seed`] inserted: rows that were missing (0 everywhere on a second run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seeded {
    pub tenants: u64,
    pub actions: u64,
    pub workflows: u64,
}

impl std::fmt::Display for Seeded {
    /// One line for `fleetload migrate`, so that an operator sees what a run added.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "demo data: {} tenant(s), {} action(s), {} workflow(s) inserted \
             (tenants {DEMO} with workspace {DEMO_EAST}, and {ACME}; users alice@{DEMO} and bob@{ACME} \
             are token-only; rows already present are left as they were)",
            self.tenants, self.actions, self.workflows
        )
    }
}

/// Inserts whatever of the demo data is missing; running it again changes nothing.
pub async fn seed<C: ConnectionTrait + TransactionTrait>(db: &C) -> Result<Seeded, sea_orm::DbErr> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let mut seeded = Seeded::default();

    let tenants = [
        (DEMO, "Demo Corp", None),
        (DEMO_EAST, "Demo Corp — East", Some(DEMO)),
        (ACME, "Acme Devices", None),
    ];
    for (id, name, parent) in tenants {
        // One at a time, parents first: the parent foreign key must hold at each insert.
        seeded.tenants += Tenant::insert(tenant::ActiveModel {
            id: Set(id.into()),
            name: Set(name.into()),
            parent_id: Set(parent.map(Into::into)),
            created_at: Set(now),
        })
        .on_conflict(OnConflict::column(tenant::Column::Id).do_nothing().to_owned())
        .exec_without_returning(&txn)
        .await?;
    }

    let mut actions = Vec::new();
    for (tenant, prefix) in [(DEMO, ""), (ACME, "acme-")] {
        for (id, name, kind, target) in [
            (
                "register-prepaid",
                "Register Prepaid",
                ActionKind::Register,
                Some(PREPAID),
            ),
            (
                "assign-workflow",
                "Assign Workflow",
                ActionKind::AssignWorkflow,
                None,
            ),
            ("exit-workflow", "Exit Workflow", ActionKind::ExitWorkflow, None),
            ("deregister", "Deregister", ActionKind::Deregister, None),
        ] {
            actions.push(action::ActiveModel {
                root_tenant_id: Set(tenant.into()),
                id: Set(format!("{prefix}{id}")),
                tenant_id: Set(tenant.into()),
                name: Set(name.into()),
                kind: Set(kind),
                target_service_type: Set(target),
                target_carrier_status: Set(None),
                carrier_account_id: Set(None),
                created_at: Set(now),
            });
        }
    }
    seeded.actions = Action::insert_many(actions)
        .on_conflict(
            OnConflict::columns([action::Column::RootTenantId, action::Column::Id])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;

    let workflows = [
        (PREPAID_ONBOARDING, DEMO, "Prepaid Onboarding", PREPAID),
        (INVENTORY_AUDIT, DEMO, "Inventory Audit", INVENTORY),
        (ACME_PREPAID, ACME, "Acme Prepaid", PREPAID),
    ]
    .map(|(id, tenant, name, service_type)| workflow::ActiveModel {
        root_tenant_id: Set(tenant.into()),
        id: Set(id.into()),
        tenant_id: Set(tenant.into()),
        name: Set(name.into()),
        service_type: Set(service_type),
        created_at: Set(now),
    });
    seeded.workflows = Workflow::insert_many(workflows)
        .on_conflict(
            OnConflict::columns([workflow::Column::RootTenantId, workflow::Column::Id])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;

    txn.commit().await?;
    Ok(seeded)
}

/// The demo carrier account, its actions and the demo devices with SIMs.
pub const DEMO_CARRIER: &str = "demo-carrier";
pub const ACTIVATE_LINES: &str = "activate-lines";
pub const DEACTIVATE_LINES: &str = "deactivate-lines";
/// The demo carrier's OAuth client, as `fleetload carrier-simulator` accepts by default.
pub const DEMO_CARRIER_CLIENT: (&str, &str) = ("demo-client", "demo-secret");
const DEMO_LINES: u64 = 10;

/// The demo devices' SIMs: `89014100000000000001…` with their check digit, 20 digits.
pub fn demo_lines() -> Vec<(String, String)> {
    use crate::domain::device_uid::luhn_check_digit;
    (0..DEMO_LINES)
        .map(|i| {
            let imei = format!("35000000000{:03}", 900 + i);
            let iccid = format!("8901410000000000{:03}", 100 + i);
            (
                format!("{imei}{}", luhn_check_digit(&imei)),
                format!("{iccid}{}", luhn_check_digit(&iccid)),
            )
        })
        .collect()
}

/// Seeds the demo carrier at `base_url` (`--demo-carrier-url`): the account, two actions and
/// ten smartphones of `demo` whose SIMs are in the carrier's inventory. Rows already there
/// are left as they are; returns how many rows were inserted.
pub async fn seed_carrier<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    secrets: &crate::carrier::SecretBox,
    base_url: &url::Url,
) -> Result<u64, sea_orm::DbErr> {
    use entity::carrier_status::CarrierStatus;
    use entity::{carrier_account, device};
    use secrecy::SecretString;

    let now = Utc::now();
    let txn = db.begin().await?;
    let (client_id, client_secret) = DEMO_CARRIER_CLIENT;
    let sealed = secrets.seal(
        &SecretString::from(client_secret.to_owned()),
        &crate::carrier::accounts::secret_aad(DEMO, DEMO_CARRIER),
    );
    let mut inserted = CarrierAccount::insert(carrier_account::ActiveModel {
        root_tenant_id: Set(DEMO.into()),
        id: Set(DEMO_CARRIER.into()),
        tenant_id: Set(DEMO.into()),
        name: Set("Demo carrier".into()),
        base_url: Set(base_url.to_string()),
        client_id: Set(client_id.into()),
        client_secret_sealed: Set(sealed),
        account_number: Set("0000000000-00001".into()),
        rate_limit_per_sec: Set(50),
        batch_size: Set(50),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict(
        OnConflict::columns([carrier_account::Column::RootTenantId, carrier_account::Column::Id])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    let actions = [
        (ACTIVATE_LINES, "Activate lines", CarrierStatus::Active),
        (DEACTIVATE_LINES, "Deactivate lines", CarrierStatus::Deactivated),
    ]
    .map(|(id, name, target)| action::ActiveModel {
        root_tenant_id: Set(DEMO.into()),
        id: Set(id.into()),
        tenant_id: Set(DEMO.into()),
        name: Set(name.into()),
        kind: Set(ActionKind::CarrierStatus),
        target_service_type: Set(None),
        target_carrier_status: Set(Some(target)),
        carrier_account_id: Set(Some(DEMO_CARRIER.into())),
        created_at: Set(now),
    });
    inserted += Action::insert_many(actions)
        .on_conflict(
            OnConflict::columns([action::Column::RootTenantId, action::Column::Id])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    for (imei, iccid) in demo_lines() {
        inserted += Device::insert(device::ActiveModel {
            tenant_id: Set(DEMO.into()),
            device_type: Set(crate::domain::DeviceType::Smartphone.code()),
            uid: Set(imei),
            state: Set(device::state::READY_FOR_USE),
            service_type: Set(PREPAID),
            iccid: Set(Some(iccid)),
            carrier_status: Set(Some(CarrierStatus::Inventory)),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        })
        .on_conflict(
            OnConflict::columns([device::Column::DeviceType, device::Column::Uid])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    }
    txn.commit().await?;
    Ok(inserted)
}
