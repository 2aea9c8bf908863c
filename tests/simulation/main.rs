//! Deterministic crash simulation on the simulated disk (`keymeter::log::sim`): the log
//! alone, and the whole engine (writer, syncer, projector), crashed at random operations
//! with every unsynced write at risk, reopened, and checked against a model.
//!
//! Each test runs seeds `0..N`: N is 200 for the log and 30 for the engine by default, or
//! `KEYMETER_SIM_SEEDS`; `KEYMETER_SIM_SEED=S` runs only seed S. A failing seed is
//! printed with the command that replays it. The stress run outside the default suite:
//! `KEYMETER_SIM_SEEDS=5000 cargo test --release --test simulation`.

#[path = "../common/mod.rs"]
mod common;
mod engine_sim;
mod engine_world;
mod log_sim;

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Runs `run(seed)` for each seed of this test, naming the seed that fails.
pub fn for_each_seed(test: &str, default_seeds: u64, mut run: impl FnMut(u64)) {
    let seeds: Vec<u64> = match std::env::var("KEYMETER_SIM_SEED") {
        Ok(one) => vec![one.parse().expect("KEYMETER_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("KEYMETER_SIM_SEEDS")
                .map(|n| n.parse().expect("KEYMETER_SIM_SEEDS is a number"))
                .unwrap_or(default_seeds);
            (0..n).collect()
        }
    };
    for seed in seeds {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(seed))) {
            eprintln!(
                "simulation seed {seed} failed; replay it with \
                 KEYMETER_SIM_SEED={seed} cargo test --test simulation {test}"
            );
            resume_unwind(panic);
        }
    }
}
