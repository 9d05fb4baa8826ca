//! `Faults`: the one set of faults a server consults — the runtime rules an operator installs
//! (`POST /faults`) and, in test builds, the named fault points — with the books of how often
//! each fired.
//!
//! Both kinds are entries of the same list, under the same lock, with the same id space, the
//! same "at most N times" countdown and the same counting. A named point is an entry that
//! matches every place it is checked at and whose action is the point's own (a panic, a hang,
//! a failed read: code that exists only in a build with the `fault-injection` feature). A
//! runtime rule is an entry matched once per connection, once its ClientHello is read, whose
//! action is one of [`FaultAction`]'s.
//!
//! The cost when nothing is installed is one relaxed atomic load: per connection for the
//! rules ([`Faults::pick`]), per check for the points ([`Faults::is_on`], constant `false`
//! without the feature). The lock is taken only when that count says there is something to
//! look at.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[cfg(feature = "fault-injection")]
use crate::fault::point::FaultPoint;
use crate::fault::rule::{Candidate, FaultAction, FaultRule, FaultRuleError, MAX_FAULT_RULES};

/// A rule's id in its set, as `POST /faults` answers and `DELETE /faults/{id}` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FaultRuleId(pub u64);

/// One installed runtime rule, as listed by [`Faults::rules`].
#[derive(Clone, Debug)]
pub struct InstalledFault {
    /// Its id (for [`Faults::remove`]).
    pub id: FaultRuleId,
    /// The rule as installed.
    pub rule: FaultRule,
    /// How many connections it hit so far.
    pub fired: u64,
    /// How long until it goes.
    pub expires_in: Duration,
}

/// The rule a connection was hit by.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Picked {
    pub(crate) id: FaultRuleId,
    pub(crate) action: FaultAction,
}

/// The faults of one server instance (runtime rules, and the named points of a test build).
/// Clones share the same set: the server consults it, the admin API (or a test) changes it.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Runtime rules in `book` (the fast path of [`Faults::pick`]).
    rules: AtomicUsize,
    /// Named points in `book` (the fast path of [`Faults::is_on`]).
    #[cfg(feature = "fault-injection")]
    points: AtomicUsize,
    book: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    entries: Vec<Entry>,
    last_id: u64,
    /// State of a small PRNG for the rules' probabilities (splitmix64; not for secrets).
    rng: u64,
}

#[derive(Debug)]
struct Entry {
    id: FaultRuleId,
    what: What,
    fired: u64,
    /// How many more times it may fire; `None`: no limit.
    left: Option<u64>,
    /// When it goes; `None` for a named point (switched off by the test).
    expires_at: Option<Instant>,
}

#[derive(Debug)]
enum What {
    Rule(FaultRule),
    #[cfg(feature = "fault-injection")]
    Point(FaultPoint),
}

impl Faults {
    /// Installs a runtime rule, after [`FaultRule::validate`]; it hits connections whose
    /// ClientHello is read from now on, until its lifetime is over or it is removed.
    pub fn install(&self, rule: FaultRule) -> Result<FaultRuleId, FaultRuleError> {
        rule.validate()?;
        let now = Instant::now();
        let mut book = self.lock();
        self.prune(&mut book, now);
        if self.shared.rules.load(Ordering::Relaxed) >= MAX_FAULT_RULES {
            return Err(FaultRuleError::TooMany);
        }
        let left = rule.matching.at_most;
        let expires_at = Some(now + rule.lifetime);
        let id = book.push(What::Rule(rule), left, expires_at);
        self.shared.rules.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    /// Removes a runtime rule; whether it was installed. Connections it already hit keep what
    /// it did to them.
    pub fn remove(&self, id: FaultRuleId) -> bool {
        let mut book = self.lock();
        let before = book.entries.len();
        book.entries
            .retain(|e| !(e.id == id && matches!(e.what, What::Rule(_))));
        let removed = book.entries.len() < before;
        if removed {
            self.shared.rules.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// The runtime rules installed now (expired ones are gone), oldest first.
    pub fn rules(&self) -> Vec<InstalledFault> {
        let now = Instant::now();
        let mut book = self.lock();
        self.prune(&mut book, now);
        book.entries
            .iter()
            .filter_map(|e| {
                e.what.rule().map(|rule| InstalledFault {
                    id: e.id,
                    rule: rule.clone(),
                    fired: e.fired,
                    expires_in: e.expires_at.map_or(Duration::ZERO, |at| at - now),
                })
            })
            .collect()
    }

    /// Whether any runtime rule is installed (one relaxed load: the per-connection cost when
    /// none is).
    pub(crate) fn has_rules(&self) -> bool {
        self.shared.rules.load(Ordering::Relaxed) > 0
    }

    /// The rule that hits a connection, if any: the first installed whose match selects it,
    /// whose `at_most` is not used up and whose probability comes up. One relaxed load when no
    /// rule is installed.
    pub(crate) fn pick(&self, candidate: &Candidate<'_>) -> Option<Picked> {
        if self.shared.rules.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = Instant::now();
        let mut book = self.lock();
        self.prune(&mut book, now);
        let book = &mut *book;
        for entry in book.entries.iter_mut() {
            let Some(rule) = entry.what.rule() else {
                continue;
            };
            if entry.left == Some(0) || !rule.matching.selects(candidate) {
                continue;
            }
            let p = rule.matching.probability;
            if p < 1.0 && unit(next_random(&mut book.rng)) >= p {
                continue;
            }
            entry.fired += 1;
            entry.left = entry.left.map(|left| left - 1);
            return Some(Picked {
                id: entry.id,
                action: rule.action,
            });
        }
        None
    }

    /// Drops the rules whose lifetime is over.
    fn prune(&self, book: &mut Book, now: Instant) {
        let before = book.entries.len();
        book.entries
            .retain(|e| e.expires_at.map_or(true, |at| at > now));
        // Only rules expire (a point has no expiry).
        let gone = before - book.entries.len();
        if gone > 0 {
            self.shared.rules.fetch_sub(gone, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        // Every change to the book is a single push, retain or counter update: a poisoned lock
        // still holds a consistent book.
        self.shared.book.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl What {
    /// The runtime rule, if this entry is one.
    fn rule(&self) -> Option<&FaultRule> {
        match self {
            What::Rule(rule) => Some(rule),
            #[cfg(feature = "fault-injection")]
            What::Point(_) => None,
        }
    }
}

impl Book {
    fn push(&mut self, what: What, left: Option<u64>, expires_at: Option<Instant>) -> FaultRuleId {
        self.last_id += 1;
        let id = FaultRuleId(self.last_id);
        self.entries.push(Entry {
            id,
            what,
            fired: 0,
            left,
            expires_at,
        });
        id
    }
}

/// splitmix64: a well-mixed 64-bit sequence from a counter, seeded on first use by the clock.
fn next_random(state: &mut u64) -> u64 {
    if *state == 0 {
        *state = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1);
    }
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random `u64` as a number in `[0, 1)`.
fn unit(random: u64) -> f64 {
    (random >> 11) as f64 / (1u64 << 53) as f64
}

/// The named points: entries of the same set, switched on by tests (feature `fault-injection`).
#[cfg(feature = "fault-injection")]
impl Faults {
    /// Switches a point on for every connection from now on.
    pub fn enable(&self, point: FaultPoint) {
        self.switch_on(point, None);
    }

    /// Switches a point on for the next `times` times it is reached, then off.
    pub fn enable_times(&self, point: FaultPoint, times: u32) {
        if times > 0 {
            self.switch_on(point, Some(u64::from(times)));
        }
    }

    /// Switches a point off.
    pub fn disable(&self, point: FaultPoint) {
        let mut book = self.lock();
        let before = book.entries.len();
        book.entries
            .retain(|e| !matches!(e.what, What::Point(p) if p == point));
        let gone = before - book.entries.len();
        self.shared.points.fetch_sub(gone, Ordering::Relaxed);
    }

    /// Whether a point fires here (counting down a point enabled for N times). One relaxed
    /// load when no point is on.
    pub fn is_on(&self, point: FaultPoint) -> bool {
        if self.shared.points.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let mut book = self.lock();
        let Some(at) = book
            .entries
            .iter()
            .position(|e| matches!(e.what, What::Point(p) if p == point))
        else {
            return false;
        };
        let entry = &mut book.entries[at];
        entry.fired += 1;
        entry.left = entry.left.map(|left| left - 1);
        if entry.left == Some(0) {
            // Used up: gone, so that a test's later checks cost one load again.
            book.entries.remove(at);
            self.shared.points.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    /// A point on replaces its earlier entry (as the earlier `HashMap` did).
    fn switch_on(&self, point: FaultPoint, left: Option<u64>) {
        self.disable(point);
        let mut book = self.lock();
        book.push(What::Point(point), left, None);
        self.shared.points.fetch_add(1, Ordering::Relaxed);
    }
}

/// Without the `fault-injection` feature no point can be switched on: no code reaches one.
#[cfg(not(feature = "fault-injection"))]
impl Faults {
    /// Always `false`: the points are compiled out (the code behind each check goes with it).
    #[inline(always)]
    pub fn is_on(&self, _point: crate::fault::point::FaultPoint) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::rule::{FaultMatch, MAX_FAULT_RULES};
    use std::net::SocketAddr;

    fn rule(matching: FaultMatch, lifetime: Duration) -> FaultRule {
        FaultRule {
            matching,
            action: FaultAction::ResetHandshake,
            lifetime,
        }
    }

    fn pick(faults: &Faults, sni: Option<&str>) -> Option<Picked> {
        let listener = || None::<SocketAddr>;
        faults.pick(&Candidate {
            peer: "127.0.0.1".parse().unwrap(),
            listener: &listener,
            sni,
        })
    }

    #[test]
    fn at_most_counts_down_and_the_rule_stays_listed() {
        let faults = Faults::default();
        let matching = FaultMatch {
            at_most: Some(2),
            ..FaultMatch::default()
        };
        let id = faults
            .install(rule(matching, Duration::from_secs(60)))
            .unwrap();
        assert!(pick(&faults, None).is_some());
        assert!(pick(&faults, None).is_some());
        assert!(pick(&faults, None).is_none());
        let listed = faults.rules();
        assert_eq!((listed[0].id, listed[0].fired), (id, 2));
        assert!(faults.remove(id));
        assert!(!faults.remove(id));
        assert!(faults.rules().is_empty());
    }

    #[test]
    fn probability_zero_never_fires_and_one_always_does() {
        let faults = Faults::default();
        let never = FaultMatch {
            probability: 0.0,
            ..FaultMatch::default()
        };
        faults
            .install(rule(never, Duration::from_secs(60)))
            .unwrap();
        assert!((0..1000).all(|_| pick(&faults, None).is_none()));
        let half = FaultMatch {
            probability: 0.5,
            ..FaultMatch::default()
        };
        faults.install(rule(half, Duration::from_secs(60))).unwrap();
        let hits = (0..1000).filter(|_| pick(&faults, None).is_some()).count();
        assert!((300..700).contains(&hits), "{hits} of 1000 at 0.5");
    }

    #[test]
    fn expired_rules_are_gone_and_the_count_is_capped() {
        let faults = Faults::default();
        faults
            .install(rule(FaultMatch::default(), Duration::from_millis(1)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(pick(&faults, None).is_none());
        assert!(faults.rules().is_empty());
        assert_eq!(faults.shared.rules.load(Ordering::Relaxed), 0);
        for _ in 0..MAX_FAULT_RULES {
            faults
                .install(rule(FaultMatch::default(), Duration::from_secs(60)))
                .unwrap();
        }
        assert_eq!(
            faults.install(rule(FaultMatch::default(), Duration::from_secs(60))),
            Err(FaultRuleError::TooMany)
        );
    }

    #[test]
    fn sni_selects() {
        let faults = Faults::default();
        let matching = FaultMatch {
            sni: Some("a.example".into()),
            ..FaultMatch::default()
        };
        faults
            .install(rule(matching, Duration::from_secs(60)))
            .unwrap();
        assert!(pick(&faults, Some("b.example")).is_none());
        assert!(pick(&faults, None).is_none());
        assert!(pick(&faults, Some("a.example")).is_some());
    }
}
