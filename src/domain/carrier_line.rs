//! A line's status at the carrier and the moves between them (seed 003's matrix): which call
//! moves a line from one status to another, and which status the carrier reports confirms
//! that the move is done. Pure; the carrier client and the rules use it.

pub use entity::carrier_status::CarrierStatus;
use sea_orm::ActiveEnum;

/// The carrier call that makes a move, as in the carrier API's `devices/actions/{…}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operation {
    /// Tell the carrier about a new line (it lands in inventory).
    Add,
    /// Activate a line; the carrier answers at once and activates it later.
    Activate,
    Deactivate,
}

impl Operation {
    /// The action's name in the carrier API's path.
    pub fn path(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Activate => "activate",
            Self::Deactivate => "deactivate",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Activate => "ACTIVATE",
            Self::Deactivate => "DEACTIVATE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Add, Self::Activate, Self::Deactivate]
            .into_iter()
            .find(|op| op.as_str() == s)
    }
}

/// The call that moves a line from `from` to `to`, or `None` when the matrix has no such
/// move (staying where it is included): New → Inventory → Pending Activation → Active ⇄
/// Deactivated, and Inventory → Active directly (activation passes through pending).
pub fn transition(from: CarrierStatus, to: CarrierStatus) -> Option<Operation> {
    use CarrierStatus::*;
    match (from, to) {
        (New, Inventory) => Some(Operation::Add),
        (Inventory, PendingActivation | Active) | (PendingActivation, Active) | (Deactivated, Active) => {
            Some(Operation::Activate)
        }
        (Active, Deactivated) => Some(Operation::Deactivate),
        _ => None,
    }
}

/// A status as the carrier's API writes it (`GET /devices/{iccid}`), if it is one of ours.
pub fn from_wire(state: &str) -> Option<CarrierStatus> {
    match state.trim().to_ascii_lowercase().as_str() {
        "inventory" => Some(CarrierStatus::Inventory),
        "pending activation" | "pending_activation" => Some(CarrierStatus::PendingActivation),
        "active" => Some(CarrierStatus::Active),
        "deactivated" => Some(CarrierStatus::Deactivated),
        _ => None,
    }
}

/// Whether the carrier reporting `observed` means a move to `target` is done. Pending
/// activation is also reached when the line went on to active meanwhile.
pub fn confirms(target: CarrierStatus, observed: CarrierStatus) -> bool {
    observed == target || (target == CarrierStatus::PendingActivation && observed == CarrierStatus::Active)
}

/// A status's name, as stored and as the API writes it: the entity's own value.
pub fn name(status: CarrierStatus) -> String {
    status.to_value()
}

#[cfg(test)]
mod tests {
    use super::*;
    use CarrierStatus::*;

    const ALL: [CarrierStatus; 5] = [New, Inventory, PendingActivation, Active, Deactivated];

    #[test]
    fn the_matrix_has_exactly_the_seed_moves() {
        let moves: Vec<_> = ALL
            .iter()
            .flat_map(|&from| ALL.iter().map(move |&to| (from, to)))
            .filter_map(|(from, to)| transition(from, to).map(|op| (from, to, op)))
            .collect();
        assert_eq!(
            moves,
            vec![
                (New, Inventory, Operation::Add),
                (Inventory, PendingActivation, Operation::Activate),
                (Inventory, Active, Operation::Activate),
                (PendingActivation, Active, Operation::Activate),
                (Active, Deactivated, Operation::Deactivate),
                (Deactivated, Active, Operation::Activate),
            ]
        );
    }

    #[test]
    fn no_line_is_moved_to_new_or_to_where_it_is() {
        for s in ALL {
            assert_eq!(transition(s, New), None);
            assert_eq!(transition(s, s), None);
        }
    }

    #[test]
    fn wire_states_read_back_and_confirm_their_target() {
        for s in [Inventory, PendingActivation, Active, Deactivated] {
            let wire = name(s).to_ascii_lowercase().replace('_', " ");
            assert_eq!(from_wire(&wire), Some(s));
            assert!(confirms(s, s));
        }
        assert!(confirms(PendingActivation, Active));
        assert!(!confirms(Active, PendingActivation));
        assert_eq!(from_wire("suspended"), None);
        assert_eq!(Operation::parse("ACTIVATE"), Some(Operation::Activate));
    }
}
