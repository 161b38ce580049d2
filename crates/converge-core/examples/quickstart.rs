//! The Quick Start, exactly as documented: a seed agent and an agent that reacts to it.
//!
//! Run with `cargo run -p converge-core --example quickstart`.

use converge_core::agents::{ReactOnceAgent, SeedAgent};
use converge_core::{Context, ContextKey, Engine};

fn main() {
    // Create engine and register agents
    let mut engine = Engine::new();
    engine.register(SeedAgent::new("seed-1", "initial data"));
    engine.register(ReactOnceAgent::new("hyp-1", "derived insight"));

    // Run until convergence
    let result = engine.run(Context::new()).expect("should converge");

    // Inspect results
    assert!(result.converged);
    assert!(result.context.has(ContextKey::Seeds));
    assert!(result.context.has(ContextKey::Hypotheses));
    println!("Converged in {} cycles", result.cycles);

    for fact in result.context.history() {
        let record = fact.record();
        println!(
            "  {}/{} = {} (by {} in cycle {}, {})",
            fact.key(),
            fact.id(),
            fact.content(),
            record.agent_name(),
            record.cycle(),
            record.proposal()
        );
    }
    println!("root hash {}", result.root_hash);
}
