//! The context as JSON, as rule conditions, templates and command agents see it.
//!
//! One function builds the view so every kind of agent sees the same shape in the same
//! order: keys sorted by name, each holding its current facts in order of first promotion
//! (`Context::get`), each fact as `{"id", "content", "confidence"}`. No hash-map order
//! reaches it. It reads only the keys it is given, which is what keeps an agent honest about
//! its dependencies.

use std::collections::BTreeMap;

use converge_core::{Context, ContextKey, Fact};
use serde_json::{Map, Value, json};

/// The current facts of `keys` as a JSON object: key name to a list of
/// `{"id", "content", "confidence"}`, keys sorted by name, facts in order of first promotion.
/// Every key given is present, holding `[]` when it has no fact.
///
/// ```
/// use converge_core::{Context, ContextKey};
/// use converge_runtime::spec::facts_view;
///
/// let view = facts_view(&Context::new(), [ContextKey::Signals, ContextKey::Seeds]);
/// assert_eq!(view.to_string(), r#"{"seeds":[],"signals":[]}"#);
/// ```
pub fn facts_view(ctx: &Context, keys: impl IntoIterator<Item = ContextKey>) -> Value {
    let mut view = Map::new();
    for (name, key) in by_name(keys) {
        let facts = ctx.get(key).map(fact_json).collect();
        view.insert(name, Value::Array(facts));
    }
    Value::Object(view)
}

/// The keys in the view's order: sorted by name.
fn by_name(keys: impl IntoIterator<Item = ContextKey>) -> BTreeMap<String, ContextKey> {
    keys.into_iter()
        .map(|key| (key.name().to_owned(), key))
        .collect()
}

/// One fact as the view shows it.
pub(crate) fn fact_json(fact: &Fact) -> Value {
    json!({
        "id": fact.id().as_str(),
        "content": fact.content(),
        "confidence": fact.confidence().value(),
    })
}

/// Every current fact of `keys`, in the view's order (keys by name, facts in order of first
/// promotion): what an agent that read those keys saw, for its proposals' derivations.
pub(crate) fn facts_read(
    ctx: &Context,
    keys: impl IntoIterator<Item = ContextKey>,
) -> Vec<(ContextKey, String)> {
    by_name(keys)
        .into_values()
        .flat_map(|key| {
            ctx.get(key)
                .map(move |fact| (key, fact.id().as_str().to_owned()))
        })
        .collect()
}
