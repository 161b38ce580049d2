//! Invariants written in CEL: `check` must be true of the context.
//!
//! The expression sees every key the spec knows (the well-known keys and its own) as
//! `facts` (see [`super::facts_view`]). Building that view reads the whole context, so an
//! invariant costs time proportional to the number of facts each time it is checked — for a
//! structural invariant, before every promotion. An expression that gives `false` is a
//! violation; one that cannot be evaluated (a type error on these facts, a limit reached) is
//! [`InvariantFailure::Unevaluable`], never a violation, and says why; it never panics.

use std::sync::Arc;

use converge_core::{Context, ContextKey, Invariant, InvariantClass, InvariantFailure};

use super::expr::{Bindings, Cel, Expression};
use super::view::facts_view;

/// A CEL invariant, ready to add.
#[derive(Clone)]
pub(crate) struct CelInvariant {
    pub(crate) name: Arc<str>,
    pub(crate) class: InvariantClass,
    pub(crate) check: Expression,
    pub(crate) keys: Arc<[ContextKey]>,
    pub(crate) cel: Cel,
}

impl Invariant for CelInvariant {
    fn name(&self) -> &str {
        &self.name
    }

    fn class(&self) -> InvariantClass {
        self.class
    }

    fn check(&self, ctx: &Context) -> Result<(), InvariantFailure> {
        let facts = facts_view(ctx, self.keys.iter().copied());
        // The failure's kind already says it could not be evaluated; the detail says why.
        let bindings = Bindings::new(&self.cel, &[("facts", &facts)])
            .map_err(InvariantFailure::Unevaluable)?;
        match self.check.holds(&bindings, &[]) {
            Ok(true) => Ok(()),
            Ok(false) => Err(InvariantFailure::Violated("the check is false".to_owned())),
            Err(error) => Err(InvariantFailure::Unevaluable(error.to_string())),
        }
    }
}
