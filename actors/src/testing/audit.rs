//! Checking a server's disposals against its books.

use std::collections::BTreeMap;

use crate::supervision::conn_id::ConnId;
use crate::supervision::registry::DisposalRecord;
use crate::supervision::stats::Ledger;

/// Asserts that every accepted id of `ledger` was disposed exactly once in `records`, and that
/// the duplicate and fallback counters are 0. Returns the record of each id.
pub(super) fn each_disposed_once(
    ledger: &Ledger,
    records: Vec<DisposalRecord>,
) -> BTreeMap<ConnId, DisposalRecord> {
    let mut by_id: BTreeMap<ConnId, DisposalRecord> = BTreeMap::new();
    for record in records {
        assert!(record.applied, "duplicate dispose: {record:?}");
        let previous = by_id.insert(record.id, record.clone());
        assert!(previous.is_none(), "id disposed twice: {record:?}");
    }
    assert_eq!(ledger.duplicates, 0, "duplicate counter: {ledger:?}");
    assert_eq!(ledger.fallbacks, 0, "fallback counter: {ledger:?}");
    let disposed_ids: Vec<u64> = by_id.keys().map(|id| id.0).collect();
    let expected: Vec<u64> = (0..ledger.accepted).collect();
    assert_eq!(
        disposed_ids, expected,
        "every accepted id is disposed (ledger {ledger:?})"
    );
    by_id
}
