//! Templates: the ids and contents a rule proposes, written in MiniJinja (Jinja2 syntax).
//!
//! Each rule owns one template environment holding its templates, compiled when the spec is
//! parsed. Rendering is strict (an undefined variable is an error, not an empty string), never
//! escapes, and is bounded by fuel so a template cannot loop for long, and by the output,
//! value and work limits of `render.rs` so it cannot allocate much either. A content template is a
//! JSON value whose strings may be templates; its other values are kept as written. A string
//! that is exactly one `{{ expression }}` keeps the type of the expression's value (a number
//! stays a number, a list a list); any other template renders to a string. This module knows
//! nothing of rules or facts.

use std::sync::Arc;

use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use super::render;
use serde_json::{Map, Value};

/// Longest accepted template, in bytes.
pub const TEMPLATE_BYTES_MAX: usize = 16 * 1024;

/// Instructions one rendering may execute.
pub const TEMPLATE_FUEL: u64 = 100_000;

/// Deepest nesting of template calls.
const TEMPLATE_RECURSION_MAX: usize = 16;

/// A set of named templates.
pub(crate) struct Templates {
    env: Environment<'static>,
}

impl Templates {
    pub(crate) fn new() -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(TEMPLATE_RECURSION_MAX);
        render::bound(&mut env);
        Templates { env }
    }

    /// Compiles `source` as template `name`; `Err` says what is wrong with it.
    pub(crate) fn add(&mut self, name: &str, source: &str) -> Result<(), String> {
        if source.len() > TEMPLATE_BYTES_MAX {
            return Err(format!(
                "the template is {} bytes long; the limit is {TEMPLATE_BYTES_MAX}",
                source.len()
            ));
        }
        self.env
            .add_template_owned(name.to_owned(), source.to_owned())
            .map_err(|error| describe(&error))
    }

    /// Compiles `source` as a lone expression; `Err` says what is wrong with it.
    fn check_expression(&self, source: &str) -> Result<(), String> {
        self.env
            .compile_expression(source)
            .map(drop)
            .map_err(|error| describe(&error))
    }

    /// Evaluates the lone expression `source` with `variables`, keeping the value's type.
    fn evaluate(&self, source: &str, variables: &minijinja::Value) -> Result<Value, String> {
        let value =
            render::evaluate(&self.env, source, variables).map_err(|error| describe(&error))?;
        if value.is_undefined() {
            return Err(format!("`{source}` is undefined"));
        }
        serde_json::to_value(&value).map_err(|error| format!("`{source}`: {error}"))
    }

    /// The variables the templates of `content` use without defining them, as written
    /// (`fact.content.amount`: each name with the attributes read from it), with the path of
    /// the template that uses each; the environment's globals (`range`, …) are not among them.
    pub(crate) fn undeclared(&self, content: &ContentTemplate) -> Vec<(Arc<str>, String)> {
        let mut found = Vec::new();
        self.undeclared_into(content, &mut found);
        let globals: Vec<&str> = self.env.globals().map(|(name, _)| name).collect();
        found.retain(|(_, name)| {
            let root = name.split('.').next().unwrap_or_default();
            !globals.contains(&root)
        });
        found
    }

    fn undeclared_into(&self, content: &ContentTemplate, found: &mut Vec<(Arc<str>, String)>) {
        let mut names = |path: &Arc<str>, set: std::collections::HashSet<String>| {
            let mut set: Vec<String> = set.into_iter().collect();
            set.sort();
            found.extend(set.into_iter().map(|name| (path.clone(), name)));
        };
        match content {
            ContentTemplate::Literal(_) => {}
            ContentTemplate::Text(name) => {
                if let Ok(template) = self.env.get_template(name) {
                    names(name, template.undeclared_variables(true));
                }
            }
            ContentTemplate::Expression { source, path } => {
                if let Ok(expression) = self.env.compile_expression(source) {
                    names(path, expression.undeclared_variables(true));
                }
            }
            ContentTemplate::List(items) => {
                for item in items {
                    self.undeclared_into(item, found);
                }
            }
            ContentTemplate::Object(fields) => {
                for (_, item) in fields {
                    self.undeclared_into(item, found);
                }
            }
        }
    }

    /// Renders template `name` with `variables` (a map, see [`variables`]).
    pub(crate) fn render(
        &self,
        name: &str,
        variables: &minijinja::Value,
    ) -> Result<String, String> {
        self.env
            .get_template(name)
            .and_then(|template| render::render(&self.env, &template, variables))
            .map_err(|error| describe(&error))
    }
}

/// Template variables: each name bound to a JSON value. Converting once and sharing the
/// result (values are reference-counted) keeps a rule over many facts linear.
pub(crate) fn variables(pairs: &[(&str, &minijinja::Value)]) -> minijinja::Value {
    minijinja::Value::from_pairs(pairs.iter().map(|(name, value)| (*name, (*value).clone())))
}

/// A JSON value as a template value.
pub(crate) fn template_value(value: &Value) -> minijinja::Value {
    minijinja::Value::from(Serde(value))
}

/// The expression of a string that is exactly one `{{ expression }}`.
fn lone_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let nested = ["{{", "}}", "{%", "%}", "{#"];
    if nested.iter().any(|marker| inner.contains(marker)) {
        return None;
    }
    Some(inner.trim())
}

/// Whether a string uses template syntax at all; plain strings are kept as written.
pub(crate) fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

fn describe(error: &minijinja::Error) -> String {
    // MiniJinja names the key of an undefined item as Rust prints it (`fact.id[None]` for
    // `fact.id[none]`); the template's own spelling is `none`.
    let detail = error.detail().unwrap_or("").replace("[None]", "[none]");
    let detail = detail.as_str();
    let what = error.kind().to_string();
    let mut message = if detail.is_empty() {
        format!("template {what}")
    } else {
        format!("template {what}: {detail}")
    };
    if let Some(line) = error.line().filter(|&line| line > 1) {
        message.push_str(&format!(" (line {line} of the template)"));
    }
    message
}

/// A JSON value whose strings may be templates.
#[derive(Clone)]
pub(crate) enum ContentTemplate {
    /// Kept as written.
    Literal(Value),
    /// The name of a template in the owner's [`Templates`].
    Text(Arc<str>),
    /// A lone expression, whose value keeps its type; with its path, for messages.
    Expression {
        source: Arc<str>,
        path: Arc<str>,
    },
    List(Vec<ContentTemplate>),
    Object(Vec<(String, ContentTemplate)>),
}

impl ContentTemplate {
    /// Compiles every template string of `value` into `templates`, naming each by its path
    /// under `path`; `Err` names the first bad one.
    pub(crate) fn compile(
        value: &Value,
        path: &str,
        templates: &mut Templates,
    ) -> Result<ContentTemplate, String> {
        match value {
            Value::String(text) if lone_expression(text).is_some() => {
                let source = lone_expression(text).unwrap_or_default();
                templates
                    .check_expression(source)
                    .map_err(|error| format!("{path}: {error}"))?;
                Ok(ContentTemplate::Expression {
                    source: Arc::from(source),
                    path: Arc::from(path),
                })
            }
            Value::String(text) if is_template(text) => {
                templates
                    .add(path, text)
                    .map_err(|error| format!("{path}: {error}"))?;
                Ok(ContentTemplate::Text(Arc::from(path)))
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(index, item)| Self::compile(item, &format!("{path}[{index}]"), templates))
                .collect::<Result<_, _>>()
                .map(ContentTemplate::List),
            Value::Object(map) => map
                .iter()
                .map(|(key, item)| {
                    Self::compile(item, &format!("{path}.{key}"), templates)
                        .map(|item| (key.clone(), item))
                })
                .collect::<Result<_, _>>()
                .map(ContentTemplate::Object),
            other => Ok(ContentTemplate::Literal(other.clone())),
        }
    }

    /// Renders every template, keeping everything else.
    pub(crate) fn render(
        &self,
        templates: &Templates,
        variables: &minijinja::Value,
    ) -> Result<Value, String> {
        match self {
            ContentTemplate::Literal(value) => Ok(value.clone()),
            ContentTemplate::Text(name) => templates
                .render(name, variables)
                .map(Value::String)
                .map_err(|error| format!("{name}: {error}")),
            ContentTemplate::Expression { source, path } => templates
                .evaluate(source, variables)
                .map_err(|error| format!("{path}: {error}")),
            ContentTemplate::List(items) => items
                .iter()
                .map(|item| item.render(templates, variables))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            ContentTemplate::Object(fields) => {
                let mut map = Map::new();
                for (key, item) in fields {
                    map.insert(key.clone(), item.render(templates, variables)?);
                }
                Ok(Value::Object(map))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_templates_render_strings_and_keep_the_rest() {
        let mut templates = Templates::new();
        let content = json!({
            "risk": "risk {{ fact.id }}",
            "level": 3,
            "tags": ["fixed", "{{ fact.content.owner | upper }}"],
            "double": "{{ fact.content.cost * 2 }}",
            "names": " {{ fact.content.names }} ",
        });
        let template = ContentTemplate::compile(&content, "content", &mut templates).unwrap();
        let fact =
            json!({"id": "r1", "content": {"owner": "ops", "cost": 2.5, "names": ["a", "b"]}});
        let fact = template_value(&fact);
        let variables = variables(&[("fact", &fact)]);
        assert_eq!(
            template.render(&templates, &variables).unwrap(),
            json!({
                "risk": "risk r1",
                "level": 3,
                "tags": ["fixed", "OPS"],
                "double": 5.0,
                "names": ["a", "b"],
            })
        );
        let missing = json!("{{ fact.nothing }}");
        let template = ContentTemplate::compile(&missing, "content", &mut templates).unwrap();
        let error = template.render(&templates, &variables).unwrap_err();
        assert_eq!(error, "content: `fact.nothing` is undefined");
    }

    #[test]
    fn bad_templates_undefined_variables_and_runaway_loops_are_errors() {
        let mut templates = Templates::new();
        let error = templates.add("id", "x-{{ fact.id").unwrap_err();
        assert!(error.starts_with("template syntax error"), "{error}");
        templates.add("id", "x-{{ fact.id }}").unwrap();
        let none = variables(&[]);
        let error = templates.render("id", &none).unwrap_err();
        assert!(error.contains("`fact` is undefined"), "{error}");
        templates
            .add(
                "loop",
                "{% for i in range(10000) %}{% for j in range(10000) %}.{% endfor %}{% endfor %}",
            )
            .unwrap();
        let error = templates.render("loop", &none).unwrap_err();
        assert!(error.contains("fuel"), "{error}");
    }
}
