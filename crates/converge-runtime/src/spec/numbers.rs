//! The CEL functions over lists of numbers that conditions and invariants need: `sum`, `min`
//! and `max`, so that a total ("at most 5000 a week") or an extreme can be written:
//!
//! ```text
//! sum(facts.payouts.map(p, p.content.amount)) <= 5000
//! max(facts.bids.map(b, b.content.price)) < 1000
//! ```
//!
//! `sum` of integers is an integer (overflow is an error, never a wrap); with a float among
//! them it is a float; the sum of an empty list is 0. `min` and `max` return the smallest or
//! largest item as it is (compared as numbers, so `1` and `1.5` compare), and refuse an empty
//! list. An item that is not a number is an error naming its position. Their cost is their
//! list's, charged by the metering like any function's operand ([`super::cost`]).

use std::sync::Arc;

use cel::{ExecutionError, Value};

/// Binds `sum`, `min` and `max` in a root context.
pub(crate) fn bind_numbers(context: &mut cel::Context<'_, '_>) {
    let _ = context.add_function("sum", sum);
    let _ = context.add_function("min", |items: Arc<Vec<Value>>| extreme("min", &items, true));
    let _ = context.add_function("max", |items: Arc<Vec<Value>>| {
        extreme("max", &items, false)
    });
}

/// A number of a list, or the error naming the item that is not one.
fn number(function: &str, index: usize, item: &Value) -> Result<f64, ExecutionError> {
    match item {
        Value::Int(n) => Ok(*n as f64),
        Value::UInt(n) => Ok(*n as f64),
        Value::Float(f) => Ok(*f),
        _ => Err(ExecutionError::function_error(
            function,
            format!("item {index} of its list is not a number"),
        )),
    }
}

fn sum(items: Arc<Vec<Value>>) -> Result<Value, ExecutionError> {
    let overflow = || ExecutionError::function_error("sum", "the total overflows an integer");
    let mut total = Value::Int(0);
    for (index, item) in items.iter().enumerate() {
        total = match (&total, item) {
            (Value::Int(a), Value::Int(b)) => Value::Int(a.checked_add(*b).ok_or_else(overflow)?),
            (Value::Int(a), Value::UInt(b)) => {
                let b = i64::try_from(*b).map_err(|_| overflow())?;
                Value::Int(a.checked_add(b).ok_or_else(overflow)?)
            }
            (total, item) => {
                let total = number("sum", index, total)?;
                Value::Float(total + number("sum", index, item)?)
            }
        };
    }
    Ok(total)
}

fn extreme(function: &str, items: &[Value], smallest: bool) -> Result<Value, ExecutionError> {
    let mut best: Option<(f64, &Value)> = None;
    for (index, item) in items.iter().enumerate() {
        let value = number(function, index, item)?;
        let better = best.is_none_or(|(current, _)| {
            if smallest {
                value < current
            } else {
                value > current
            }
        });
        if better {
            best = Some((value, item));
        }
    }
    best.map(|(_, item)| item.clone())
        .ok_or_else(|| ExecutionError::function_error(function, "its list is empty"))
}
