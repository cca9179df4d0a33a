//! The latency report (`miad bench`) on a small model: every JSON field is there, the
//! percentiles are ordered, and the timed run allocates nothing (counted).

use miad::engine::{Engine, EngineOptions};
use miad::eval::dataset::list_test;
use miad::eval::latency::run;
use miad::eval::synth::Category;
use miad::util::alloc_counter::total_counts;

use crate::common;

#[test]
fn latency_report_has_every_field_and_no_allocation() {
    if !common::alone_in_process!(latency_report_has_every_field_and_no_allocation) {
        return;
    }
    let f = common::fitted("latency", Category::Block, 7, 4, 1);
    let mut e = Engine::open(&f.model, &f.bank, &EngineOptions::default()).unwrap();
    let parts: Vec<_> = list_test(&f.category)
        .unwrap()
        .iter()
        .map(|p| p.load().unwrap())
        .collect();
    let count = || total_counts().0;
    let r = run(&mut e, &parts, 40, 3, Some(&count), &mut |_, _| {}).unwrap();
    assert_eq!(r.allocations, Some(0), "allocations during the timed run");
    assert_eq!(r.totals_ms.len(), 40);
    let names: Vec<&str> = r.stages.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        ["preprocess", "rgb", "point", "fusion", "score", "total"]
    );
    for s in &r.stages {
        assert!(s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.p999 && s.p999 <= s.max);
        assert!(s.max_over_p50 >= 1.0, "{s:?}");
    }
    let json = r.to_json();
    for field in [
        "\"model\"",
        "\"backend\"",
        "\"threads\"",
        "\"parts\": 40",
        "\"warmup\": 3",
        "\"allocations\": 0",
        "\"rgb_gflops\"",
        "\"peak_gflops\"",
        "\"rgb_fraction_of_peak\"",
        "\"p50_ms\"",
        "\"p90_ms\"",
        "\"p99_ms\"",
        "\"p99_9_ms\"",
        "\"max_ms\"",
        "\"max_over_p50\"",
        "\"histogram\"",
        "\"counts\"",
        "\"totals_ms\"",
    ] {
        assert!(json.contains(field), "missing {field} in\n{json}");
    }
    let (_, _, counts) = r.histogram(20);
    assert_eq!(counts.iter().sum::<usize>(), 40);
    let png = r.plot().to_png().unwrap();
    assert_eq!(&png[1..4], b"PNG");
}
