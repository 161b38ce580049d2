//! Static checks of CEL expressions (`when`, invariant `check`) against what the spec
//! declares, before anything runs.
//!
//! The parsed expression is walked once with a small, approximate type for each node: the
//! `facts` map, a list of facts, one fact, a fact's `content` described by its key's JSON
//! Schema, or a plain CEL type. What is certain to fail is refused: a key that is not
//! declared, a key the agent does not read, a field a schema with `additionalProperties:
//! false` does not have, a function CEL lacks, a variable that is not bound, a condition that
//! cannot give a boolean. Wherever the type cannot be known statically (content without a
//! schema, values from `dyn`, a schema using `allOf`, …) the walk accepts: it never refuses an
//! expression that could hold. It does not evaluate anything; evaluation errors that depend on
//! the facts (a missing field of content without a schema) remain the agent's failures.

use std::collections::BTreeMap;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use serde_json::Value;

use super::suggest::{push_suggestion, quoted};

/// Functions called as `f(x)` that conditions and invariants have.
const GLOBAL_FUNCTIONS: [&str; 13] = [
    "size", "int", "uint", "double", "string", "bool", "bytes", "dyn", "type", "matches", "sum",
    "min", "max",
];

/// Functions called as `x.f(…)` (the macros among them are expanded by the parser when
/// written with the right arguments).
const METHODS: [&str; 16] = [
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "size",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "hasValue",
    "value",
    "orValue",
    "or",
    "optMap",
    "optFlatMap",
];

/// Functions of the `optional` namespace (`optional.of(x)`).
const OPTIONAL_FUNCTIONS: [&str; 3] = ["of", "none", "ofNonZeroValue"];

/// Type names CEL binds as identifiers (`type(x) == int`).
const TYPE_NAMES: [&str; 10] = [
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// The fields of a fact as conditions see it.
const FACT_FIELDS: [&str; 3] = ["id", "content", "confidence"];

/// Where an expression is and what it may see.
pub(crate) struct Scope<'s> {
    /// Every key the spec knows (well-known and declared), with its schema if it has one.
    pub(crate) known: &'s BTreeMap<String, Option<Value>>,
    /// The keys `facts` holds here: the agent's `reads`, or every known key (an invariant).
    pub(crate) visible: Vec<String>,
    /// With `for_each`, the key of `fact`.
    pub(crate) fact_key: Option<String>,
    /// Whether the expression is an agent's (and its `reads` is what it sees).
    pub(crate) agent: bool,
}

/// One problem found, at a character offset of the expression when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) offset: Option<usize>,
    pub(crate) message: String,
}

/// What a node is known to be.
#[derive(Clone, Debug)]
enum Ty<'s> {
    /// Anything: not known statically.
    Unknown,
    Bool,
    /// A CEL `int`.
    Int,
    /// A CEL `double`.
    Double,
    /// A number whose kind is not known (`int`, `uint` or `double`).
    Number,
    Text,
    Null,
    /// A list of items of this type.
    List(Box<Ty<'s>>),
    /// A map literal or other map.
    Map,
    /// The `facts` variable.
    Facts,
    /// One fact of a key (`{id, content, confidence}`).
    Fact {
        key: &'s str,
    },
    /// Content described by a schema (of the named key): an object whose fields are known.
    Content {
        key: &'s str,
        schema: &'s Value,
    },
}

impl Ty<'_> {
    /// In words, for "gives …" messages; `None` when it may be a boolean.
    fn non_boolean(&self) -> Option<&'static str> {
        match self {
            Ty::Unknown | Ty::Bool => None,
            Ty::Int | Ty::Double | Ty::Number => Some("a number"),
            Ty::Text => Some("a string"),
            Ty::Null => Some("null"),
            Ty::List(_) => Some("a list"),
            Ty::Map | Ty::Facts => Some("a map"),
            Ty::Fact { .. } => Some("a fact"),
            Ty::Content { .. } => Some("an object"),
        }
    }
}

/// Checks `root` in `scope`: every problem found, in the order met.
///
/// With `boolean`, the whole expression must be able to give a boolean (a condition).
pub(crate) fn check(
    root: &IdedExpr,
    offsets: &dyn Fn(u64) -> Option<usize>,
    scope: &Scope<'_>,
    boolean: bool,
) -> Vec<Finding> {
    let mut walk = Walk {
        scope,
        offsets,
        bound: Vec::new(),
        findings: Vec::new(),
    };
    let ty = walk.ty(root, 0);
    if let Some(what) = ty.non_boolean().filter(|_| boolean) {
        let message = format!(
            "it must give true or false, but gives {what}; compare it (`… > 0`, \
             `… == \"x\"`) or test it (`has(…)`, `.exists(…)`)"
        );
        // The whole expression is at fault: it is located at its start.
        walk.findings.push(Finding {
            offset: Some(0),
            message,
        });
    }
    walk.findings
}

/// Deepest nesting walked; the compiler already refuses deeper trees.
const WALK_DEPTH_MAX: usize = 256;

struct Walk<'s, 'o> {
    scope: &'o Scope<'s>,
    offsets: &'o dyn Fn(u64) -> Option<usize>,
    /// Comprehension variables in scope, innermost last.
    bound: Vec<(String, Ty<'s>)>,
    findings: Vec<Finding>,
}

impl<'s> Walk<'s, '_> {
    fn found(&mut self, node: &IdedExpr, message: String) {
        let offset = (self.offsets)(node.id);
        self.findings.push(Finding { offset, message });
    }

    fn ty(&mut self, node: &IdedExpr, depth: usize) -> Ty<'s> {
        if depth > WALK_DEPTH_MAX {
            return Ty::Unknown;
        }
        match &node.expr {
            Expr::Unspecified | Expr::Struct(_) => Ty::Unknown,
            Expr::Literal(literal) => literal_ty(literal),
            Expr::Ident(name) => self.ident(node, name),
            Expr::Select(select) => {
                let operand = self.ty(&select.operand, depth + 1);
                let field = self.field(node, operand, &select.field);
                if select.test { Ty::Bool } else { field }
            }
            Expr::List(list) => {
                let items: Vec<Ty<'s>> = list
                    .elements
                    .iter()
                    .map(|e| self.ty(e, depth + 1))
                    .collect();
                Ty::List(Box::new(common(items)))
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(pair) = &entry.expr {
                        self.ty(&pair.key, depth + 1);
                        self.ty(&pair.value, depth + 1);
                    }
                }
                Ty::Map
            }
            Expr::Comprehension(comprehension) => {
                let range = self.ty(&comprehension.iter_range, depth + 1);
                let item = match range {
                    Ty::List(item) => *item,
                    Ty::Facts | Ty::Content { .. } => Ty::Text,
                    _ => Ty::Unknown,
                };
                let accu = self.ty(&comprehension.accu_init, depth + 1);
                let mark = self.bound.len();
                self.bound.push((comprehension.iter_var.clone(), item));
                if let Some(second) = &comprehension.iter_var2 {
                    self.bound.push((second.clone(), Ty::Unknown));
                }
                self.bound.push((comprehension.accu_var.clone(), accu));
                self.ty(&comprehension.loop_cond, depth + 1);
                self.ty(&comprehension.loop_step, depth + 1);
                let result = self.ty(&comprehension.result, depth + 1);
                self.bound.truncate(mark);
                result
            }
            Expr::Call(call) => self.call(node, call, depth),
        }
    }

    fn ident(&mut self, node: &IdedExpr, name: &str) -> Ty<'s> {
        if let Some((_, ty)) = self.bound.iter().rev().find(|(bound, _)| bound == name) {
            return ty.clone();
        }
        match name {
            "facts" => Ty::Facts,
            "fact" => match &self.scope.fact_key {
                Some(key) => match self.scope.known.get_key_value(key) {
                    Some((key, _)) => Ty::Fact { key },
                    None => Ty::Unknown,
                },
                None => {
                    let message = "`fact` is not defined here: only a rule with `for_each` \
                         has it; use `facts.KEY` (the facts of a key it reads), or add `for_each`"
                        .to_owned();
                    self.found(node, message);
                    Ty::Unknown
                }
            },
            _ if TYPE_NAMES.contains(&name) => Ty::Unknown,
            _ => {
                let mut variables = vec!["facts"];
                if self.scope.fact_key.is_some() {
                    variables.push("fact");
                }
                let mut message = format!(
                    "`{name}` is not defined; the variables here are {}",
                    quoted(&variables)
                );
                push_suggestion(&mut message, name, variables.iter().copied());
                self.found(node, message);
                Ty::Unknown
            }
        }
    }

    /// The type of `operand.field`, refusing fields certain not to exist.
    fn field(&mut self, node: &IdedExpr, operand: Ty<'s>, field: &str) -> Ty<'s> {
        match operand {
            Ty::Facts => self.facts_key(node, field),
            Ty::Fact { key } => match field {
                "id" => Ty::Text,
                "confidence" => Ty::Double,
                "content" => match self.scope.known.get(key).and_then(Option::as_ref) {
                    Some(schema) => settle(key, schema),
                    None => Ty::Unknown,
                },
                _ => {
                    let mut message = format!(
                        "a fact has no field `{field}`; its fields are {}",
                        quoted(&FACT_FIELDS)
                    );
                    push_suggestion(&mut message, field, FACT_FIELDS.iter().copied());
                    self.found(node, message);
                    Ty::Unknown
                }
            },
            Ty::Content { key, schema } => self.content_field(node, key, schema, field),
            _ => Ty::Unknown,
        }
    }

    /// `facts.KEY`: the key must exist, and an agent must read it.
    fn facts_key(&mut self, node: &IdedExpr, name: &str) -> Ty<'s> {
        let Some((key, _)) = self.scope.known.get_key_value(name) else {
            let visible: Vec<&str> = self.scope.visible.iter().map(String::as_str).collect();
            let mut message = format!(
                "`facts.{name}`: there is no key `{name}`; declare it under `keys:`, or use one of \
                 the keys here: {}",
                quoted(&visible)
            );
            push_suggestion(
                &mut message,
                name,
                self.scope.known.keys().map(String::as_str),
            );
            self.found(node, message);
            return Ty::Unknown;
        };
        if !self.scope.visible.iter().any(|visible| visible == name) {
            let message = if self.scope.agent {
                format!(
                    "`facts.{name}`: `{name}` is not in the agent's `reads`, so `facts` does not \
                     hold it; add `{name}` to `reads`"
                )
            } else {
                format!("`facts.{name}` is not available here")
            };
            self.found(node, message);
        }
        Ty::List(Box::new(Ty::Fact { key }))
    }

    fn content_field(
        &mut self,
        node: &IdedExpr,
        key: &'s str,
        schema: &'s Value,
        field: &str,
    ) -> Ty<'s> {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(sub) = properties.and_then(|properties| properties.get(field)) {
            return settle(key, sub);
        }
        let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
        if !closed || is_composite(schema) {
            return Ty::Unknown;
        }
        let names: Vec<&str> = properties
            .map(|properties| properties.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut message = if names.is_empty() {
            format!(
                "the content of key `{key}` has no field `{field}`: its schema allows no fields"
            )
        } else {
            format!(
                "the content of key `{key}` has no field `{field}`: its schema \
                 (`additionalProperties: false`) allows only {}",
                quoted(&names)
            )
        };
        push_suggestion(&mut message, field, names.iter().copied());
        self.found(node, message);
        Ty::Unknown
    }

    fn call(&mut self, node: &IdedExpr, call: &cel::common::ast::CallExpr, depth: usize) -> Ty<'s> {
        let name = call.func_name.as_str();
        // `optional.of(x)`: a namespace, not a value.
        let namespace = call
            .target
            .as_deref()
            .is_some_and(|target| matches!(&target.expr, Expr::Ident(n) if n == "optional"));
        let target = match (&call.target, namespace) {
            (Some(target), false) => Some(self.ty(target, depth + 1)),
            _ => None,
        };
        let args: Vec<Ty<'s>> = call
            .args
            .iter()
            .map(|arg| self.ty(arg, depth + 1))
            .collect();
        if let Some(mistake) = operand_mistake(name, &args) {
            self.found(node, mistake);
        }
        if let Some(ty) = operator(name, &args) {
            return ty;
        }
        if name == "_[_]" || name == "_[?_]" {
            return self.index(node, call, &args);
        }
        let known = match (namespace, &target) {
            (true, _) => OPTIONAL_FUNCTIONS.contains(&name),
            (false, Some(_)) => METHODS.contains(&name),
            (false, None) => GLOBAL_FUNCTIONS.contains(&name),
        };
        if !known {
            self.unknown_function(node, name, namespace, target.is_some());
            return Ty::Unknown;
        }
        function_ty(name)
    }

    fn index(
        &mut self,
        node: &IdedExpr,
        call: &cel::common::ast::CallExpr,
        args: &[Ty<'s>],
    ) -> Ty<'s> {
        let literal = match call.args.get(1).map(|arg| &arg.expr) {
            Some(Expr::Literal(LiteralValue::String(text))) => Some(text.inner().to_owned()),
            _ => None,
        };
        match (args.first(), literal) {
            (Some(Ty::List(item)), _) => (**item).clone(),
            (Some(operand @ (Ty::Facts | Ty::Content { .. } | Ty::Fact { .. })), Some(field)) => {
                self.field(node, operand.clone(), &field)
            }
            _ => Ty::Unknown,
        }
    }

    fn unknown_function(&mut self, node: &IdedExpr, name: &str, namespace: bool, method: bool) {
        let mut message = if namespace {
            format!(
                "unknown function `optional.{name}`; the `optional` functions are {}",
                quoted(&OPTIONAL_FUNCTIONS)
            )
        } else if method {
            format!(
                "unknown method `.{name}(…)`; the methods are {}",
                quoted(&METHODS)
            )
        } else {
            format!(
                "unknown function `{name}`; the functions are {} (and the methods {})",
                quoted(&GLOBAL_FUNCTIONS),
                quoted(&METHODS)
            )
        };
        let candidates: &[&str] = match (namespace, method) {
            (true, _) => &OPTIONAL_FUNCTIONS,
            (false, true) => &METHODS,
            (false, false) => &GLOBAL_FUNCTIONS,
        };
        push_suggestion(&mut message, name, candidates.iter().copied());
        self.found(node, message);
    }
}

/// The type of an operator's result, or `None` if `name` is not an operator.
fn operator<'s>(name: &str, args: &[Ty<'s>]) -> Option<Ty<'s>> {
    let ty = match name {
        "_&&_"
        | "_||_"
        | "!_"
        | "_==_"
        | "_!=_"
        | "_<_"
        | "_<=_"
        | "_>_"
        | "_>=_"
        | "@in"
        | "@not_strictly_false" => Ty::Bool,
        "-_" => args.first().cloned().unwrap_or(Ty::Number),
        "_-_" | "_*_" | "_/_" | "_%_" => arithmetic(args),
        "_+_" => match args.first() {
            Some(Ty::Text) => Ty::Text,
            Some(Ty::List(item)) => Ty::List(item.clone()),
            Some(Ty::Int | Ty::Double | Ty::Number) => arithmetic(args),
            _ => Ty::Unknown,
        },
        "_?_:_" => match (args.get(1), args.get(2)) {
            (Some(Ty::Bool), _) | (_, Some(Ty::Bool)) => Ty::Bool,
            (Some(yes), Some(no)) => common(vec![yes.clone(), no.clone()]),
            _ => Ty::Unknown,
        },
        _ => return None,
    };
    Some(ty)
}

/// The type all of `items` have, if they have the same kind of type; else unknown (a list
/// literal may mix kinds: `[1, "a"]`).
fn common(items: Vec<Ty<'_>>) -> Ty<'_> {
    let mut items = items.into_iter();
    let Some(first) = items.next() else {
        return Ty::Unknown;
    };
    let kind = std::mem::discriminant(&first);
    match items.all(|item| std::mem::discriminant(&item) == kind) {
        true => first,
        false => Ty::Unknown,
    }
}

/// The result of arithmetic on two numbers: an `int` of two `int`s, a `double` of two
/// `double`s.
fn arithmetic<'s>(args: &[Ty<'s>]) -> Ty<'s> {
    match (args.first(), args.get(1)) {
        (Some(Ty::Int), Some(Ty::Int)) => Ty::Int,
        (Some(Ty::Double), Some(Ty::Double)) => Ty::Double,
        _ => Ty::Number,
    }
}

/// Whether the type is a number.
fn is_number(ty: &Ty<'_>) -> bool {
    matches!(ty, Ty::Int | Ty::Double | Ty::Number)
}

/// What is certainly wrong with applying operator `name` to `args`, if anything.
fn operand_mistake(name: &str, args: &[Ty<'_>]) -> Option<String> {
    let (left, right) = (args.first()?, args.get(1)?);
    let mixed = matches!((left, right), (Ty::Int, Ty::Double) | (Ty::Double, Ty::Int));
    let number_and_text = (is_number(left) && matches!(right, Ty::Text))
        || (matches!(left, Ty::Text) && is_number(right));
    match name {
        "_+_" | "_-_" | "_*_" | "_/_" | "_%_" if mixed => Some(
            "CEL does not mix integers and decimals in arithmetic; convert one, e.g. \
             `double(x) * 0.5` or `x * 2`"
                .to_owned(),
        ),
        "_<_" | "_<=_" | "_>_" | "_>=_" if number_and_text => Some(
            "a number cannot be compared with a string; compare it with a number \
             (`… > 5`, not `… > \"5\"`)"
                .to_owned(),
        ),
        "_==_" | "_!=_" if number_and_text => Some(
            "a number never equals a string, so this is always the same; compare it with a \
             value of its type (`… == 5`, not `… == \"5\"`)"
                .to_owned(),
        ),
        _ => None,
    }
}

/// The result of a known function.
fn function_ty(name: &str) -> Ty<'static> {
    match name {
        "size" | "int" => Ty::Int,
        "double" => Ty::Double,
        "uint" | "sum" | "min" | "max" => Ty::Number,
        "string" => Ty::Text,
        "contains" | "startsWith" | "endsWith" | "matches" | "hasValue" | "bool" => Ty::Bool,
        _ => Ty::Unknown,
    }
}

fn literal_ty(literal: &LiteralValue) -> Ty<'static> {
    match literal {
        LiteralValue::Boolean(_) => Ty::Bool,
        LiteralValue::Int(_) => Ty::Int,
        LiteralValue::Double(_) => Ty::Double,
        LiteralValue::UInt(_) => Ty::Number,
        LiteralValue::String(_) => Ty::Text,
        LiteralValue::Null => Ty::Null,
        LiteralValue::Bytes(_) => Ty::Unknown,
    }
}

/// What a value described by `schema` is, as far as its `type` says.
fn settle<'s>(key: &'s str, schema: &'s Value) -> Ty<'s> {
    if is_composite(schema) {
        return Ty::Unknown;
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("boolean") => Ty::Bool,
        Some("integer") => Ty::Int,
        Some("number") => Ty::Number,
        Some("string") => Ty::Text,
        Some("null") => Ty::Null,
        Some("array") => match schema.get("items") {
            Some(items) if items.is_object() => Ty::List(Box::new(settle(key, items))),
            _ => Ty::List(Box::new(Ty::Unknown)),
        },
        Some("object") => Ty::Content { key, schema },
        _ if schema.get("properties").is_some() => Ty::Content { key, schema },
        _ => Ty::Unknown,
    }
}

/// Whether the schema combines or refers to others, so its fields cannot be read off it.
fn is_composite(schema: &Value) -> bool {
    [
        "allOf",
        "anyOf",
        "oneOf",
        "$ref",
        "if",
        "patternProperties",
        "not",
        "dependentSchemas",
    ]
    .iter()
    .any(|keyword| schema.get(keyword).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn findings(source: &str, reads: &[&str], fact_key: Option<&str>) -> Vec<String> {
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {"amount": {"type": "integer"}, "supplier": {"type": "string"},
                           "urgent": {"type": "boolean"}}
        });
        let open = json!({"type": "object"});
        let mut known = BTreeMap::new();
        known.insert("payouts".to_owned(), Some(schema));
        known.insert("notes".to_owned(), Some(open));
        known.insert("signals".to_owned(), None);
        let scope = Scope {
            known: &known,
            visible: reads.iter().map(|read| (*read).to_owned()).collect(),
            fact_key: fact_key.map(str::to_owned),
            agent: true,
        };
        let ast = cel::Env::stdlib().parser().parse(source).unwrap();
        check(&ast, &|_| None, &scope, true)
            .into_iter()
            .map(|f| f.message)
            .collect()
    }

    fn check_expect(source: &str, expect: &[&str]) {
        let found = findings(source, &["payouts", "signals"], Some("payouts"));
        // No problem, or exactly one that says every word expected.
        assert_eq!(
            found.len(),
            usize::from(!expect.is_empty()),
            "{source}: {found:?}"
        );
        for words in expect {
            assert!(found[0].contains(words), "{source}: {found:?}");
        }
    }

    #[test]
    fn expressions_that_could_hold_pass() {
        for source in [
            "fact.content.amount > 10 && fact.content.urgent",
            "sum(facts.payouts.map(p, p.content.amount)) <= 5000",
            "facts.payouts.all(p, p.content.supplier.startsWith('a'))",
            "has(fact.content.amount) ? fact.content.amount > 1 : false",
            "facts.signals.exists(s, s.content.anything.goes == 1)",
            "size(facts.payouts) > 0 && fact.id in ['a', 'b']",
            "double(fact.content.amount) * 0.5 > 1.0 && fact.content.amount * 2 > 1",
            "fact.confidence >= 0.6 && fact.content.amount > 1.5 && -fact.content.amount < 0",
            "[1, 'a'].exists(x, x == 'a') && (fact.id == 'x' ? 1 : 'one') == 'one'",
            "fact.content['amount'] == 1 && type(fact.id) == string",
            "optional.of(1).hasValue() && facts.payouts.filter(p, p.confidence > 0.5).size() > 0",
            "facts.payouts.map(p, p.content).exists(c, c.amount == 1)",
            "true",
        ] {
            check_expect(source, &[]);
        }
    }

    #[test]
    fn mistakes_are_found_with_suggestions() {
        check_expect(
            "fact.content.amout > 10",
            &["no field `amout`", "did you mean `amount`?"],
        );
        check_expect(
            "facts.payout.size() > 0",
            &["no key `payout`", "did you mean `payouts`?"],
        );
        check_expect("total(facts.payouts) > 1", &["unknown function `total`"]);
        check_expect(
            "fact.content.supplier.trim() == ''",
            &["unknown method `.trim(…)`"],
        );
        check_expect("size(facts.payouts)", &["gives a number"]);
        check_expect("'yes'", &["gives a string"]);
        check_expect("fact.content.amount + 1", &["gives a number"]);
        check_expect(
            "fakt.id == 'x'",
            &["`fakt` is not defined", "did you mean `fact`?"],
        );
        check_expect("fact.idd == 'x'", &["no field `idd`", "did you mean `id`?"]);
        check_expect(
            "fact.content.amount * 0.5 > 1.0",
            &["does not mix integers and decimals"],
        );
        check_expect(
            "fact.content.amount > '5'",
            &["cannot be compared with a string"],
        );
        check_expect("fact.content.supplier == 3", &["never equals a string"]);
        check_expect(
            "facts.payouts.all(p, p.content.amout > 0)",
            &["no field `amout`"],
        );
    }

    /// The operand mistakes refused statically are the ones evaluation fails on.
    #[test]
    fn refused_operands_fail_when_evaluated() {
        use crate::spec::cost::EXPRESSION_COST_DEFAULT;
        use crate::spec::expr::{Bindings, Cel, Expression};
        let cel = Cel::new(EXPRESSION_COST_DEFAULT);
        let bindings = Bindings::new(&cel, &[]).unwrap();
        for source in ["2 * 0.5 > 0.1", "2.0 + 1 > 0.0", "2 > '5'", "'5' <= 2"] {
            let expression = Expression::compile(&cel, source).unwrap();
            assert!(expression.holds(&bindings, &[]).is_err(), "{source}");
        }
        // Comparing an int with a double is fine.
        let expression = Expression::compile(&cel, "2 > 1.5").unwrap();
        assert_eq!(expression.holds(&bindings, &[]), Ok(true));
    }

    #[test]
    fn keys_outside_reads_and_fact_without_for_each_are_refused() {
        let found = findings("size(facts.notes) > 0", &["payouts"], None);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("`notes` is not in the agent's `reads`"),
            "{found:?}"
        );
        let found = findings("fact.id == 'x'", &["payouts"], None);
        assert!(
            found[0].contains("only a rule with `for_each`"),
            "{found:?}"
        );
    }
}
