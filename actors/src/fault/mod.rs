//! Faults on purpose: one mechanism for the runtime rules an operator installs to test clients
//! (`--runtime-faults`, `POST /faults`) and the named points tests switch on (feature
//! `fault-injection`). Both are entries of a server's one [`Faults`] set (`set.rs`); what a
//! rule is lives in `rule.rs`, the named points in `point.rs`, and what a connection hit by a
//! rule does in `injected.rs`.

pub(crate) mod injected;
pub(crate) mod point;
pub(crate) mod rule;
pub(crate) mod set;

pub use point::FaultPoint;
pub use rule::{
    FaultAction, FaultDirection, FaultMatch, FaultRule, FaultRuleError, MAX_FAULT_DELAY,
    MAX_FAULT_LIFETIME, MAX_FAULT_RULES,
};
pub use set::{FaultRuleId, Faults, InstalledFault};
