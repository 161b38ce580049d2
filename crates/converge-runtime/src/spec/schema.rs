//! JSON Schema validation of fact content, as a gate validator.
//!
//! A key's schema is compiled (and checked against its meta-schema) when the spec is parsed;
//! [`SchemaValidator`] then checks the content of every proposal into that key at the gate,
//! where a mismatch is an ordinary recorded rejection. Schemas are self-contained: external
//! `$ref`s are never fetched, so validation reads nothing but the spec.

use std::sync::Arc;

use converge_core::{Candidate, Validator};
use serde_json::Value;

/// Most schema errors reported for one proposal.
const SCHEMA_ERRORS_SHOWN_MAX: usize = 3;

/// A compiled JSON Schema.
#[derive(Clone)]
pub(crate) struct Schema {
    source: Arc<Value>,
    validator: Arc<jsonschema::Validator>,
}

impl Schema {
    /// Compiles `schema`; `Err` says why it is not a valid JSON Schema.
    pub(crate) fn compile(schema: &Value) -> Result<Schema, String> {
        match jsonschema::validator_for(schema) {
            Ok(validator) => Ok(Schema {
                source: Arc::new(schema.clone()),
                validator: Arc::new(validator),
            }),
            Err(error) => {
                let path = error.instance_path().to_string();
                let place = if path.is_empty() {
                    String::new()
                } else {
                    format!(" at {path}")
                };
                Err(format!("not a valid JSON Schema{place}: {error}"))
            }
        }
    }

    /// The schema as written.
    pub(crate) fn source(&self) -> &Value {
        &self.source
    }

    /// `Err` lists (some of) the ways `content` does not match.
    pub(crate) fn check(&self, content: &Value) -> Result<(), String> {
        let errors: Vec<String> = self
            .validator
            .iter_errors(content)
            .take(SCHEMA_ERRORS_SHOWN_MAX)
            .map(|error| {
                let path = error.instance_path().to_string();
                if path.is_empty() {
                    error.to_string()
                } else {
                    format!("at {path}: {error}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// The gate validator of one key's schema, named `json-schema`.
pub(crate) struct SchemaValidator {
    schema: Schema,
}

impl SchemaValidator {
    pub(crate) fn new(schema: Schema) -> SchemaValidator {
        SchemaValidator { schema }
    }
}

impl Validator for SchemaValidator {
    fn name(&self) -> &str {
        "json-schema"
    }

    fn validate(&self, candidate: &Candidate<'_>) -> Result<(), String> {
        self.schema.check(candidate.content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_check_content_and_bad_schemas_are_refused() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "required": ["severity"],
            "properties": {"severity": {"type": "integer", "minimum": 1, "maximum": 5}}
        }))
        .unwrap();
        assert_eq!(schema.check(&json!({"severity": 3})), Ok(()));
        let error = schema.check(&json!({"severity": 9})).unwrap_err();
        assert!(
            error.starts_with("at /severity: 9 is greater than"),
            "{error}"
        );
        let error = Schema::compile(&json!({"type": "strin"})).err().unwrap();
        assert!(
            error.starts_with("not a valid JSON Schema at /type"),
            "{error}"
        );
        let error = Schema::compile(&json!({"$ref": "https://example.com/s.json"}))
            .err()
            .unwrap();
        assert!(error.contains("not a valid JSON Schema"), "{error}");
    }
}
