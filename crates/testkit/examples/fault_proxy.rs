//! The fault proxy as a process, for shell benchmarks (a "slow cache"):
//!
//! ```text
//! cargo run --release -p nix-outbox-testkit --example fault_proxy -- \
//!     127.0.0.1:UPSTREAM_PORT [throttle=BYTES_PER_SEC | random=SEED]
//! ```
//!
//! Prints `127.0.0.1:PORT` (where it listens) on the first line of stdout,
//! then serves until stdin is closed or it is killed. Without a second
//! argument it passes everything; `random=SEED` applies the standard mix
//! of faults ([`Plan::standard_mix`]).

use std::io::{BufRead as _, Write as _};

use nix_outbox_testkit::fault_proxy::{Fault, FaultProxy, Plan};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fault_proxy HOST:PORT [throttle=BYTES_PER_SEC | random=SEED]";
    let (Some(upstream), rest) = (args.first(), args.get(1..).unwrap_or_default()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let plan = match rest {
        [] => Plan::Pass,
        [arg] => match arg.split_once('=') {
            Some(("throttle", v)) if v.parse::<u64>().is_ok() => Plan::Always(Fault::Throttle {
                bytes_per_sec: v.parse().unwrap(),
            }),
            Some(("random", v)) if v.parse::<u64>().is_ok() => {
                Plan::standard_mix(v.parse().unwrap())
            }
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        },
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let proxy = FaultProxy::start(upstream);
    proxy.set_plan(plan);
    println!("{}", proxy.endpoint());
    std::io::stdout().flush().unwrap();
    for _ in std::io::stdin().lock().lines() {}
    eprintln!("fault proxy: {:?}", proxy.counts());
}
