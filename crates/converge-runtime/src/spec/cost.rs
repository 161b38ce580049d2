//! The cost of evaluating a CEL expression: every evaluation is metered and stopped, with a
//! typed error, once it has spent its limit.
//!
//! The CEL interpreter has no step counter, so the syntax tree is instrumented once, when the
//! expression is compiled: the places where an evaluation does work that grows with the data
//! are wrapped in calls to metering functions (named with `@`, which CEL source cannot
//! write). Each charges steps before that work is done, and fails the evaluation when the
//! limit is spent:
//!
//! - a comprehension (`all`, `exists`, `exists_one`, `map`, `filter`) charges, when it starts,
//!   its range's length times the size of its body, plus the range's [deep
//!   size](deep_size) (each item is copied into the loop variable);
//! - an operand of an operator or function charges its deep size (`+`, `==`, `in`,
//!   `contains` and the like are at most linear in their operands), except for `size`, which
//!   charges only a string's length, and `matches`, which also charges a fixed cost per call
//!   for compiling its pattern;
//! - an element of a list or map literal charges its deep size (it is copied in).
//!
//! The charges are deterministic — a pure function of the expression and the values bound —
//! so replaying a run meets the limit exactly where the run did, on any machine. They bound
//! time and memory together: everything an evaluation allocates was charged first. The cost
//! is an upper bound; `exists` that stops early was charged for the whole range. This module
//! does not decide what an exceeded limit means for an agent or an invariant.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use cel::ExecutionError;
use cel::FunctionContext;
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::{CelInt, CelMapKey};
use cel::common::value::{BuiltinRef, CowVal, Val};

/// Steps one evaluation may spend unless the spec says otherwise (`runtime.expression_cost_max`).
pub const EXPRESSION_COST_DEFAULT: u64 = 1_000_000;

/// The most steps a spec may allow one evaluation.
pub const EXPRESSION_COST_MAX: u64 = 1_000_000;

/// Bytes of a string or bytes value that count as one step of its deep size.
const BYTES_PER_STEP: u64 = 64;

/// The metering function around a comprehension's range.
const RANGE: &str = "@cost_range";
/// The metering function around an operand or an element: charges its deep size.
const DEEP: &str = "@cost_deep";
/// The metering function around the operand of `size`: charges a string's length only.
const SHALLOW: &str = "@cost_shallow";
/// The metering function around the operands of `matches`: a regular expression is
/// compiled at every call, which costs far more than reading it.
const REGEX: &str = "@cost_regex";

/// Steps charged for compiling one regular expression (`matches`), besides its size.
const REGEX_STEPS: u64 = 1_000;

/// Calls whose operands are not metered: they do constant work on what they are given, or
/// evaluate their operands lazily and return one of them.
const UNMETERED_CALLS: [&str; 9] = [
    "_&&_",
    "_||_",
    "_?_:_",
    "!_",
    "-_",
    "@not_strictly_false",
    "_[_]",
    "_[?_]",
    "_?._",
];

/// Steps between two looks at the clock: often enough to stop within milliseconds of a
/// deadline, rarely enough to cost nothing measurable.
const DEADLINE_CHECK_STEPS: u64 = 16_384;

thread_local! {
    /// When evaluations on this thread must stop, whatever their cost limit: set by the
    /// driver around an agent it runs inline ([`with_deadline`]).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `work` with evaluations on this thread stopped at `deadline` (the run's time budget
/// or the agent timeout, whichever comes first). An evaluation cannot be interrupted from
/// outside, so it looks at the clock itself, every [`DEADLINE_CHECK_STEPS`] steps.
pub(crate) fn with_deadline<T>(deadline: Option<Instant>, work: impl FnOnce() -> T) -> T {
    let previous = DEADLINE.with(|cell| cell.replace(deadline));
    let value = work();
    DEADLINE.with(|cell| cell.set(previous));
    value
}

/// What one evaluation has spent, shared with the metering functions bound in its context.
#[derive(Debug)]
pub(crate) struct Meter {
    spent: AtomicU64,
    limit: u64,
    exceeded: AtomicBool,
    late: AtomicBool,
}

impl Meter {
    pub(crate) fn new(limit: u64) -> Arc<Meter> {
        Arc::new(Meter {
            spent: AtomicU64::new(0),
            limit,
            exceeded: AtomicBool::new(false),
            late: AtomicBool::new(false),
        })
    }

    /// Starts a new evaluation with the whole limit.
    pub(crate) fn reset(&self) {
        self.spent.store(0, Ordering::Relaxed);
        self.exceeded.store(false, Ordering::Relaxed);
        self.late.store(false, Ordering::Relaxed);
    }

    /// Whether the last evaluation was stopped by its thread's deadline.
    pub(crate) fn late(&self) -> bool {
        self.late.load(Ordering::Relaxed)
    }

    /// Whether the last evaluation was stopped by the limit.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    fn remaining(&self) -> u64 {
        self.limit
            .saturating_sub(self.spent.load(Ordering::Relaxed))
    }

    /// Spends `steps`; `Err` once the limit is passed.
    fn charge(&self, steps: u64) -> Result<(), ExecutionError> {
        let before = self.spent.load(Ordering::Relaxed);
        let spent = before.saturating_add(steps);
        self.spent.store(spent, Ordering::Relaxed);
        if before / DEADLINE_CHECK_STEPS != spent / DEADLINE_CHECK_STEPS
            && DEADLINE
                .with(Cell::get)
                .is_some_and(|deadline| Instant::now() >= deadline)
        {
            self.late.store(true, Ordering::Relaxed);
            return Err(ExecutionError::function_error(
                "cost",
                "the evaluation ran past its deadline",
            ));
        }
        if spent > self.limit {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(ExecutionError::function_error(
                "cost",
                "the evaluation exceeded its cost limit",
            ));
        }
        Ok(())
    }
}

/// A function as the CEL context stores it.
type Metering = Box<
    dyn for<'c, 'v> Fn(&mut FunctionContext<'c, 'v>) -> Result<CowVal<'c, 'v>, ExecutionError>
        + Send
        + Sync,
>;

/// Binds the metering functions, charging `meter`, in a root context.
pub(crate) fn bind_meter(context: &mut cel::Context<'_, '_>, meter: &Arc<Meter>) {
    let functions: [(&str, Metering); 4] = [
        (RANGE, metering(meter, range_cost)),
        (DEEP, metering(meter, deep_size)),
        (
            REGEX,
            metering(meter, |call, remaining| {
                REGEX_STEPS.saturating_add(deep_size(call, remaining))
            }),
        ),
        (SHALLOW, metering(meter, |value, _| shallow_size(value))),
    ];
    for (name, function) in functions {
        // The names start with `@`: no overload of the environment can have them.
        let _ = context.add_function(name, function);
    }
}

/// A metering function: charges `cost` of its first argument and returns that argument.
fn metering(meter: &Arc<Meter>, cost: fn(&FunctionContext<'_, '_>, u64) -> u64) -> Metering {
    let meter = meter.clone();
    Box::new(move |call: &mut FunctionContext<'_, '_>| {
        let steps = cost(call, meter.remaining());
        meter.charge(steps)?;
        if call.args.is_empty() {
            return Err(ExecutionError::function_error(call.name, "no operand"));
        }
        Ok(call.args.swap_remove(0))
    })
}

fn range_cost(call: &FunctionContext<'_, '_>, remaining: u64) -> u64 {
    let Some(range) = call.args.first() else {
        return 0;
    };
    let body = call
        .args
        .get(1)
        .and_then(|body| body.as_ref().downcast_ref::<CelInt>())
        .map_or(1, |steps| u64::try_from(*steps.inner()).unwrap_or(1));
    let length = match range.as_ref().as_builtin() {
        BuiltinRef::List(list) => list.inner().len() as u64,
        BuiltinRef::Map(map) => map.inner().len() as u64,
        _ => 0,
    };
    length
        .saturating_mul(body)
        .saturating_add(deep_size(call, remaining))
}

/// The deep size of the first argument: one step per value, plus one per
/// [`BYTES_PER_STEP`] bytes of text, counted up to just past `remaining`.
fn deep_size(call: &FunctionContext<'_, '_>, remaining: u64) -> u64 {
    let Some(value) = call.args.first() else {
        return 0;
    };
    let mut size = 0_u64;
    let mut pending: Vec<&dyn Val> = vec![value.as_ref()];
    while let Some(value) = pending.pop() {
        size = size.saturating_add(1);
        if size > remaining {
            break;
        }
        match value.as_builtin() {
            BuiltinRef::String(text) => size += text.inner().len() as u64 / BYTES_PER_STEP,
            BuiltinRef::Bytes(bytes) => size += bytes.inner().len() as u64 / BYTES_PER_STEP,
            BuiltinRef::List(list) => pending.extend(list.inner().iter().map(|item| &**item)),
            BuiltinRef::Map(map) => {
                for (key, item) in map.inner() {
                    size = size.saturating_add(key_size(key));
                    pending.push(&**item);
                }
            }
            BuiltinRef::Optional(optional) => pending.extend(optional.inner()),
            _ => {}
        }
    }
    size
}

fn key_size(key: &CelMapKey<'_>) -> u64 {
    match key {
        CelMapKey::String(text) => 1 + text.inner().len() as u64 / BYTES_PER_STEP,
        _ => 1,
    }
}

/// The cost of `size`: constant, except for a string, whose characters it counts.
fn shallow_size(call: &FunctionContext<'_, '_>) -> u64 {
    match call.args.first().map(|value| value.as_ref().as_builtin()) {
        Some(BuiltinRef::String(text)) => 1 + text.inner().len() as u64 / BYTES_PER_STEP,
        _ => 1,
    }
}

/// Instruments `root` in place (see the module documentation).
pub(crate) fn instrument(root: &mut IdedExpr) {
    let mut next_id = max_id(root) + 1;
    instrument_node(root, &mut next_id);
}

fn instrument_node(node: &mut IdedExpr, next_id: &mut u64) {
    match &mut node.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
        Expr::Select(select) => instrument_node(&mut select.operand, next_id),
        Expr::Call(call) => {
            let internal = call.args.iter().any(is_accumulator)
                || call.target.as_deref().is_some_and(is_accumulator);
            let meter = if UNMETERED_CALLS.contains(&call.func_name.as_str()) || internal {
                None
            } else if call.func_name == "size" {
                Some(SHALLOW)
            } else if call.func_name == "matches" {
                Some(REGEX)
            } else {
                Some(DEEP)
            };
            if let Some(target) = call.target.as_deref_mut() {
                instrument_node(target, next_id);
                // `optional.of(x)`: a namespace, not a value.
                if let Some(name) = meter.filter(|_| !is_namespace(target)) {
                    wrap(target, name, None, next_id);
                }
            }
            for arg in &mut call.args {
                instrument_node(arg, next_id);
                if let Some(name) = meter {
                    wrap(arg, name, None, next_id);
                }
            }
        }
        Expr::List(list) => {
            for element in &mut list.elements {
                instrument_node(element, next_id);
                wrap(element, DEEP, None, next_id);
            }
        }
        Expr::Map(map) => {
            for entry in &mut map.entries {
                if let EntryExpr::MapEntry(pair) = &mut entry.expr {
                    instrument_node(&mut pair.key, next_id);
                    instrument_node(&mut pair.value, next_id);
                    wrap(&mut pair.value, DEEP, None, next_id);
                }
            }
        }
        Expr::Struct(_) => {}
        Expr::Comprehension(comprehension) => {
            let body = node_count(&comprehension.loop_cond) + node_count(&comprehension.loop_step);
            for part in [
                &mut comprehension.iter_range,
                &mut comprehension.accu_init,
                &mut comprehension.loop_cond,
                &mut comprehension.loop_step,
                &mut comprehension.result,
            ] {
                instrument_node(part, next_id);
            }
            wrap(
                &mut comprehension.iter_range,
                RANGE,
                Some(body as i64),
                next_id,
            );
        }
    }
}

/// Replaces `node` with `name(node)` (or `name(node, extra)`), unless it is a literal read
/// as it is, which costs nothing to evaluate.
fn wrap(node: &mut IdedExpr, name: &str, extra: Option<i64>, next_id: &mut u64) {
    if matches!(node.expr, Expr::Literal(_)) && extra.is_none() && name != REGEX {
        return;
    }
    let inner = std::mem::take(node);
    let mut args = vec![inner];
    if let Some(extra) = extra {
        args.push(IdedExpr {
            id: fresh(next_id),
            expr: Expr::Literal(LiteralValue::Int(CelInt::from(extra))),
        });
    }
    *node = IdedExpr {
        id: fresh(next_id),
        expr: Expr::Call(cel::common::ast::CallExpr {
            func_name: name.to_owned(),
            target: None,
            args,
        }),
    };
}

fn fresh(next_id: &mut u64) -> u64 {
    let id = *next_id;
    *next_id += 1;
    id
}

/// A comprehension's accumulator (`@result`): the macros' own shapes must stay as they are,
/// for the interpreter recognises them.
fn is_accumulator(node: &IdedExpr) -> bool {
    matches!(&node.expr, Expr::Ident(name) if name.starts_with('@'))
}

fn is_namespace(node: &IdedExpr) -> bool {
    matches!(&node.expr, Expr::Ident(name) if name == "optional")
}

/// The number of nodes of a tree, walked with an explicit stack.
pub(crate) fn node_count(root: &IdedExpr) -> usize {
    let mut count = 0;
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        count += 1;
        stack.extend(super::expr::children(node));
    }
    count
}

fn max_id(root: &IdedExpr) -> u64 {
    let mut max = 0;
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        max = max.max(node.id);
        stack.extend(super::expr::children(node));
    }
    max
}
