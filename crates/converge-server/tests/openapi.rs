//! The OpenAPI document checked by a third-party validator (openapi-spec-validator, which
//! `scripts/test` installs in a virtual environment and names in `CONVERGE_PYTHON_TOOLS`), as
//! any client generator would read it; and checked for completeness: typed answers, an
//! example per operation that its own schema accepts, and an error code enum that is exactly
//! the codes the server's source sends.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use utoipa::OpenApi;

fn document() -> Value {
    serde_json::to_value(converge_server::openapi::Document::openapi())
        .expect("the document serializes")
}

/// Runs `script` with the tools' Python on the document; what it printed.
fn python_on_document(args: &[&str]) -> String {
    let document = converge_server::openapi::Document::openapi()
        .to_pretty_json()
        .expect("the document serializes");
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, document).unwrap();
    let python = std::env::var("CONVERGE_PYTHON_TOOLS").unwrap_or_else(|_| "python3".to_owned());
    let checked = Command::new(python)
        .args(args)
        .arg(&path)
        .output()
        .expect("python3 runs (scripts/test installs it and the tools)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(checked.status.success(), "{said}");
    said
}

#[test]
fn the_document_is_valid_openapi() {
    let said = python_on_document(&["-m", "openapi_spec_validator"]);
    assert!(said.contains("OK"), "{said}");
}

/// Every example in the document, checked against the schema beside it with the OpenAPI 3.1
/// schema validator.
const CHECK_EXAMPLES: &str = r#"
import json, sys
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
document = json.load(open(sys.argv[1]))
resource = Resource.from_contents(document, default_specification=DRAFT202012)
registry = Registry().with_resource("urn:doc", resource)
checked = 0
for path, item in document["paths"].items():
    for method, operation in item.items():
        bodies = [operation.get("requestBody", {})] + list(operation["responses"].values())
        for body in bodies:
            for media, content in body.get("content", {}).items():
                if "example" not in content or media == "text/event-stream":
                    continue
                schema = dict(content["schema"])
                if "$ref" in schema:
                    schema = {"$ref": "urn:doc" + schema["$ref"]}
                OAS31Validator(schema, registry=registry).validate(content["example"])
                checked += 1
print("examples checked:", checked)
"#;

#[test]
fn every_example_matches_its_schema() {
    let said = python_on_document(&["-c", CHECK_EXAMPLES]);
    let checked: usize = said
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    assert!(checked >= 18, "{said}");
}

/// Each operation of the document, by `METHOD path`.
fn operations(document: &Value) -> Vec<(String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            found.push((format!("{} {path}", method.to_uppercase()), operation));
        }
    }
    found
}

#[test]
fn every_operation_has_typed_answers_an_example_and_the_error_body() {
    let document = document();
    let found = operations(&document);
    assert_eq!(found.len(), 18, "every /v1 operation is in the document");
    for (name, operation) in found {
        for (status, response) in operation["responses"].as_object().unwrap() {
            let content = response["content"].as_object();
            let content = content.unwrap_or_else(|| panic!("{name} {status} has no body"));
            for (media, body) in content {
                let schema = &body["schema"];
                if status.starts_with('2') {
                    assert_ne!(
                        schema,
                        &serde_json::json!({"type": "object"}),
                        "{name} {status} {media} is a bare object"
                    );
                    assert!(
                        body.get("example").is_some(),
                        "{name} {status} {media} has no example"
                    );
                } else {
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/ErrorBody",
                        "{name} {status}"
                    );
                }
            }
        }
        for status in ["400", "401", "413", "500"] {
            assert!(
                operation["responses"].get(status).is_some(),
                "{name} does not document {status}"
            );
        }
    }
}

#[test]
fn submit_takes_yaml_and_json_and_events_stream() {
    let document = document();
    let submit = &document["paths"]["/v1/runs"]["post"]["requestBody"]["content"];
    assert!(submit.get("application/yaml").is_some(), "{submit}");
    assert!(submit.get("application/json").is_some(), "{submit}");
    let events = &document["paths"]["/v1/runs/{run}/events"]["get"]["responses"]["200"]["content"];
    assert!(events.get("text/event-stream").is_some(), "{events}");
    assert!(events.get("application/json").is_some(), "{events}");
    assert_eq!(document["security"][0]["bearer"], serde_json::json!([]));
    assert!(document["servers"][0]["url"].is_string());
}

/// The error codes named in the server's source, as sent: every `ErrorCode::Name` written
/// outside the type's own definition.
fn codes_in_source() -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    for path in rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")) {
        let mut text = std::fs::read_to_string(&path).unwrap();
        // The type's definition and `as_str` name every variant; they send none.
        if let (Some(start), Some(end)) = (
            text.find("pub(crate) enum ErrorCode"),
            text.find("impl ApiError {"),
        ) {
            text.replace_range(start..end, "");
        }
        for piece in text.split("ErrorCode::").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            codes.insert(snake_case(&name));
        }
    }
    codes
}

/// Every `.rs` file under `dir`, however deep.
fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

fn snake_case(name: &str) -> String {
    let mut snake = String::new();
    for c in name.chars() {
        if c.is_ascii_uppercase() && !snake.is_empty() {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    snake
}

#[test]
fn the_error_code_enum_is_exactly_the_codes_sent() {
    let document = document();
    let listed: BTreeSet<String> = document["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode is an enum")
        .iter()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect();
    let sent = codes_in_source();
    assert!(sent.len() >= 15, "{sent:?}");
    assert_eq!(listed, sent, "the document's codes against the source's");
    let code = &document["components"]["schemas"]["ErrorDetail"]["properties"]["code"];
    assert_eq!(code["$ref"], "#/components/schemas/ErrorCode", "{code}");
}
