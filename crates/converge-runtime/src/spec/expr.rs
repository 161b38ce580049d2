//! CEL expressions: rule conditions (`when`) and invariants (`check`).
//!
//! Expressions are compiled once, when the spec is parsed, and evaluated against the context
//! as JSON (see [`super::facts_view`]). Every expression is bounded: its text by
//! [`EXPRESSION_BYTES_MAX`], its syntax tree by [`EXPRESSION_DEPTH_MAX`], and each evaluation
//! by its cost limit (see `cost.rs`), which ends it with [`ExpressionError::TooCostly`]
//! instead of letting nested comprehensions run for hours. The CEL crate's
//! parser and evaluator recurse deeply (tens of kilobytes of stack per level in debug
//! builds), so both run with a bounded stack of their own (the caller's when it has that much
//! left, else a fresh segment), and a panic inside them becomes an error. This module does not decide what a result means.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, SourceInfo};
use cel::objects::Key;
use serde_json::Value;

use super::cost::{self, EXPRESSION_COST_MAX, Meter};

/// Longest accepted expression, in bytes.
pub const EXPRESSION_BYTES_MAX: usize = 4096;

/// Deepest accepted syntax tree of an expression (macros such as `exists` count their
/// expansion).
pub const EXPRESSION_DEPTH_MAX: usize = 64;

/// Deepest nesting the CEL parser is allowed (parentheses, lists, calls).
const PARSE_NESTING_MAX: u16 = 32;

/// Stack given to the CEL parser.
const PARSE_STACK_BYTES: usize = 64 << 20;

/// Stack given to one evaluation; an expression of [`EXPRESSION_DEPTH_MAX`] needs far less.
pub(crate) const EVAL_STACK_BYTES: usize = 16 << 20;

/// The CEL environment shared by every expression of a spec: the standard library only, and
/// the cost limit of each evaluation.
#[derive(Clone)]
pub(crate) struct Cel {
    env: Arc<cel::Env>,
    cost_max: u64,
}

impl Cel {
    /// `cost_max` steps per evaluation, at most [`EXPRESSION_COST_MAX`].
    pub(crate) fn new(cost_max: u64) -> Cel {
        Cel {
            env: Arc::new(cel::Env::stdlib()),
            cost_max: cost_max.min(EXPRESSION_COST_MAX),
        }
    }
}

/// Why an expression gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum ExpressionError {
    /// The evaluation spent its whole cost limit, in steps, and was stopped.
    TooCostly { cost_max: u64 },
    /// The evaluation ran past the time its agent was given (the run's `time_ms`, or
    /// `runtime.agent_timeout_ms`) and was stopped.
    OutOfTime,
    /// The expression cannot be evaluated on these values (a missing field, a type error),
    /// or gave something other than a boolean; the message says which.
    Failed(String),
}

impl std::fmt::Display for ExpressionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpressionError::TooCostly { cost_max } => write!(
                f,
                "the evaluation was stopped after {cost_max} steps, its cost limit; simplify \
                 the expression or raise `runtime.expression_cost_max` (at most \
                 {EXPRESSION_COST_MAX})"
            ),
            ExpressionError::OutOfTime => f.write_str(
                "the evaluation was stopped when its agent's time ran out (the run's `time_ms` \
                 or `runtime.agent_timeout_ms`)",
            ),
            ExpressionError::Failed(message) => f.write_str(message),
        }
    }
}

/// A compiled CEL expression, instrumented for metering.
#[derive(Debug, Clone)]
pub(crate) struct Expression {
    ast: Arc<IdedExpr>,
}

impl Expression {
    /// Compiles `source`; `Err` says what is wrong with it.
    #[cfg(test)]
    pub(crate) fn compile(cel: &Cel, source: &str) -> Result<Expression, String> {
        let (ast, _) = Expression::parse(cel, source)?;
        Ok(Expression::instrumented(ast))
    }

    /// Parses `source` within every limit, with the offset of each node in it, for the
    /// static checks to read before [`Expression::instrumented`] makes it runnable.
    pub(crate) fn parse(cel: &Cel, source: &str) -> Result<(IdedExpr, SourceInfo), String> {
        let env = &cel.env;
        if source.trim().is_empty() {
            return Err("the expression is empty".to_owned());
        }
        if source.len() > EXPRESSION_BYTES_MAX {
            return Err(format!(
                "the expression is {} bytes long; the limit is {EXPRESSION_BYTES_MAX}",
                source.len()
            ));
        }
        let parsed = guarded(PARSE_STACK_BYTES, || {
            env.parser()
                .max_recursion_depth(PARSE_NESTING_MAX)
                .parse_with_source_info(source)
        })?;
        let (ast, info) = parsed.map_err(|errors| describe_parse_errors(&errors))?;
        let depth = depth(&ast);
        if depth > EXPRESSION_DEPTH_MAX {
            return Err(format!(
                "the expression nests {depth} levels deep; the limit is {EXPRESSION_DEPTH_MAX}"
            ));
        }
        Ok((ast, info))
    }

    /// A parsed expression, instrumented for metering.
    pub(crate) fn instrumented(mut ast: IdedExpr) -> Expression {
        cost::instrument(&mut ast);
        Expression { ast: Arc::new(ast) }
    }

    /// Evaluates with `bindings` and `extra` bound, requiring a boolean.
    pub(crate) fn holds(
        &self,
        bindings: &Bindings,
        extra: &[(&str, &Value)],
    ) -> Result<bool, ExpressionError> {
        match self.evaluate(bindings, extra)? {
            cel::Value::Bool(holds) => Ok(holds),
            other => Err(ExpressionError::Failed(format!(
                "the expression must be true or false, but gave {}",
                type_name(&other)
            ))),
        }
    }

    fn evaluate(
        &self,
        bindings: &Bindings,
        extra: &[(&str, &Value)],
    ) -> Result<cel::Value, ExpressionError> {
        let mut scope = bindings.context.new_inner_scope();
        bind(&mut scope, extra).map_err(ExpressionError::Failed)?;
        bindings.meter.reset();
        let result = guarded(EVAL_STACK_BYTES, || cel::Value::resolve(&self.ast, &scope))
            .map_err(ExpressionError::Failed)?;
        if bindings.meter.late() {
            return Err(ExpressionError::OutOfTime);
        }
        if bindings.meter.exceeded() {
            return Err(ExpressionError::TooCostly {
                cost_max: bindings.meter.limit(),
            });
        }
        result.map_err(|error| ExpressionError::Failed(plain_error(&error)))
    }
}

/// An evaluation error in words: the `cel` crate prints the values it names as Rust debug
/// output (`Index out of bounds: Int(-1)`), possibly whole maps of facts; this names them
/// briefly instead.
#[allow(deprecated)] // the crate still returns its deprecated variants
fn plain_error(error: &cel::ExecutionError) -> String {
    use cel::ExecutionError as E;
    match error {
        E::UnsupportedTargetType { target } => {
            format!("a function cannot take {}", plain(target))
        }
        E::NotSupportedAsMethod { method, target } => {
            format!("'{method}' is not a method of {}", plain(target))
        }
        E::UnsupportedKeyType(key) => format!("{} cannot be a map key", plain(key)),
        E::ValuesNotComparable(left, right) => {
            format!("{} cannot be compared to {}", plain(left), plain(right))
        }
        E::UnsupportedUnaryOperator(operator, value) => {
            format!("'{operator}' does not apply to {}", plain(value))
        }
        E::UnsupportedBinaryOperator(operator, left, right) => format!(
            "'{operator}' does not apply to {} and {}",
            plain(left),
            plain(right)
        ),
        E::UnsupportedMapIndex(index) => format!("{} cannot index a map", plain(index)),
        E::UnsupportedListIndex(index) => format!("{} cannot index a list", plain(index)),
        E::UnsupportedIndex(index, target) => {
            format!("{} cannot index {}", plain(index), plain(target))
        }
        E::UnsupportedFunctionCallIdentifierType(_) => {
            "this expression cannot be called as a function".to_owned()
        }
        E::UnsupportedFieldsConstruction(_) => "message construction is not supported".to_owned(),
        E::DivisionByZero(value) => format!("{} divided by zero", plain(value)),
        E::RemainderByZero(value) => format!("the remainder of {} by zero", plain(value)),
        E::Overflow(operator, left, right) => format!(
            "'{operator}' overflows with {} and {}",
            plain(left),
            plain(right)
        ),
        E::IndexOutOfBounds(index) => format!("index {} is out of bounds", plain(index)),
        E::DuplicateKey(key) => format!("key {} appears twice", plain(key)),
        E::InternalError(_) => "the expression could not be evaluated".to_owned(),
        other => other.to_string(),
    }
}

/// Most characters of a string value an error message quotes.
const QUOTED_CHARS_MAX: usize = 40;

/// A value named briefly, in words: `-1`, `"abc"`, `a list of 3 items`.
fn plain(value: &cel::Value) -> String {
    match value {
        cel::Value::Int(n) => n.to_string(),
        cel::Value::UInt(n) => format!("{n}u"),
        cel::Value::Float(f) => f.to_string(),
        cel::Value::Bool(b) => b.to_string(),
        cel::Value::Null => "null".to_owned(),
        cel::Value::String(text) => {
            let quoted: String = text.chars().take(QUOTED_CHARS_MAX).collect();
            if text.chars().count() > QUOTED_CHARS_MAX {
                format!("the string \"{quoted}…\"")
            } else {
                format!("the string \"{quoted}\"")
            }
        }
        cel::Value::List(items) => format!("a list of {} items", items.len()),
        cel::Value::Map(map) => format!("a map of {} entries", map.map.len()),
        other => type_name(other).to_owned(),
    }
}

/// Variables converted once for many evaluations (a rule over each fact of a key binds the
/// whole view once and only `fact` per evaluation), and the meter each evaluation starts
/// afresh.
pub(crate) struct Bindings {
    context: cel::Context<'static, 'static>,
    meter: Arc<Meter>,
}

impl Bindings {
    /// Binds `variables` in `cel`'s environment.
    pub(crate) fn new(cel: &Cel, variables: &[(&str, &Value)]) -> Result<Bindings, String> {
        let mut context = cel::Context::with_env(cel.env.clone());
        let meter = Meter::new(cel.cost_max);
        cost::bind_meter(&mut context, &meter);
        super::numbers::bind_numbers(&mut context);
        bind(&mut context, variables)?;
        Ok(Bindings { context, meter })
    }
}

fn bind(context: &mut cel::Context<'_, '_>, variables: &[(&str, &Value)]) -> Result<(), String> {
    for (name, value) in variables {
        context
            .add_variable(*name, cel_value(value))
            .map_err(|error| format!("cannot bind `{name}`: {error}"))?;
    }
    Ok(())
}

/// A JSON value as CEL sees it. Integers become CEL `int` whenever they fit (serde would make
/// every non-negative one a `uint`, and `uint - int` is not defined in CEL).
fn cel_value(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(flag) => cel::Value::Bool(*flag),
        Value::Number(number) => match (number.as_i64(), number.as_u64()) {
            (Some(int), _) => cel::Value::Int(int),
            (None, Some(uint)) => cel::Value::UInt(uint),
            (None, None) => cel::Value::Float(number.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(text) => cel::Value::String(Arc::new(text.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(cel_value).collect())),
        Value::Object(map) => {
            let entries: HashMap<Key, cel::Value> = map
                .iter()
                .map(|(key, item)| (Key::String(Arc::new(key.clone())), cel_value(item)))
                .collect();
            cel::Value::Map(entries.into())
        }
    }
}

/// Runs `work` with at least `stack_bytes` of stack, turning a panic into an error: on the
/// caller's stack when that much of it is left (a worker's slot threads have room for an
/// evaluation), else on a fresh segment of that size. Mapping a segment for every
/// evaluation cost a run's driver more than the evaluations did.
fn guarded<T>(stack_bytes: usize, work: impl FnOnce() -> T) -> Result<T, String> {
    stacker::maybe_grow(stack_bytes, stack_bytes, || {
        catch_unwind(AssertUnwindSafe(work))
    })
    .map_err(|_| "the expression engine failed unexpectedly".to_owned())
}

fn describe_parse_errors(errors: &cel::ParseErrors) -> String {
    match errors.errors.first() {
        Some(first) => {
            let (line, column) = first.pos;
            let message = first.msg.trim_start_matches("Syntax error: ");
            if line > 1 {
                format!(
                    "invalid expression: {message} (line {line}, column {column} of the expression)"
                )
            } else {
                format!("invalid expression: {message} (column {column} of the expression)")
            }
        }
        None => "invalid expression".to_owned(),
    }
}

fn type_name(value: &cel::Value) -> &'static str {
    match value {
        cel::Value::List(_) => "a list",
        cel::Value::Map(_) => "a map",
        cel::Value::Int(_) | cel::Value::UInt(_) => "an integer",
        cel::Value::Float(_) => "a number",
        cel::Value::String(_) => "a string",
        cel::Value::Null => "null",
        _ => "a value of another type",
    }
}

/// The depth of a syntax tree, walked with an explicit stack (the tree may be deep).
fn depth(root: &IdedExpr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(root, 1_usize)];
    while let Some((node, level)) = stack.pop() {
        deepest = deepest.max(level);
        for child in children(node) {
            stack.push((child, level + 1));
        }
    }
    deepest
}

pub(super) fn children(node: &IdedExpr) -> Vec<&IdedExpr> {
    match &node.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => Vec::new(),
        Expr::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(call.args.iter())
            .collect(),
        Expr::Comprehension(comprehension) => vec![
            &comprehension.iter_range,
            &comprehension.accu_init,
            &comprehension.loop_cond,
            &comprehension.loop_step,
            &comprehension.result,
        ],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => map.entries.iter().flat_map(|e| entry(&e.expr)).collect(),
        Expr::Select(select) => vec![&*select.operand],
        Expr::Struct(structure) => structure
            .entries
            .iter()
            .flat_map(|e| entry(&e.expr))
            .collect(),
    }
}

fn entry(entry: &EntryExpr) -> Vec<&IdedExpr> {
    match entry {
        EntryExpr::MapEntry(pair) => vec![&pair.key, &pair.value],
        EntryExpr::StructField(field) => vec![&field.value],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(source: &str) -> Result<Expression, String> {
        Expression::compile(&Cel::new(cost::EXPRESSION_COST_DEFAULT), source)
    }

    fn holds(expression: &Expression, variables: &[(&str, &Value)]) -> Result<bool, String> {
        let bindings = Bindings::new(&Cel::new(cost::EXPRESSION_COST_DEFAULT), variables)?;
        expression
            .holds(&bindings, &[])
            .map_err(|error| error.to_string())
    }

    /// Where `guarded` ran its work, on a thread of `thread_stack` bytes: how far the work's
    /// stack was from the caller's, and how much stack it had left.
    fn guarded_on(thread_stack: usize) -> (usize, usize) {
        std::thread::Builder::new()
            .stack_size(thread_stack)
            .spawn(|| {
                let caller = 0u8;
                let caller_at = std::ptr::addr_of!(caller) as usize;
                guarded(EVAL_STACK_BYTES, || {
                    let inside = 0u8;
                    let inside_at = std::ptr::addr_of!(inside) as usize;
                    (
                        caller_at.abs_diff(inside_at),
                        stacker::remaining_stack().unwrap_or(0),
                    )
                })
                .unwrap()
            })
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn an_evaluation_runs_in_place_where_the_stack_has_room_and_on_a_segment_otherwise() {
        // A driver's thread has room: no segment is mapped for the evaluation.
        let (distance, left) = guarded_on(crate::DRIVER_STACK_BYTES);
        assert!(
            distance < 1 << 20,
            "ran {distance} bytes away from its caller"
        );
        assert!(
            left >= EVAL_STACK_BYTES - (1 << 20),
            "{left} bytes of stack left"
        );
        // A small thread's evaluation still gets its whole stack, on a segment of its own.
        let (distance, left) = guarded_on(1 << 20);
        assert!(
            distance >= 1 << 20,
            "ran only {distance} bytes away from its caller"
        );
        assert!(
            left >= EVAL_STACK_BYTES - (1 << 20),
            "{left} bytes of stack left"
        );
    }

    #[test]
    fn conditions_see_their_variables() {
        let facts = json!({"risks": [{"id": "r1", "content": {"severity": 4}, "confidence": 1.0}]});
        let rule = compile("facts.risks.exists(r, r.content.severity >= 4)").unwrap();
        assert_eq!(holds(&rule, &[("facts", &facts)]), Ok(true));
        let rule = compile("size(facts.risks) > 1").unwrap();
        assert_eq!(holds(&rule, &[("facts", &facts)]), Ok(false));
        let arithmetic =
            compile("facts.risks[0].content.severity - 5 < 0 && double(2) * 0.5 == 1.0");
        assert_eq!(holds(&arithmetic.unwrap(), &[("facts", &facts)]), Ok(true));
    }

    #[test]
    fn totals_and_extremes_of_numbers() {
        let facts = json!({"payouts": [
            {"id": "p1", "content": {"amount": 1200}},
            {"id": "p2", "content": {"amount": 2500}},
            {"id": "p3", "content": {"amount": 900.5}}
        ]});
        let check = |source: &str| holds(&compile(source).unwrap(), &[("facts", &facts)]);
        for holding in [
            "sum(facts.payouts.map(p, p.content.amount)) == 4600.5",
            "sum(facts.payouts.map(p, p.content.amount)) <= 5000",
            "sum([1, 2, 3]) == 6 && sum([]) == 0",
            "min(facts.payouts.map(p, p.content.amount)) == 900.5",
            "max(facts.payouts.map(p, p.content.amount)) == 2500",
            "max([1, 1.5]) == 1.5 && min([3, 1, 2]) == 1",
        ] {
            assert_eq!(check(holding), Ok(true), "{holding}");
        }
        assert_eq!(
            check("sum(facts.payouts.map(p, p.content.amount)) <= 4000"),
            Ok(false)
        );
        for (failing, words) in [
            ("min([]) == 0", "empty"),
            ("sum([1, 'two']) == 1", "item 1"),
            ("sum([9223372036854775807, 1]) > 0", "overflows"),
        ] {
            let error = check(failing).unwrap_err();
            assert!(error.contains(words), "{failing}: {error}");
        }
    }

    #[test]
    fn non_boolean_results_and_missing_fields_are_errors() {
        let facts = json!({"risks": []});
        let error = holds(&compile("size(facts.risks)").unwrap(), &[("facts", &facts)]);
        assert!(error.unwrap_err().contains("true or false"));
        let error = holds(&compile("facts.nope > 1").unwrap(), &[("facts", &facts)]);
        assert!(error.unwrap_err().contains("nope"));
    }

    #[test]
    fn malformed_oversized_and_deep_expressions_are_refused() {
        assert!(
            compile("1 +")
                .unwrap_err()
                .starts_with("invalid expression")
        );
        assert!(compile("").unwrap_err().contains("empty"));
        let long = "1 + ".repeat(EXPRESSION_BYTES_MAX / 4) + "1";
        assert!(compile(&long).unwrap_err().contains("limit is 4096"));
        let parens = "(".repeat(200) + "1" + &")".repeat(200);
        assert!(compile(&parens).is_err());
        let chain = vec!["1"; 100].join(" + ") + " > 0";
        assert!(compile(&chain).unwrap_err().contains("levels deep"));
    }

    fn holds_with_cost(
        source: &str,
        cost_max: u64,
        variables: &[(&str, &Value)],
    ) -> Result<bool, ExpressionError> {
        let cel = Cel::new(cost_max);
        let expression = Expression::compile(&cel, source).unwrap();
        let bindings = Bindings::new(&cel, variables).unwrap();
        expression.holds(&bindings, &[])
    }

    fn nested_maps(levels: usize) -> String {
        let names: Vec<String> = (0..levels).map(|level| format!("v{level}")).collect();
        let mut body = names.last().cloned().unwrap_or_default();
        for name in names.iter().rev() {
            body = format!("l.map({name}, {body})");
        }
        format!("size({body}) > 0")
    }

    #[test]
    fn nested_comprehensions_stop_at_the_cost_limit() {
        let list = json!((0..20).collect::<Vec<_>>());
        let started = std::time::Instant::now();
        let error = holds_with_cost(&nested_maps(7), 100_000, &[("l", &list)]).unwrap_err();
        assert_eq!(error, ExpressionError::TooCostly { cost_max: 100_000 });
        assert!(error.to_string().contains("expression_cost_max"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Even the largest limit a spec may set ends it in seconds.
        let started = std::time::Instant::now();
        let error = holds_with_cost(&nested_maps(7), EXPRESSION_COST_MAX, &[("l", &list)]);
        assert!(matches!(error, Err(ExpressionError::TooCostly { .. })));
        let elapsed = started.elapsed();
        assert!(elapsed < std::time::Duration::from_secs(5), "{elapsed:?}");
        // Two levels cost about 20 × 20 iterations: well within the default.
        assert_eq!(
            holds_with_cost(
                &nested_maps(2),
                cost::EXPRESSION_COST_DEFAULT,
                &[("l", &list)]
            ),
            Ok(true)
        );
    }

    #[test]
    fn growing_values_are_charged_for_their_size() {
        let text = json!("x".repeat(64 * 1024));
        let list = json!((0..20).collect::<Vec<_>>());
        // Each element copies the 64 KiB string: 20 × 20 × 1024 steps.
        let copies = "l.map(a, l.map(b, s)).size() > 0";
        let bound = [("s", &text), ("l", &list)];
        let error = holds_with_cost(copies, 100_000, &bound).unwrap_err();
        assert_eq!(error, ExpressionError::TooCostly { cost_max: 100_000 });
        assert_eq!(holds_with_cost(copies, 1_000_000, &bound), Ok(true));
        let doubling = "l.map(a, s + s + s + s + s + s + s + s).size() > 0";
        let error = holds_with_cost(doubling, 100_000, &bound).unwrap_err();
        assert!(
            matches!(error, ExpressionError::TooCostly { .. }),
            "{error}"
        );
    }

    #[test]
    fn instrumented_macros_keep_their_meaning() {
        let facts = json!({"xs": [1, 2, 3, 4], "names": ["a", "b"], "m": {"k": "v"}});
        let cases = [
            ("facts.xs.map(x, x * 2) == [2, 4, 6, 8]", true),
            ("facts.xs.filter(x, x % 2 == 0) == [2, 4]", true),
            ("facts.xs.map(x, x > 1, x) == [2, 3, 4]", true),
            ("facts.xs.exists_one(x, x == 3)", true),
            ("facts.xs.all(x, x > 0) && !facts.xs.exists(x, x > 4)", true),
            ("facts.names.exists(n, n + '!' == 'b!')", true),
            (
                "'k' in facts.m && facts.m.k.startsWith('v') && size(facts.m.k) == 1",
                true,
            ),
            ("[1, 2] + [3] == [1, 2, 3] && {'a': [1]}.a[0] == 1", true),
            (
                "optional.of(1).hasValue() && facts.m.?k.orValue('') == 'v'",
                true,
            ),
        ];
        for (source, expected) in cases {
            let variables = [("facts", &facts)];
            assert_eq!(
                holds_with_cost(source, cost::EXPRESSION_COST_DEFAULT, &variables),
                Ok(expected),
                "{source}"
            );
        }
    }

    #[test]
    fn the_deepest_accepted_expression_evaluates_on_a_small_stack() {
        let chain = vec!["1"; EXPRESSION_DEPTH_MAX - 1].join(" + ") + " > 0";
        let rule = compile(&chain).unwrap();
        let holds = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || holds(&rule, &[]))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(holds, Ok(true));
    }
}
