//! What the host asks of the device per part, as the latency report shows it: graph
//! launches, host synchronisations and the stages left on the CPU. With the device
//! fusion (UFF) a part is one graph (`DevicePart`: the caller's inputs, preprocessing,
//! the two networks on forked streams, fusion, banks, maps, decision, regions) and one
//! wait, with no CPU stage (RADAR's fusion too, its instruction chosen on the device).
//! An engine whose fusion stays on the CPU replays two graphs, the fusion between them.

use crate::common;

use miad::backend::{Backend, Precision, PIPELINE_STAGES};
use miad::config::ModelConfig;
use miad::engine::{Engine, InspectOptions};
use miad::eval::dataset::list_test;
use miad::eval::latency;
use miad::eval::synth::Category;

use super::engine::{assert_on_the_simulated_device, assert_on_the_simulated_device_but, options};

#[test]
fn the_latency_report_counts_graph_launches_host_syncs_and_cpu_stages() {
    let fx = common::fitted_with(
        common::for_the_emulator(ModelConfig::small()),
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
    // The whole part in one graph.
    assert_eq!(sim.graph_launches_per_part, Some(1.0));
    // One wait; every part asks the same, whatever the run's length.
    assert_eq!(sim.host_syncs_per_part, Some(1.0));
    assert_eq!(again.host_syncs_per_part, Some(1.0));
    assert_eq!(again.graph_launches_per_part, Some(1.0));
    assert_eq!(sim.cpu_stages, Vec::<&str>::new(), "{}", sim.table());
    let json = sim.to_json();
    assert!(
        json.contains("\"graph_launches_per_part\": 1.000000"),
        "{json}"
    );
    assert!(json.contains("\"host_syncs_per_part\": 1.000000"), "{json}");
    assert!(json.contains("\"cpu_stages\": []"), "{json}");
    // The f32 search scans no split exactly: no fast-search figures.
    assert_eq!(sim.exact_scans_per_part, None);
    assert!(json.contains("\"exact_scans_per_part\": null"), "{json}");
    eprintln!("{}", sim.table());
}

/// A RADAR model: its fusion runs on the device too, with the instruction of the part's
/// case chosen there: one graph, one wait, no CPU stage, for complete and incomplete
/// parts alike.
#[test]
fn a_radar_part_is_one_graph_too() {
    let mut cfg = common::small_hd64();
    cfg.name = "small-hd64-radar".into();
    cfg.radar = common::small_radar().radar;
    // Heads of 32: the device attention's size (as the RADAR parity test).
    if let Some(r) = cfg.radar.as_mut() {
        r.heads = 1;
    }
    let fx = common::fitted_with(
        common::for_the_emulator(cfg),
        "sim-activity-radar",
        Category::Disc,
        5,
        2,
        1,
    );
    let parts: Vec<_> = list_test(&fx.category)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    let mut e = Engine::open(
        &fx.model,
        &fx.bank,
        &options(Backend::CudaSim, Precision::F32),
    )
    .unwrap();
    assert_on_the_simulated_device(&e);
    let r = latency::run(&mut e, &parts, 2, 1, None, &mut |_, _| {}).unwrap();
    assert_eq!(r.graph_launches_per_part, Some(1.0), "{}", r.table());
    assert_eq!(r.host_syncs_per_part, Some(1.0), "{}", r.table());
    assert!(r.cpu_stages.is_empty(), "{}", r.table());
    // An incomplete part asks the same of the host.
    let probe = e.backend().device_activity.clone().unwrap();
    let (l0, s0) = probe.read();
    let (rgb, _) = parts[0].views();
    e.inspect(rgb, None, &InspectOptions::default()).unwrap();
    let (l1, s1) = probe.read();
    assert_eq!((l1 - l0, s1 - s0), (1, 1));
}

/// A RADAR model whose fusion the device cannot run (the small preset's heads of 16):
/// two graphs and two waits per part (networks; then banks, maps and decision), the
/// fusion on the CPU between them.
#[test]
fn a_part_whose_fusion_stays_on_the_cpu_is_two_graphs() {
    let fx = common::fitted_with(
        common::for_the_emulator(common::small_radar()),
        "sim-activity-cpu-fusion",
        Category::Disc,
        5,
        2,
        1,
    );
    let parts: Vec<_> = list_test(&fx.category)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    let mut e = Engine::open(
        &fx.model,
        &fx.bank,
        &options(Backend::CudaSim, Precision::F32),
    )
    .unwrap();
    assert_on_the_simulated_device_but(&e, &["fusion"]);
    let r = latency::run(&mut e, &parts, 2, 1, None, &mut |_, _| {}).unwrap();
    assert_eq!(r.graph_launches_per_part, Some(2.0), "{}", r.table());
    assert_eq!(r.host_syncs_per_part, Some(2.0), "{}", r.table());
    assert_eq!(r.cpu_stages, ["fusion"], "{}", r.table());
}
