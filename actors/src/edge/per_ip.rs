//! `PerIpTable`: live connections and handshakes per client address, for the per-IP limits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The client a count belongs to: an IPv4 address, or an IPv6 /64 (one host usually holds a
/// whole /64, so counting single IPv6 addresses would let it pick a new one per socket).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6Prefix(u64),
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4.into()),
            // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: count them as IPv4.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4.into()),
                None => ClientKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    connections: usize,
    handshakes: usize,
}

/// Which count a [`PerIpSlot`] holds.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Connection,
    Handshake,
}

/// The per-client counts of one server. An address is in the table only while it holds a
/// slot: every slot gives its count back when dropped, so the table cannot drift, and it is
/// empty when no connection is live.
#[derive(Debug, Default)]
pub(crate) struct PerIpTable {
    counts: Mutex<HashMap<ClientKey, Counts>>,
}

/// The limits a client is held to; 0 switches one off.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PerIpLimits {
    pub(crate) connections: usize,
    pub(crate) handshakes: usize,
}

impl PerIpLimits {
    pub(crate) fn is_off(&self) -> bool {
        self.connections == 0 && self.handshakes == 0
    }
}

/// The slots one connection holds in the table (a `None` is a limit that is off).
pub(crate) struct PerIpClaim {
    pub(crate) connection: Option<PerIpSlot>,
    pub(crate) handshake: Option<PerIpSlot>,
}

impl PerIpClaim {
    /// No slot: a connection whose client is not known yet (or all limits off).
    pub(crate) const NONE: PerIpClaim = PerIpClaim {
        connection: None,
        handshake: None,
    };
}

impl PerIpTable {
    /// Claims a connection and a handshake for `ip`, or nothing if either limit is reached.
    pub(crate) fn claim(self: &Arc<Self>, ip: IpAddr, limits: PerIpLimits) -> Option<PerIpClaim> {
        if limits.is_off() {
            return Some(PerIpClaim::NONE);
        }
        let key = ClientKey::from(ip);
        let mut table = self.lock();
        let counts = table.entry(key).or_default();
        let full = |count: usize, limit: usize| limit != 0 && count >= limit;
        if full(counts.connections, limits.connections)
            || full(counts.handshakes, limits.handshakes)
        {
            // A full count is above 0, so the entry was there before this claim.
            return None;
        }
        let slot = |kind, limit: usize, count: &mut usize| {
            (limit != 0).then(|| {
                *count += 1;
                PerIpSlot {
                    table: Arc::clone(self),
                    key,
                    kind,
                }
            })
        };
        let connection = slot(
            Kind::Connection,
            limits.connections,
            &mut counts.connections,
        );
        let handshake = slot(Kind::Handshake, limits.handshakes, &mut counts.handshakes);
        Some(PerIpClaim {
            connection,
            handshake,
        })
    }

    /// Client addresses (IPv6: /64 prefixes) that hold at least one slot.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn release(&self, key: ClientKey, kind: Kind) {
        let mut table = self.lock();
        let Some(counts) = table.get_mut(&key) else {
            return;
        };
        match kind {
            Kind::Connection => counts.connections = counts.connections.saturating_sub(1),
            Kind::Handshake => counts.handshakes = counts.handshakes.saturating_sub(1),
        }
        if counts.connections == 0 && counts.handshakes == 0 {
            table.remove(&key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Counts>> {
        // Only plain counter updates run under this lock; a poisoned table is still consistent.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One count held by one connection; dropping it gives the count back.
pub(crate) struct PerIpSlot {
    table: Arc<PerIpTable>,
    key: ClientKey,
    kind: Kind,
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        self.table.release(self.key, self.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: PerIpLimits = PerIpLimits {
        connections: 3,
        handshakes: 2,
    };

    #[test]
    fn a_client_gets_up_to_its_limit_and_the_table_empties_behind_it() {
        let table = Arc::new(PerIpTable::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = table.claim(ip, BOTH).unwrap();
        let second = table.claim(ip, BOTH).unwrap();
        assert!(table.claim(ip, BOTH).is_none(), "two handshakes at most");
        // The handshakes end; the connections stay: one more connection fits, then none.
        let (first_conn, second_conn) = (first.connection, second.connection);
        drop((first.handshake, second.handshake));
        let third = table.claim(ip, BOTH).unwrap();
        assert!(table.claim(ip, BOTH).is_none(), "three connections at most");
        assert!(
            table.claim("10.0.0.2".parse().unwrap(), BOTH).is_some(),
            "another client is not affected"
        );
        drop((first_conn, second_conn, third));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_counts_as_ipv4() {
        let table = Arc::new(PerIpTable::default());
        let one = PerIpLimits {
            connections: 1,
            handshakes: 0,
        };
        let held = table
            .claim("2001:db8:1:2::1".parse().unwrap(), one)
            .unwrap();
        assert!(table
            .claim("2001:db8:1:2::ffff".parse().unwrap(), one)
            .is_none());
        assert!(table
            .claim("2001:db8:1:3::1".parse().unwrap(), one)
            .is_some());
        let v4 = table.claim("192.0.2.7".parse().unwrap(), one).unwrap();
        assert!(table
            .claim("::ffff:192.0.2.7".parse().unwrap(), one)
            .is_none());
        drop((held, v4));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn limits_that_are_off_keep_nothing() {
        let table = Arc::new(PerIpTable::default());
        let off = PerIpLimits {
            connections: 0,
            handshakes: 0,
        };
        let claims: Vec<_> = (0..100)
            .map(|_| table.claim("10.0.0.1".parse().unwrap(), off).unwrap())
            .collect();
        assert_eq!(table.len(), 0);
        drop(claims);
    }
}
