//! `PerIpTable`: live connections and handshakes per client address, and the rate of its new
//! handshakes, for the per-IP limits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::edge::rate::Rate;

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
    /// The client's handshake-rate bucket (see `rate.rs`); `None` or past: full.
    rate: Option<Instant>,
}

impl Counts {
    /// Nothing to remember at `now`: no slot held, and the rate bucket full again.
    fn is_spent(&self, now: Instant) -> bool {
        self.connections == 0 && self.handshakes == 0 && Rate::is_refilled(self.rate, now)
    }
}

/// Which count a [`PerIpSlot`] holds.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Connection,
    Handshake,
}

/// The per-client counts of one server. An address is in the table only while it holds a
/// slot or its handshake-rate bucket is not full again: every slot gives its count back when
/// dropped, so the table cannot drift, and an address whose bucket is still refilling when
/// its last slot goes is swept out once it is full (at most a second after its last handshake
/// plus [`SWEEP_EVERY`]). So the table holds the live clients and those of the last seconds,
/// never more, and it is empty a few seconds after the last connection.
#[derive(Debug, Default)]
pub(crate) struct PerIpTable {
    counts: Mutex<Clients>,
}

/// The table's contents, under its one lock.
#[derive(Debug, Default)]
struct Clients {
    by_key: HashMap<ClientKey, Counts>,
    /// When addresses with a full bucket and no slot were last swept out.
    swept_at: Option<Instant>,
}

/// How often a claim sweeps out the addresses that have nothing left to remember (one pass
/// over the table, under its lock: once a second costs nothing next to the handshakes).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The limits a client is held to; 0 (or `None`) switches one off.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PerIpLimits {
    pub(crate) connections: usize,
    pub(crate) handshakes: usize,
    /// New handshakes a second; over it the client is refused.
    pub(crate) rate: Option<Rate>,
}

impl PerIpLimits {
    pub(crate) fn is_off(&self) -> bool {
        self.connections == 0 && self.handshakes == 0 && self.rate.is_none()
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
    /// Claims a connection and a handshake for `ip`, and takes one handshake from its rate,
    /// or nothing if any limit is reached.
    pub(crate) fn claim(self: &Arc<Self>, ip: IpAddr, limits: PerIpLimits) -> Option<PerIpClaim> {
        if limits.is_off() {
            return Some(PerIpClaim::NONE);
        }
        let key = ClientKey::from(ip);
        let now = Instant::now();
        let mut table = self.lock();
        if limits.rate.is_some() {
            table.sweep_if_due(now);
        }
        let counts = table.by_key.entry(key).or_default();
        let full = |count: usize, limit: usize| limit != 0 && count >= limit;
        if full(counts.connections, limits.connections)
            || full(counts.handshakes, limits.handshakes)
        {
            // A full count is above 0, so the entry was there before this claim.
            return None;
        }
        if let Some(rate) = limits.rate {
            if !rate.try_take(&mut counts.rate, now) {
                // Over the rate: the bucket was spent before, so the entry was there already.
                return None;
            }
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

    /// Client addresses (IPv6: /64 prefixes) that hold at least one slot or whose rate
    /// bucket is still refilling (those that no longer do are swept out first).
    pub(crate) fn len(&self) -> usize {
        let mut table = self.lock();
        table.sweep(Instant::now());
        table.by_key.len()
    }

    fn release(&self, key: ClientKey, kind: Kind) {
        let mut table = self.lock();
        let Some(counts) = table.by_key.get_mut(&key) else {
            return;
        };
        match kind {
            Kind::Connection => counts.connections = counts.connections.saturating_sub(1),
            Kind::Handshake => counts.handshakes = counts.handshakes.saturating_sub(1),
        }
        if counts.connections == 0 && counts.handshakes == 0 {
            // An address whose bucket is still refilling stays until a sweep finds it full.
            if counts.is_spent(Instant::now()) {
                table.by_key.remove(&key);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clients> {
        // Only plain counter updates run under this lock; a poisoned table is still consistent.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Clients {
    /// Sweeps if the last sweep is [`SWEEP_EVERY`] old.
    fn sweep_if_due(&mut self, now: Instant) {
        if self
            .swept_at
            .map_or(true, |at| now.saturating_duration_since(at) >= SWEEP_EVERY)
        {
            self.sweep(now);
        }
    }

    /// Forgets every address that holds no slot and whose bucket is full again.
    fn sweep(&mut self, now: Instant) {
        self.by_key.retain(|_, counts| !counts.is_spent(now));
        self.swept_at = Some(now);
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
        rate: None,
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
            rate: None,
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
            rate: None,
        };
        let claims: Vec<_> = (0..100)
            .map(|_| table.claim("10.0.0.1".parse().unwrap(), off).unwrap())
            .collect();
        assert_eq!(table.len(), 0);
        drop(claims);
    }

    #[test]
    fn over_its_rate_a_client_is_refused_and_its_entry_leaves_once_refilled() {
        let table = Arc::new(PerIpTable::default());
        let rate = PerIpLimits {
            connections: 0,
            handshakes: 0,
            rate: Rate::per_client(3),
        };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(table.claim(a, rate).is_some());
        }
        assert!(table.claim(a, rate).is_none(), "a fourth within the second");
        assert!(table.claim(b, rate).is_some(), "another client has its own");
        // No slot is held (the count limits are off), but both buckets are refilling.
        assert_eq!(table.len(), 2);
        // A bucket of 3 a second is full again a second after its last handshake.
        std::thread::sleep(Duration::from_millis(1_100));
        assert_eq!(table.len(), 0, "both leave once their buckets are full");
        assert!(table.claim(a, rate).is_some(), "A may again");
    }

    #[test]
    fn a_flood_from_many_addresses_does_not_grow_the_table_for_good() {
        let table = Arc::new(PerIpTable::default());
        let rate = PerIpLimits {
            connections: 2,
            handshakes: 0,
            rate: Rate::per_client(1_000),
        };
        // Each address claims and releases at once: its entry stays only while its bucket
        // refills (a millisecond), and the sweep takes it out.
        for n in 0..10_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            drop(table.claim(ip, rate).unwrap());
        }
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(table.len(), 0);
    }
}
