//! The `converge-bench` binary: parses arguments, runs scenarios, prints one JSON line each.
//!
//! Exit codes: 0 on success, 1 when a run fails or does not verify, 2 on bad arguments.

use std::io::Write;
use std::process::ExitCode;

use converge_bench::{BenchError, DEFAULT_SET, N_MAX, Scenario, lines};

/// The allocator the `converge` binary runs with, so that the scenarios measure what it does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage: converge-bench <scenario> <N>
       converge-bench all

scenarios:
  chain-id N     a chain of N agents, each waiting for its predecessor's fact by id
  chain-count N  a chain of N agents, agent i waiting for exactly i facts
  fanout N       N independent seed agents, all firing in the first cycle
  latency N      8 cycles of N async agents, each waiting 50 ms of simulated I/O (ideal: 400 ms)
  latency-journal N
                 latency N with every outcome and cycle committed to a SQLite journal
  journal N      fanout N committed to a SQLite journal, then resumed from it
  pg-journal N   journal N on PostgreSQL (synchronous_commit=on, fsync on)
  pg-runs N      N small runs submitted to PostgreSQL, driven by 1, 2 and 4 workers
                 (one line per worker count)
  pg-serve N     reads at 1,000/s of `converge serve` on PostgreSQL while N runs are
                 submitted to it at 50/s and driven by two `converge worker`s (one line
                 per endpoint; needs the `converge` binary beside this one or in CONVERGE_BIN)
  all            chain-id 1000, chain-id 2000, chain-count 4000, fanout 10000, fanout 100000,
                 latency 16, latency-journal 16, journal 100000 (not the pg- scenarios)

The pg- scenarios use the server CONVERGE_BENCH_POSTGRES names (a role that may create
databases), or start a throwaway cluster.

Prints one JSON line per run: {\"scenario\",\"n\",\"cycles\",\"facts\",\"ms\"}, where ms is the
wall time of the run alone.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = match parse(&args) {
        Ok(Some(runs)) => runs,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("converge-bench: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    for (scenario, n) in runs {
        match lines(scenario, n) {
            Ok(lines) => {
                for line in lines {
                    if writeln!(stdout, "{line}")
                        .and_then(|()| stdout.flush())
                        .is_err()
                    {
                        return ExitCode::FAILURE;
                    }
                }
            }
            Err(error) => {
                eprintln!("converge-bench: {error}");
                let code = if error.is_usage() { 2 } else { 1 };
                return ExitCode::from(code);
            }
        }
    }
    ExitCode::SUCCESS
}

/// The runs the arguments ask for; `None` for a help request.
fn parse(args: &[String]) -> Result<Option<Vec<(Scenario, usize)>>, String> {
    match args {
        [] => Err("missing arguments".to_owned()),
        [flag] if flag == "-h" || flag == "--help" => Ok(None),
        [all] if all == "all" => Ok(Some(DEFAULT_SET.to_vec())),
        [all, ..] if all == "all" => Err("`all` takes no other arguments".to_owned()),
        [name] => {
            let scenario = parse_scenario(name)?;
            Err(format!("missing N for scenario {scenario}"))
        }
        [name, n] => {
            let scenario = parse_scenario(name)?;
            Ok(Some(vec![(scenario, parse_n(n)?)]))
        }
        _ => Err(format!(
            "expected <scenario> <N> or `all`, got {} arguments",
            args.len()
        )),
    }
}

fn parse_scenario(name: &str) -> Result<Scenario, String> {
    name.parse().map_err(|error: BenchError| error.to_string())
}

fn parse_n(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=N_MAX).contains(&n) => Ok(n),
        _ => Err(format!(
            "N must be an integer between 1 and {N_MAX}, got {text:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn parses_good_arguments() {
        assert_eq!(
            parse(&args(&["fanout", "10"])),
            Ok(Some(vec![(Scenario::Fanout, 10)]))
        );
        assert_eq!(parse(&args(&["all"])), Ok(Some(DEFAULT_SET.to_vec())));
        assert_eq!(parse(&args(&["--help"])), Ok(None));
    }

    #[test]
    fn refuses_bad_arguments() {
        for bad in [
            &[][..],
            &["all", "5"],
            &["chain-id"],
            &["chain-id", "0"],
            &["chain-id", "-3"],
            &["chain-id", "ten"],
            &["chain-id", "99999999999"],
            &["nope", "10"],
            &["fanout", "10", "extra"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} should be refused");
        }
    }
}
