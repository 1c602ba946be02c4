//! The `reason` of every condition and Event the operator writes, in one
//! place per resource kind (as cert-manager's `constants.go`): a reason is
//! API, since alerts, `kubectl wait` scripts and the tests match on it.

pub mod api_key;
