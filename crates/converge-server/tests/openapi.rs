//! The OpenAPI document checked by a third-party validator (openapi-spec-validator, which
//! `scripts/test` installs in a virtual environment and names in `CONVERGE_PYTHON_TOOLS`), as
//! any client generator would read it.

use std::process::Command;

use utoipa::OpenApi;

#[test]
fn the_document_is_valid_openapi() {
    let document = converge_server::openapi::Document::openapi()
        .to_pretty_json()
        .expect("the document serializes");
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, document).unwrap();
    let python = std::env::var("CONVERGE_PYTHON_TOOLS").unwrap_or_else(|_| "python3".to_owned());
    let checked = Command::new(python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("python3 runs (scripts/test installs it and the validator)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success(),
        "the validator refused the document:\n{said}"
    );
    assert!(said.contains("OK"), "{said}");
}
