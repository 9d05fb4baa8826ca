//! `ServiceTable`: the default service and the named ones, looked up by a ClientHello's SNI.

use std::collections::HashMap;
use std::sync::Arc;

use crate::service::counts::ServiceCounts;
use crate::service::definition::Service;
use crate::service::error::ServiceError;
use crate::service::names::{normalise, ServiceName};
use crate::tls::client_policy::ClientPolicy;

/// Every service of a server, the default first. A ClientHello goes to the service with its
/// SNI as an exact name, else to the one with a wildcard matching it, else (no SNI, or no
/// match) to the default; the default's `--sni-strict` then refuses a name its certificates
/// do not serve, as without services. Swapped whole by a reload: a connection keeps the
/// service it started with.
#[derive(Debug)]
pub struct ServiceTable {
    /// The default first, then the named ones in the operator's order.
    services: Vec<Arc<Service>>,
    /// Exact names → index in `services`.
    exact: HashMap<String, usize>,
    /// The part after `*.` of each wildcard → index in `services`.
    wildcard: HashMap<String, usize>,
}

impl ServiceTable {
    /// A table of `default` (its names are ignored: it is the default) and `named` (each with
    /// at least one name). Refused: a named service without names, a name two services claim
    /// (exactly the same name, or the same wildcard), two services with one label.
    pub fn new(default: Service, named: Vec<Service>) -> Result<ServiceTable, ServiceError> {
        let (exact, wildcard) = ServiceTable::index(&named)?;
        let services = std::iter::once(default)
            .chain(named)
            .map(Arc::new)
            .collect();
        Ok(ServiceTable {
            services,
            exact,
            wildcard,
        })
    }

    /// Checks `named` as [`ServiceTable::new`] does, without building a table.
    pub fn check(named: &[Service]) -> Result<(), ServiceError> {
        ServiceTable::index(named).map(|_| ())
    }

    /// The exact names and the wildcards of `named`, each to its index in a table (the
    /// default is 0), checked: every service named, no name claimed twice, no label twice.
    #[allow(clippy::type_complexity)]
    fn index(
        named: &[Service],
    ) -> Result<(HashMap<String, usize>, HashMap<String, usize>), ServiceError> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut labels: HashMap<String, usize> = HashMap::new();
        for (at, service) in named.iter().enumerate() {
            let index = at + 1;
            if service.parsed_names().is_empty() {
                return Err(ServiceError(format!(
                    "the service at position {index} has no names (names = [...])"
                )));
            }
            if let Some(earlier) = labels.insert(service.label().to_string(), index) {
                return Err(ServiceError(format!(
                    "services {index} and {earlier} are both called {}",
                    service.label()
                )));
            }
            for name in service.parsed_names() {
                let (map, key) = match name {
                    ServiceName::Exact(host) => (&mut exact, host),
                    ServiceName::Wildcard(suffix) => (&mut wildcard, suffix),
                };
                if let Some(earlier) = map.insert(key.clone(), index) {
                    let first = &named[earlier - 1];
                    return Err(ServiceError(format!(
                        "service {}: name {} is already a name of service {}",
                        service.label(),
                        name.shown(),
                        first.label()
                    )));
                }
            }
        }
        Ok((exact, wildcard))
    }

    /// The service a ClientHello with `sni` goes to: exact name, then wildcard, then the
    /// default. The one place a connection's service is chosen.
    pub fn choose(&self, sni: Option<&str>) -> &Arc<Service> {
        let index = sni.and_then(|sni| {
            let (name, parent) = normalise(sni);
            self.exact
                .get(&name)
                .copied()
                .or_else(|| parent.and_then(|at| self.wildcard.get(&name[at..]).copied()))
        });
        // `new` puts the default first: there is always an index 0.
        &self.services[index.unwrap_or(0)]
    }

    /// Whether some service passes its clients' TLS through (then every ClientHello is kept
    /// until its service is known).
    pub(crate) fn passes_any_through(&self) -> bool {
        self.services.iter().any(|s| s.handler.passes_through())
    }

    /// The default service.
    pub fn default_service(&self) -> &Arc<Service> {
        &self.services[0]
    }

    /// Every service, the default first.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// Every service, to set what a table not served yet carries over.
    pub(crate) fn services_mut(&mut self) -> &mut [Arc<Service>] {
        &mut self.services
    }

    /// The service called `label` now, if there is one.
    pub(crate) fn by_label(&self, label: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.label() == label)
    }

    /// Whether some service sends a PROXY header to its upstreams (then each connection
    /// notes its local address before it knows its service).
    pub(crate) fn sends_proxy_header(&self) -> bool {
        self.services.iter().any(|s| s.handler.sends_proxy_header())
    }

    /// Each service's client-certificate policy, by label.
    pub(crate) fn policies(&self) -> Vec<(String, Option<Arc<ClientPolicy>>)> {
        self.services
            .iter()
            .map(|s| (s.label().to_string(), s.tls().client_policy().cloned()))
            .collect()
    }

    /// The labels whose client-certificate policy differs between `old` and `self` (a
    /// service new in `self` counts only if it has a policy; one gone has no connection to
    /// check against a policy of its own any more).
    pub(crate) fn policies_changed_since(&self, old: &ServiceTable) -> Vec<String> {
        self.services
            .iter()
            .filter(|new| {
                let before = old
                    .by_label(new.label())
                    .and_then(|s| s.tls().client_policy().cloned());
                let after = new.tls().client_policy();
                ClientPolicy::differ(before.as_deref(), after.map(|p| &**p))
            })
            .map(|s| s.label().to_string())
            .collect()
    }

    /// The same table with the default service over `tls` (a reload of the default's TLS
    /// alone): every named service is kept as it is.
    pub(crate) fn with_default_tls(&self, tls: crate::tls::source::LoadedTls) -> ServiceTable {
        let mut services = self.services.clone();
        services[0] = Arc::new(self.services[0].with_tls(tls));
        ServiceTable {
            services,
            exact: self.exact.clone(),
            wildcard: self.wildcard.clone(),
        }
    }

    /// Gives each service the server's figures of its label (before the table is served).
    pub(crate) fn counted_by(mut self, counts: &ServiceCounts) -> ServiceTable {
        for service in &mut self.services {
            let count = counts.of(service.label());
            // Only a table built by `new` and not served yet comes here: every Arc is its own.
            // (A shared one would keep the figures it has.)
            if let Some(service) = Arc::get_mut(service) {
                service.count = count;
            }
        }
        self
    }
}

#[cfg(all(test, feature = "dev-certs"))]
mod tests {
    use super::*;
    use crate::protocol::Echo;
    use crate::tls::source::LoadedTls;

    fn tls() -> LoadedTls {
        let certs = crate::tls::dev_certs::DevCerts::generate().unwrap();
        certs.server_tls().unwrap()
    }

    fn service(names: &[&str], tls: &LoadedTls) -> Service {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        Service::sessions(&names, tls.clone(), Echo).unwrap()
    }

    #[test]
    fn exact_beats_wildcard_and_the_rest_goes_to_the_default() {
        let tls = tls();
        let table = ServiceTable::new(
            service(&[], &tls),
            vec![
                service(&["*.b.test", "a.test"], &tls),
                service(&["x.b.test"], &tls),
            ],
        )
        .unwrap();
        let label = |sni: Option<&str>| table.choose(sni).label().to_string();
        assert_eq!(label(Some("x.b.test")), "x.b.test");
        assert_eq!(label(Some("Y.B.Test.")), "*.b.test");
        assert_eq!(label(Some("A.TEST")), "*.b.test");
        assert_eq!(
            label(Some("b.test")),
            "default",
            "no match on the bare parent"
        );
        assert_eq!(label(Some("z.y.b.test")), "default", "one label only");
        assert_eq!(label(Some("c.test")), "default");
        assert_eq!(label(None), "default");
    }

    #[test]
    fn a_name_claimed_twice_is_refused() {
        let tls = tls();
        let error = ServiceTable::new(
            service(&[], &tls),
            vec![
                service(&["a.test"], &tls),
                service(&["b.test", "A.test"], &tls),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("service b.test") && error.contains("a.test"),
            "{error}"
        );
        let nameless = ServiceTable::new(service(&[], &tls), vec![service(&[], &tls)]);
        assert!(nameless.unwrap_err().to_string().contains("no names"));
    }

    #[test]
    fn the_lookup_is_cheap_beside_a_handshake() {
        let tls = tls();
        let named = (0..100)
            .map(|n| service(&[&format!("s{n}.test"), &format!("*.w{n}.test")], &tls))
            .collect();
        let table = ServiceTable::new(service(&[], &tls), named).unwrap();
        let names = ["s57.test", "x.w33.test", "unknown.test"];
        let rounds = 100_000;
        let started = std::time::Instant::now();
        for n in 0..rounds {
            std::hint::black_box(table.choose(Some(names[n % names.len()])));
        }
        let each = started.elapsed() / rounds as u32;
        println!("service lookup: {each:?} per ClientHello (100 services)");
        // A ceiling only a pathological lookup reaches (a handshake costs hundreds of µs).
        assert!(each < std::time::Duration::from_micros(20), "{each:?}");
    }
}
