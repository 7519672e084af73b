//! Criterion micro-benchmarks of config.json handling (spec.rs): parsing with field-path
//! errors and validation, for runc's default spec and for a Kubernetes-sized one (60 mounts,
//! 150 environment variables, a 300-rule seccomp profile), which every `create` pays.
//!
//! cargo bench -p cryo-runtime --bench spec

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cryo_runtime::spec::{parse_json, validate};
use oci_spec::runtime::Spec;
use serde_json::{json, Value};

/// runc's default spec (what `runc spec` and `cryo spec` write) as JSON.
fn default_spec() -> Value {
    serde_json::to_value(Spec::default()).expect("the default spec serializes")
}

/// The default spec grown to what a Kubernetes pod's container carries.
fn large_spec() -> Value {
    let mut v = default_spec();
    let mounts = v["mounts"].as_array_mut().expect("mounts");
    for i in 0..60 {
        mounts.push(json!({
            "destination": format!("/var/lib/kubelet/pods/volume-{i}"),
            "type": "bind",
            "source": format!("/var/lib/kubelet/pods/0123/volumes/kubernetes.io~secret/v{i}"),
            "options": ["rbind", "rprivate", "ro"]
        }));
    }
    let env = v["process"]["env"].as_array_mut().expect("env");
    for i in 0..150 {
        env.push(json!(format!(
            "SERVICE_{i}_PORT=tcp://10.96.{}.{}:8080",
            i / 250,
            i % 250
        )));
    }
    let syscalls: Vec<Value> = (0..300)
        .map(|i| json!({"names": [format!("syscall_{i}")], "action": "SCMP_ACT_ALLOW"}))
        .collect();
    v["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls
    });
    v
}

fn benches(c: &mut Criterion) {
    let path = Path::new("config.json");
    let mut g = c.benchmark_group("spec");
    for (name, spec) in [("default", default_spec()), ("kubernetes", large_spec())] {
        let bytes = serde_json::to_vec_pretty(&spec).expect("serialize");
        // Checked once, outside the timing: the benchmark measures the accepted path.
        let parsed: Spec = parse_json(path, &bytes).expect("parse");
        validate(&parsed, path).expect("valid");
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("parse_validate/{name}"), |b| {
            b.iter(|| {
                let s: Spec = parse_json(path, std::hint::black_box(&bytes)).expect("parse");
                validate(&s, path).expect("valid");
                s
            });
        });
    }
    g.finish();
}

criterion_group!(spec_benches, benches);
criterion_main!(spec_benches);
