//! The purity rule, enforced: `converge-core` never depends (directly or transitively) on a
//! crate that implies I/O, async execution, networking, persistence, model execution,
//! randomness or parallelism.
//!
//! The check asks Cargo for the resolved normal and build dependency tree of the crate, so a
//! forbidden crate pulled in through any path fails the build.

use std::process::Command;

/// The forbidden list, by category.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "async runtime"),
    ("async-std", "async runtime"),
    ("smol", "async runtime"),
    ("futures", "async execution"),
    ("mio", "I/O"),
    ("reqwest", "HTTP client"),
    ("hyper", "HTTP"),
    ("ureq", "HTTP client"),
    ("axum", "HTTP server"),
    ("tonic", "gRPC"),
    ("prost", "protobuf"),
    ("burn", "ML runtime"),
    ("llama-burn", "LLM inference"),
    ("fastembed", "embeddings"),
    ("polars", "dataframes"),
    ("arrow", "columnar data"),
    ("lancedb", "vector database"),
    ("surrealdb", "database"),
    ("postgres", "database"),
    ("tokio-postgres", "database"),
    ("sqlx", "database"),
    ("rusqlite", "database"),
    ("redb", "database"),
    ("sled", "database"),
    ("rand", "randomness"),
    ("rand_core", "randomness"),
    ("getrandom", "randomness"),
    ("fastrand", "randomness"),
    ("rayon", "parallelism"),
    ("crossbeam", "parallelism"),
    ("threadpool", "parallelism"),
];

fn dependency_names() -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "converge-core",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("cargo tree prints UTF-8");
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn core_has_no_forbidden_dependency() {
    let names = dependency_names();
    assert!(
        names.iter().any(|name| name == "converge-core"),
        "the tree lists the crate itself: {names:?}"
    );
    assert!(
        names.iter().any(|name| name == "serde_json"),
        "the tree lists real dependencies: {names:?}"
    );
    let found: Vec<String> = names
        .iter()
        .filter_map(|name| {
            FORBIDDEN
                .iter()
                .find(|(forbidden, _)| name == forbidden)
                .map(|(_, why)| format!("{name} ({why})"))
        })
        .collect();
    assert!(
        found.is_empty(),
        "converge-core must stay pure; forbidden dependencies: {found:?}"
    );
}
