//! `tlsvisor`: the server binary. See README.md for how to run it and ARCHITECTURE.md for how
//! it works.

mod activation;
mod admin;
mod certs;
mod check;
mod cli;
mod error;
mod exposition;
mod http;
mod listen;
mod log_bridge;
mod logging;
mod metrics;
mod notify;
mod privileges;
mod reload;
mod serve;
mod settings;
mod tls_metrics;
mod upgrade;
mod upstream_metrics;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, ServeArgs};
use crate::settings::Settings;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => Settings::resolve(ServeArgs::default()).and_then(serve::run),
        Some(Command::Serve(flags)) => Settings::resolve(*flags).and_then(serve::run),
        Some(Command::Check(flags)) => check::run(*flags),
        Some(Command::GenCerts { out }) => certs::generate_into(&out).map(|()| {
            eprintln!(
                "wrote ca.crt, ca.key, server.crt, server.key to {} (development use only)",
                out.display()
            )
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tlsvisor: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    /// The files of `src/` each `src/*.rs` file names through `crate::` (its test module
    /// left out), keyed by file stem.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let stems: BTreeSet<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".rs").map(str::to_string)
            })
            .collect();
        let mut graph = BTreeMap::new();
        for stem in &stems {
            let text = std::fs::read_to_string(format!("{dir}/{stem}.rs")).unwrap();
            let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let mut deps = BTreeSet::new();
            for (at, _) in text.match_indices("crate::") {
                let rest = &text[at + "crate::".len()..];
                // `crate::{a, b::C}` names several.
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group[..group.find('}').unwrap()]
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap())
                        .collect(),
                    None => vec![rest
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .next()
                        .unwrap()],
                };
                for name in names {
                    // An item of the crate root (`main.rs`) counts as an import of it.
                    let file = if stems.contains(name) { name } else { "main" };
                    if file != stem {
                        deps.insert(file.to_string());
                    }
                }
            }
            graph.insert(stem.clone(), deps);
        }
        graph
    }

    /// The style rule "no import cycles between files": each file of `src/` imports only
    /// files that do not import it back, directly or through others (`main.rs` declares the
    /// modules and may use any of them; none imports it).
    #[test]
    fn no_file_of_src_imports_itself_through_others() {
        let graph = imports();
        for start in graph.keys() {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<Vec<&String>> = vec![vec![start]];
            while let Some(path) = stack.pop() {
                let last = path[path.len() - 1];
                for next in &graph[last] {
                    let mut longer = path.clone();
                    longer.push(next);
                    assert!(next != start, "import cycle: {longer:?}");
                    if seen.insert(next) {
                        stack.push(longer);
                    }
                }
            }
        }
        assert!(graph["metrics"].contains("upstream_metrics"), "{graph:?}");
    }
}
