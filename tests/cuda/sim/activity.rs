//! What the host asks of the device per part, as the latency report shows it: graph
//! launches, host synchronisations and the stages left on the CPU. Today the ViT, the
//! point branch and the fusion each replay one graph and the bank search one graph per
//! bank (6 for a complete part), each followed by a wait; the one-graph work brings this to one launch
//! and one wait per part with no CPU stage.

use crate::common;

use miad::backend::{Backend, Precision, PIPELINE_STAGES};
use miad::config::ModelConfig;
use miad::engine::Engine;
use miad::eval::dataset::list_test;
use miad::eval::latency;
use miad::eval::synth::Category;

use super::engine::{assert_on_the_simulated_device, options};

#[test]
fn the_latency_report_counts_graph_launches_host_syncs_and_cpu_stages() {
    let fx = common::fitted_with(
        ModelConfig::small(),
        "sim-activity",
        Category::Disc,
        4,
        2,
        1,
    );
    let parts: Vec<_> = list_test(&fx.category)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    let report = |backend: Backend, n: usize| {
        let mut e = Engine::open(&fx.model, &fx.bank, &options(backend, Precision::F32)).unwrap();
        if backend == Backend::CudaSim {
            assert_on_the_simulated_device(&e);
        }
        latency::run(&mut e, &parts, n, 1, None, &mut |_, _| {}).unwrap()
    };

    let cpu = report(Backend::Cpu, 2);
    assert_eq!(cpu.graph_launches_per_part, None);
    assert_eq!(cpu.host_syncs_per_part, None);
    assert_eq!(cpu.cpu_stages, PIPELINE_STAGES.to_vec());
    assert!(cpu.to_json().contains("\"graph_launches_per_part\": null"));

    let sim = report(Backend::CudaSim, 2);
    let again = report(Backend::CudaSim, 3);
    // The ViT, the point branch, the fusion and the three banks (complete parts).
    assert_eq!(sim.graph_launches_per_part, Some(6.0));
    // One wait after each launch; every part asks the same, whatever the run's length.
    assert_eq!(sim.host_syncs_per_part, Some(6.0));
    assert_eq!(again.host_syncs_per_part, Some(6.0));
    assert_eq!(again.graph_launches_per_part, Some(6.0));
    assert_eq!(
        sim.cpu_stages,
        ["preprocessing", "maps and decision"],
        "{}",
        sim.table()
    );
    let json = sim.to_json();
    assert!(
        json.contains("\"graph_launches_per_part\": 6.000000"),
        "{json}"
    );
    assert!(
        json.contains("\"cpu_stages\": [\"preprocessing\", \"maps and decision\"]"),
        "{json}"
    );
    eprintln!("{}", sim.table());
}
