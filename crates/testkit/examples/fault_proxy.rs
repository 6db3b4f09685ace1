//! The fault proxy as a process, for shell benchmarks (a "slow cache"):
//!
//! ```text
//! cargo run --release -p nix-outbox-testkit --example fault_proxy -- \
//!     127.0.0.1:UPSTREAM_PORT [throttle=BYTES_PER_SEC | random=SEED] [latency=RTT_MS]
//! ```
//!
//! Prints `127.0.0.1:PORT` (where it listens) on the first line of stdout,
//! then serves until stdin is closed or it is killed. Without a second
//! argument it passes everything; `random=SEED` applies the standard mix
//! of faults ([`Plan::standard_mix`]); `latency=RTT_MS` puts the upstream
//! that far away ([`FaultProxy::set_latency`]).

use std::io::{BufRead as _, Write as _};
use std::time::Duration;

use nix_outbox_testkit::fault_proxy::{Fault, FaultProxy, Plan};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: fault_proxy HOST:PORT [throttle=BYTES_PER_SEC | random=SEED] [latency=RTT_MS]";
    let fail = || -> ! {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let Some(upstream) = args.first() else { fail() };
    let (mut plan, mut rtt) = (Plan::Pass, Duration::ZERO);
    for arg in &args[1..] {
        let Some((key, value)) = arg.split_once('=') else {
            fail()
        };
        let Ok(n) = value.parse::<u64>() else { fail() };
        match key {
            "throttle" => plan = Plan::Always(Fault::Throttle { bytes_per_sec: n }),
            "random" => plan = Plan::standard_mix(n),
            "latency" => rtt = Duration::from_millis(n),
            _ => fail(),
        }
    }
    let proxy = FaultProxy::start(upstream);
    proxy.set_plan(plan);
    proxy.set_latency(rtt);
    println!("{}", proxy.endpoint());
    std::io::stdout().flush().unwrap();
    for _ in std::io::stdin().lock().lines() {}
    eprintln!("fault proxy: {:?}", proxy.counts());
}
