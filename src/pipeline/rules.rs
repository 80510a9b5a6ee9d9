//! Which outcome does this row get? A pure function of the row, the device it names (if
//! any) and the upload's action: exactly one outcome per row, and the first error that
//! applies in the order of SPEC §5. No I/O here, so it is property-tested in isolation.

use entity::action::ActionKind;
use entity::device::state;

use crate::domain::carrier_line::{self, CarrierStatus, Operation};
use crate::domain::device_uid::{self, InvalidUid};
use crate::domain::{DeviceType, KeyKind};

/// Row errors, in the order SPEC §5 checks them: the first that applies is the row's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowError {
    InvalidDeviceUid,
    DuplicateInFile,
    /// CARRIER_STATUS: the row's service plan is not one a carrier can be sent.
    InvalidServicePlan,
    DeviceNotFound,
    DeviceOwnedByOtherTenant,
    WrongStateDevice,
    WrongServiceType,
    AlreadyInWorkflow,
    NoWorkflowToExit,
    /// CARRIER_STATUS: the matrix has no move from the line's status to the target.
    InvalidStatusTransition,
    /// The carrier refused the device (its message is the row's).
    CarrierRejected,
    /// The carrier accepted the call but did not confirm the new status in time.
    CarrierVerificationTimeout,
    /// The carrier kept failing (rate limits, errors, timeouts) through every attempt.
    CarrierUnavailable,
}

impl RowError {
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidDeviceUid => "INVALID_DEVICE_UID",
            Self::DuplicateInFile => "DUPLICATE_IN_FILE",
            Self::InvalidServicePlan => "INVALID_SERVICE_PLAN",
            Self::DeviceNotFound => "DEVICE_NOT_FOUND",
            Self::DeviceOwnedByOtherTenant => "DEVICE_OWNED_BY_OTHER_TENANT",
            Self::WrongStateDevice => "WRONG_STATE_DEVICE",
            Self::WrongServiceType => "WRONG_SERVICE_TYPE",
            Self::AlreadyInWorkflow => "ALREADY_IN_WORKFLOW",
            Self::NoWorkflowToExit => "NO_WORKFLOW_TO_EXIT",
            Self::InvalidStatusTransition => "INVALID_STATUS_TRANSITION",
            Self::CarrierRejected => "CARRIER_REJECTED",
            Self::CarrierVerificationTimeout => "CARRIER_VERIFICATION_TIMEOUT",
            Self::CarrierUnavailable => "CARRIER_UNAVAILABLE",
        }
    }
}

/// What an upload does to each of its devices, fixed at prepare/finalize.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionContext {
    pub kind: ActionKind,
    pub device_type: DeviceType,
    /// Devices must be in (or, for REGISTER, are created in) this workspace.
    pub target_tenant: String,
    /// REGISTER's target service type.
    pub target_service_type: i32,
    /// The workflow to assign (REGISTER, ASSIGN_WORKFLOW) and its service type.
    pub workflow: Option<(String, i32)>,
    pub brand_id: Option<i32>,
    /// CARRIER_STATUS's target line status.
    pub target_carrier_status: Option<CarrierStatus>,
}

impl ActionContext {
    /// Whether a valid row whose device does not exist succeeds by creating it (REGISTER);
    /// otherwise it fails `DEVICE_NOT_FOUND`.
    pub fn creates_missing_devices(&self) -> bool {
        self.kind == ActionKind::Register
    }

    /// What the rows name a device by.
    pub fn key_kind(&self) -> KeyKind {
        KeyKind::of_upload(self.kind, self.device_type)
    }
}

/// The parts of a stored device the rules look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    pub id: i64,
    pub tenant_id: String,
    pub state: i16,
    pub service_type: i32,
    pub workflow_id: Option<String>,
    /// The line's status at the carrier; `None` reads as NEW.
    pub carrier_status: Option<CarrierStatus>,
}

/// A row as the worker sees it: its key already checked, and whether it repeats an
/// earlier row of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowInput {
    pub key: Result<String, InvalidUid>,
    /// A smartphone's second IMEI, or a line's IMEI: checked like a first IMEI.
    pub key2: Option<String>,
    pub duplicate: bool,
    /// A line's service plan cell (carrier actions), as written.
    pub plan: Option<String>,
}

/// Longest service plan name sent to a carrier.
pub const MAX_SERVICE_PLAN_CHARS: usize = 64;

/// A service plan a carrier can be sent: 1 to 64 characters, none a control character.
pub fn valid_service_plan(plan: &str) -> bool {
    let chars = plan.chars().count();
    (1..=MAX_SERVICE_PLAN_CHARS).contains(&chars) && !plan.chars().any(char::is_control)
}

impl RowInput {
    /// A second IMEI that is present but invalid makes the row invalid: silently dropping
    /// what the operator wrote would register a device differently than asked (or send the
    /// carrier a line with a wrong device).
    pub fn new(kind: impl Into<KeyKind>, raw_uid: &str, raw_uid2: Option<&str>, duplicate: bool) -> Self {
        let kind = kind.into();
        let second = match (kind, raw_uid2.map(str::trim).filter(|s| !s.is_empty())) {
            (KeyKind::Device(DeviceType::Smartphone) | KeyKind::Iccid, Some(raw)) => {
                Some(device_uid::normalize(DeviceType::Smartphone, raw))
            }
            _ => None,
        };
        let (key, key2) = match (device_uid::normalize(kind, raw_uid), second) {
            (Err(e), _) => (Err(e), None),
            (Ok(_), Some(Err(e))) if kind == KeyKind::Iccid => (Err(InvalidUid::Imei(Box::new(e))), None),
            (Ok(_), Some(Err(e))) => (Err(InvalidUid::Second(Box::new(e))), None),
            (Ok(k), Some(Ok(k2))) => (Ok(k), Some(k2)),
            (Ok(k), None) => (Ok(k), None),
        };
        Self {
            key,
            key2,
            duplicate,
            plan: None,
        }
    }

    /// The row with its service plan cell (a line's file may have one).
    pub fn with_plan(mut self, plan: Option<&str>) -> Self {
        self.plan = plan.map(str::to_owned);
        self
    }

    /// The key the worker looks devices up by: valid rows that are not repeats.
    pub fn lookup_key(&self) -> Option<&str> {
        match &self.key {
            Ok(key) if !self.duplicate => Some(key),
            _ => None,
        }
    }
}

/// A row's change to the devices table when it succeeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// REGISTER of an unknown key: insert it READY_FOR_USE in the target tenant.
    Create,
    /// REGISTER of an IDLE device of the tenant: READY_FOR_USE, new service type, brand,
    /// and the workflow if any.
    Register {
        device_id: i64,
    },
    AssignWorkflow {
        device_id: i64,
    },
    ExitWorkflow {
        device_id: i64,
    },
    Deregister {
        device_id: i64,
    },
    /// CARRIER_STATUS: the row's line is moved by this carrier call; the row's result waits
    /// for the carrier.
    CarrierCall {
        device_id: i64,
        operation: Operation,
    },
}

/// The one outcome of a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Success(Effect),
    Fail(RowError, String),
}

/// Decides one row. `device` is the stored device of the row's key, if any.
pub fn decide(row: &RowInput, device: Option<&DeviceView>, ctx: &ActionContext) -> Decision {
    let fail = |error: RowError, message: String| Decision::Fail(error, message);
    if let Err(why) = &row.key {
        return fail(RowError::InvalidDeviceUid, why.to_string());
    }
    if row.duplicate {
        return fail(
            RowError::DuplicateInFile,
            "an earlier row of the file has this device".into(),
        );
    }
    if row.plan.as_deref().is_some_and(|p| !valid_service_plan(p)) {
        return fail(
            RowError::InvalidServicePlan,
            format!("a service plan is 1 to {MAX_SERVICE_PLAN_CHARS} characters without control characters"),
        );
    }
    let Some(device) = device else {
        return if ctx.creates_missing_devices() {
            Decision::Success(Effect::Create)
        } else if ctx.kind == ActionKind::CarrierStatus {
            fail(
                RowError::DeviceNotFound,
                "no device has this SIM, and no imei names a smartphone without one".into(),
            )
        } else {
            fail(RowError::DeviceNotFound, "no device with this key".into())
        };
    };
    if device.tenant_id != ctx.target_tenant {
        return fail(
            RowError::DeviceOwnedByOtherTenant,
            "the device belongs to another tenant".into(),
        );
    }
    let id = device.id;
    match ctx.kind {
        ActionKind::Register => {
            if device.state != state::IDLE {
                return fail(
                    RowError::WrongStateDevice,
                    format!("REGISTER needs IDLE, the device is {}", state_name(device.state)),
                );
            }
            // The workflow is assigned after the REGISTER: a device already in one cannot take it.
            if ctx.workflow.is_some() && device.workflow_id.is_some() {
                return fail(
                    RowError::AlreadyInWorkflow,
                    "the device already has an active workflow".into(),
                );
            }
            Decision::Success(Effect::Register { device_id: id })
        }
        ActionKind::AssignWorkflow => {
            if !matches!(device.state, state::READY_FOR_USE | state::ACTIVE | state::LOCKED) {
                return fail(
                    RowError::WrongStateDevice,
                    format!(
                        "ASSIGN_WORKFLOW needs READY_FOR_USE, ACTIVE or LOCKED, the device is {}",
                        state_name(device.state)
                    ),
                );
            }
            let workflow_service_type = ctx.workflow.as_ref().map(|(_, st)| *st);
            if workflow_service_type != Some(device.service_type) {
                return fail(
                    RowError::WrongServiceType,
                    format!(
                        "the device has service type {}, the workflow needs {}",
                        device.service_type,
                        workflow_service_type.map_or_else(|| "none".to_owned(), |st| st.to_string())
                    ),
                );
            }
            if device.workflow_id.is_some() {
                return fail(
                    RowError::AlreadyInWorkflow,
                    "the device already has an active workflow".into(),
                );
            }
            Decision::Success(Effect::AssignWorkflow { device_id: id })
        }
        ActionKind::ExitWorkflow => {
            if device.workflow_id.is_none() {
                return fail(
                    RowError::NoWorkflowToExit,
                    "the device has no active workflow".into(),
                );
            }
            Decision::Success(Effect::ExitWorkflow { device_id: id })
        }
        ActionKind::Deregister => {
            if device.state != state::READY_FOR_USE {
                return fail(
                    RowError::WrongStateDevice,
                    format!(
                        "DEREGISTER needs READY_FOR_USE, the device is {}",
                        state_name(device.state)
                    ),
                );
            }
            if device.workflow_id.is_some() {
                return fail(
                    RowError::AlreadyInWorkflow,
                    "the device has an active workflow; exit it first".into(),
                );
            }
            Decision::Success(Effect::Deregister { device_id: id })
        }
        ActionKind::CarrierStatus => {
            let from = device.carrier_status.unwrap_or(CarrierStatus::New);
            let to = ctx.target_carrier_status.unwrap_or(CarrierStatus::New);
            match carrier_line::transition(from, to) {
                Some(operation) => Decision::Success(Effect::CarrierCall {
                    device_id: id,
                    operation,
                }),
                None => fail(
                    RowError::InvalidStatusTransition,
                    format!(
                        "the line is {} at the carrier; it cannot be moved to {}",
                        carrier_line::name(from),
                        carrier_line::name(to)
                    ),
                ),
            }
        }
    }
}

fn state_name(state: i16) -> String {
    match state {
        state::IDLE => "IDLE".into(),
        state::READY_FOR_USE => "READY_FOR_USE".into(),
        state::ACTIVE => "ACTIVE".into(),
        state::LOCKED => "LOCKED".into(),
        other => format!("in state {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const IMEI: &str = "490154203237518";
    const ICCID: &str = "89014103211118510720";

    fn ctx(kind: ActionKind, workflow: Option<i32>) -> ActionContext {
        ActionContext {
            kind,
            device_type: DeviceType::Smartphone,
            target_tenant: "demo".into(),
            target_service_type: 2,
            workflow: workflow.map(|st| ("wf".to_owned(), st)),
            brand_id: None,
            target_carrier_status: (kind == ActionKind::CarrierStatus).then_some(CarrierStatus::Active),
        }
    }

    fn device(tenant: &str, state: i16, service_type: i32, workflow: bool) -> DeviceView {
        DeviceView {
            id: 9,
            tenant_id: tenant.into(),
            state,
            service_type,
            workflow_id: workflow.then(|| "w0".to_owned()),
            carrier_status: None,
        }
    }

    fn row(duplicate: bool) -> RowInput {
        RowInput::new(DeviceType::Smartphone, IMEI, None, duplicate)
    }

    fn error_of(d: Decision) -> Option<RowError> {
        match d {
            Decision::Fail(e, _) => Some(e),
            Decision::Success(_) => None,
        }
    }

    #[test]
    fn seed_001_inventory_devices_register_prepaid_with_a_prepaid_workflow() {
        // IDLE, service type 6 (INVENTORY), REGISTER via register-prepaid (target 2) with a
        // service-type-2 workflow: the old system failed every one of these rows.
        let inventory = device("demo", state::IDLE, 6, false);
        assert_eq!(
            decide(&row(false), Some(&inventory), &ctx(ActionKind::Register, Some(2))),
            Decision::Success(Effect::Register { device_id: 9 })
        );
    }

    #[test]
    fn register_creates_unknown_devices_and_refuses_registered_ones() {
        let c = ctx(ActionKind::Register, None);
        assert_eq!(decide(&row(false), None, &c), Decision::Success(Effect::Create));
        assert_eq!(
            error_of(decide(
                &row(false),
                Some(&device("demo", state::READY_FOR_USE, 2, false)),
                &c
            )),
            Some(RowError::WrongStateDevice)
        );
        assert_eq!(
            error_of(decide(
                &row(false),
                Some(&device("acme", state::IDLE, 6, false)),
                &c
            )),
            Some(RowError::DeviceOwnedByOtherTenant)
        );
    }

    #[test]
    fn each_action_checks_its_own_conditions() {
        let assign = ctx(ActionKind::AssignWorkflow, Some(2));
        assert_eq!(
            error_of(decide(&row(false), None, &assign)),
            Some(RowError::DeviceNotFound)
        );
        assert_eq!(
            error_of(decide(
                &row(false),
                Some(&device("demo", state::IDLE, 2, false)),
                &assign
            )),
            Some(RowError::WrongStateDevice)
        );
        assert_eq!(
            error_of(decide(
                &row(false),
                Some(&device("demo", state::ACTIVE, 6, false)),
                &assign
            )),
            Some(RowError::WrongServiceType)
        );
        assert_eq!(
            error_of(decide(
                &row(false),
                Some(&device("demo", state::LOCKED, 2, true)),
                &assign
            )),
            Some(RowError::AlreadyInWorkflow)
        );
        assert!(
            error_of(decide(
                &row(false),
                Some(&device("demo", state::READY_FOR_USE, 2, false)),
                &assign
            ))
            .is_none()
        );

        let exit = ctx(ActionKind::ExitWorkflow, None);
        assert_eq!(
            error_of(decide(
                &row(false),
                Some(&device("demo", state::ACTIVE, 2, false)),
                &exit
            )),
            Some(RowError::NoWorkflowToExit)
        );
        assert_eq!(
            decide(&row(false), Some(&device("demo", state::ACTIVE, 2, true)), &exit),
            Decision::Success(Effect::ExitWorkflow { device_id: 9 })
        );

        let dereg = ctx(ActionKind::Deregister, None);
        assert_eq!(
            error_of(decide(
                &row(false),
                Some(&device("demo", state::ACTIVE, 2, false)),
                &dereg
            )),
            Some(RowError::WrongStateDevice)
        );
        assert_eq!(
            error_of(decide(
                &row(false),
                Some(&device("demo", state::READY_FOR_USE, 2, true)),
                &dereg
            )),
            Some(RowError::AlreadyInWorkflow)
        );
        assert_eq!(
            decide(
                &row(false),
                Some(&device("demo", state::READY_FOR_USE, 2, false)),
                &dereg
            ),
            Decision::Success(Effect::Deregister { device_id: 9 })
        );
    }

    #[test]
    fn an_invalid_second_imei_makes_the_row_invalid() {
        let row = RowInput::new(DeviceType::Smartphone, IMEI, Some("123"), false);
        assert_eq!(
            error_of(decide(&row, None, &ctx(ActionKind::Register, None))),
            Some(RowError::InvalidDeviceUid)
        );
        let ok = RowInput::new(DeviceType::Smartphone, IMEI, Some(" 356938035643809 "), false);
        assert_eq!(ok.key2.as_deref(), Some("356938035643809"));
        let blank = RowInput::new(DeviceType::Smartphone, IMEI, Some("  "), false);
        assert_eq!((blank.key.is_ok(), blank.key2), (true, None));
    }

    #[test]
    fn a_carrier_action_moves_only_lines_the_matrix_allows_and_never_creates() {
        let c = ctx(ActionKind::CarrierStatus, None);
        let line = RowInput::new(KeyKind::Iccid, ICCID, Some(IMEI), false);
        assert_eq!(
            (line.lookup_key(), line.key2.as_deref()),
            (Some(ICCID), Some(IMEI))
        );
        assert_eq!(error_of(decide(&line, None, &c)), Some(RowError::DeviceNotFound));
        let with = |cs| DeviceView {
            carrier_status: cs,
            ..device("demo", state::READY_FOR_USE, 2, true)
        };
        assert_eq!(
            error_of(decide(&line, Some(&with(None)), &c)),
            Some(RowError::InvalidStatusTransition)
        );
        assert_eq!(
            decide(&line, Some(&with(Some(CarrierStatus::Inventory))), &c),
            Decision::Success(Effect::CarrierCall {
                device_id: 9,
                operation: Operation::Activate
            })
        );
        let other = DeviceView {
            tenant_id: "acme".into(),
            ..with(Some(CarrierStatus::Inventory))
        };
        assert_eq!(
            error_of(decide(&line, Some(&other), &c)),
            Some(RowError::DeviceOwnedByOtherTenant)
        );
        let bad_imei = RowInput::new(KeyKind::Iccid, ICCID, Some("123"), false);
        assert_eq!(
            error_of(decide(&bad_imei, None, &c)),
            Some(RowError::InvalidDeviceUid)
        );
        let an_imei_as_iccid = RowInput::new(KeyKind::Iccid, IMEI, None, false);
        assert_eq!(an_imei_as_iccid.key, Err(InvalidUid::IccidFormat));
    }

    #[test]
    fn key_and_duplicate_errors_come_first() {
        let bad = RowInput::new(DeviceType::Smartphone, "490154203237519", None, true);
        assert_eq!(
            error_of(decide(&bad, None, &ctx(ActionKind::Register, None))),
            Some(RowError::InvalidDeviceUid)
        );
        assert_eq!(
            error_of(decide(&row(true), None, &ctx(ActionKind::Register, None))),
            Some(RowError::DuplicateInFile)
        );
        assert_eq!(row(true).lookup_key(), None);
        assert_eq!(row(false).lookup_key(), Some(IMEI));
    }

    fn kinds() -> impl Strategy<Value = ActionKind> {
        prop_oneof![
            Just(ActionKind::Register),
            Just(ActionKind::AssignWorkflow),
            Just(ActionKind::ExitWorkflow),
            Just(ActionKind::Deregister),
            Just(ActionKind::CarrierStatus)
        ]
    }

    fn carrier_statuses() -> impl Strategy<Value = CarrierStatus> {
        prop_oneof![
            Just(CarrierStatus::New),
            Just(CarrierStatus::Inventory),
            Just(CarrierStatus::PendingActivation),
            Just(CarrierStatus::Active),
            Just(CarrierStatus::Deactivated)
        ]
    }

    fn devices() -> impl Strategy<Value = Option<DeviceView>> {
        proptest::option::of(
            (
                prop_oneof![Just("demo"), Just("acme")],
                prop_oneof![Just(1i16), Just(2), Just(4), Just(5), Just(3)],
                prop_oneof![Just(2), Just(6)],
                any::<bool>(),
                proptest::option::of(carrier_statuses()),
            )
                .prop_map(|(t, s, st, wf, cs)| DeviceView {
                    carrier_status: cs,
                    ..device(t, s, st, wf)
                }),
        )
    }

    fn rows(kind: ActionKind) -> impl Strategy<Value = RowInput> {
        let keys = || {
            prop_oneof![
                Just(IMEI.to_owned()),
                Just(ICCID.to_owned()),
                Just("490154203237519".to_owned()),
                "[0-9]{15}",
                "[0-9]{19,20}",
                ".{0,20}"
            ]
        };
        let key_kind = KeyKind::of_upload(kind, DeviceType::Smartphone);
        // Only a line's file has a service plan column.
        let plans = proptest::option::of(prop_oneof!["[ -~]{0,70}", ".{1,5}"])
            .prop_map(move |plan| plan.filter(|_| kind == ActionKind::CarrierStatus));
        (keys(), proptest::option::of(keys()), any::<bool>(), plans).prop_map(
            move |(raw, raw2, dup, plan)| {
                RowInput::new(key_kind, &raw, raw2.as_deref(), dup).with_plan(plan.as_deref())
            },
        )
    }

    /// Every check of SPEC §5 evaluated independently; the decision must report the first
    /// that holds, and succeed exactly when none does.
    fn applicable(row: &RowInput, d: Option<&DeviceView>, c: &ActionContext) -> Vec<RowError> {
        let mut errors = Vec::new();
        if row.key.is_err() {
            errors.push(RowError::InvalidDeviceUid);
        }
        if row.duplicate {
            errors.push(RowError::DuplicateInFile);
        }
        if row
            .plan
            .as_deref()
            .is_some_and(|p| p.is_empty() || p.chars().count() > 64 || p.chars().any(char::is_control))
        {
            errors.push(RowError::InvalidServicePlan);
        }
        match d {
            None if !c.creates_missing_devices() => errors.push(RowError::DeviceNotFound),
            None => {}
            Some(d) => {
                if d.tenant_id != c.target_tenant {
                    errors.push(RowError::DeviceOwnedByOtherTenant);
                }
                if c.kind == ActionKind::CarrierStatus {
                    let from = d.carrier_status.unwrap_or(CarrierStatus::New);
                    if carrier_line::transition(from, c.target_carrier_status.unwrap_or(CarrierStatus::New))
                        .is_none()
                    {
                        errors.push(RowError::InvalidStatusTransition);
                    }
                    return errors;
                }
                let state_ok = match c.kind {
                    ActionKind::CarrierStatus => unreachable!("returned above"),
                    ActionKind::Register => d.state == state::IDLE,
                    ActionKind::AssignWorkflow => {
                        [state::READY_FOR_USE, state::ACTIVE, state::LOCKED].contains(&d.state)
                    }
                    ActionKind::ExitWorkflow => true,
                    ActionKind::Deregister => d.state == state::READY_FOR_USE,
                };
                if !state_ok {
                    errors.push(RowError::WrongStateDevice);
                }
                if c.kind == ActionKind::AssignWorkflow
                    && c.workflow.as_ref().map(|w| w.1) != Some(d.service_type)
                {
                    errors.push(RowError::WrongServiceType);
                }
                let blocks_workflow = match c.kind {
                    ActionKind::Register => c.workflow.is_some(),
                    ActionKind::AssignWorkflow | ActionKind::Deregister => true,
                    ActionKind::ExitWorkflow | ActionKind::CarrierStatus => false,
                };
                if blocks_workflow && d.workflow_id.is_some() {
                    errors.push(RowError::AlreadyInWorkflow);
                }
                if c.kind == ActionKind::ExitWorkflow && d.workflow_id.is_none() {
                    errors.push(RowError::NoWorkflowToExit);
                }
            }
        }
        errors
    }

    proptest! {
        #[test]
        fn each_row_gets_exactly_the_first_applicable_error_or_success(
            (kind, row) in kinds().prop_flat_map(|k| (Just(k), rows(k))),
            device in devices(),
            workflow in proptest::option::of(prop_oneof![Just(2), Just(6)]),
            target in carrier_statuses(),
        ) {
            let c = ActionContext {
                target_carrier_status: (kind == ActionKind::CarrierStatus).then_some(target),
                ..ctx(kind, workflow)
            };
            let decision = decide(&row, device.as_ref(), &c);
            let expected = applicable(&row, device.as_ref(), &c).into_iter().min();
            prop_assert_eq!(error_of(decision.clone()), expected);
            if let Decision::Success(effect) = decision {
                // A success changes exactly the device it names (or creates one).
                match (&effect, &device) {
                    (Effect::Create, None) => prop_assert_eq!(kind, ActionKind::Register),
                    (Effect::Create, Some(_)) => prop_assert!(false, "create over an existing device"),
                    (_, Some(d)) => {
                        let names_it = matches!(effect,
                            Effect::Register { device_id } | Effect::AssignWorkflow { device_id }
                            | Effect::ExitWorkflow { device_id } | Effect::Deregister { device_id }
                            | Effect::CarrierCall { device_id, .. } if device_id == d.id);
                        prop_assert!(names_it, "{:?} on device {}", effect, d.id);
                    }
                    (_, None) => prop_assert!(false, "an effect on a missing device"),
                }
            }
        }
    }
}
