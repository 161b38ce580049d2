//! Invariants: rules over the whole context, in three classes.
//!
//! Structural invariants are checked before a promotion commits (so the context never holds a
//! violating fact) and on the initial context; semantic invariants at the end of each cycle;
//! acceptance invariants when the run reaches a fixed point. This module defines them; the
//! engine decides what a violation does.

use serde::Serialize;

use crate::context::Context;

/// When an invariant is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvariantClass {
    /// Before each promotion commits; a violating proposal is rejected.
    Structural,
    /// At the end of every cycle that promoted something; a violation stops the run.
    Semantic,
    /// At the fixed point; a violation means the run did not achieve its goal.
    Acceptance,
}

/// A rule over the context.
pub trait Invariant: Send + Sync {
    /// A stable name, reported in violations.
    fn name(&self) -> &str;

    /// When it is checked.
    fn class(&self) -> InvariantClass;

    /// `Err` when the context violates the rule, or when the rule cannot be evaluated on it.
    /// Must be pure and deterministic.
    fn check(&self, ctx: &Context) -> Result<(), InvariantFailure>;
}

/// Why an invariant does not hold of a context.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvariantFailure {
    /// The context breaks the rule; the reason.
    Violated(String),
    /// The rule could not be evaluated on this context (an expression that fails on these
    /// facts, a limit reached); why. Nothing is known to be broken, and nothing is known to
    /// hold either, so the engine treats it as seriously as a violation but reports it apart.
    Unevaluable(String),
}

impl InvariantFailure {
    /// The reason, in words.
    pub fn detail(&self) -> &str {
        match self {
            InvariantFailure::Violated(detail) | InvariantFailure::Unevaluable(detail) => detail,
        }
    }
}

/// An invariant written as a closure; its `Err` is a violation.
///
/// ```
/// use converge_core::{ContextKey, FnInvariant, Invariant, InvariantClass};
///
/// let at_most_three = FnInvariant::new("at-most-3-strategies", InvariantClass::Structural, |ctx| {
///     if ctx.count(ContextKey::Strategies) <= 3 { Ok(()) } else { Err("too many strategies".into()) }
/// });
/// assert_eq!(at_most_three.name(), "at-most-3-strategies");
/// ```
pub struct FnInvariant<F> {
    name: String,
    class: InvariantClass,
    check: F,
}

impl<F> FnInvariant<F>
where
    F: Fn(&Context) -> Result<(), String> + Send + Sync,
{
    /// An invariant named `name` of class `class`.
    pub fn new(name: impl Into<String>, class: InvariantClass, check: F) -> Self {
        FnInvariant {
            name: name.into(),
            class,
            check,
        }
    }
}

impl<F> Invariant for FnInvariant<F>
where
    F: Fn(&Context) -> Result<(), String> + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn class(&self) -> InvariantClass {
        self.class
    }

    fn check(&self, ctx: &Context) -> Result<(), InvariantFailure> {
        (self.check)(ctx).map_err(InvariantFailure::Violated)
    }
}
