//! Budgets: the named limits that guarantee a run terminates.
//!
//! Every budget has a validating constructor; exhausting one is a [`crate::StopReason`], never
//! an error, and the result still carries everything done so far. Time budgets are enforced by
//! drivers with an injected clock: the core never reads time.

use serde::{Deserialize, Serialize};

/// The most cycles a run may execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct CycleBudget(u32);

/// The most facts (versions included) a run may promote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct FactBudget(u64);

/// The most model tokens (input plus output) a run may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct TokenBudget(u64);

/// A budget of zero, which would stop a run before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {what} budget must be at least 1")]
pub struct BudgetError {
    what: &'static str,
}

macro_rules! budget {
    ($name:ident, $raw:ty, $what:literal) => {
        impl $name {
            /// A budget of `limit`, which must be at least 1.
            pub fn new(limit: $raw) -> Result<$name, BudgetError> {
                if limit == 0 {
                    Err(BudgetError { what: $what })
                } else {
                    Ok($name(limit))
                }
            }

            /// The limit.
            pub fn limit(self) -> $raw {
                self.0
            }
        }

        impl TryFrom<$raw> for $name {
            type Error = BudgetError;

            fn try_from(limit: $raw) -> Result<Self, Self::Error> {
                $name::new(limit)
            }
        }

        impl From<$name> for $raw {
            fn from(budget: $name) -> $raw {
                budget.0
            }
        }
    };
}

budget!(CycleBudget, u32, "cycle");
budget!(FactBudget, u64, "fact");
budget!(TokenBudget, u64, "token");

/// All budgets of a run.
///
/// The default is 100 cycles, 10,000 facts and no token limit (a run with no model spends none).
///
/// ```
/// use converge_core::{Budget, CycleBudget};
///
/// let budget = Budget::default().with_cycles(CycleBudget::new(5).unwrap());
/// assert_eq!(budget.cycles.limit(), 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Cycle limit.
    pub cycles: CycleBudget,
    /// Fact limit.
    pub facts: FactBudget,
    /// Token limit; `None` means unlimited.
    #[serde(default)]
    pub tokens: Option<TokenBudget>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            cycles: CycleBudget(100),
            facts: FactBudget(10_000),
            tokens: None,
        }
    }
}

impl Budget {
    /// With another cycle limit.
    pub fn with_cycles(mut self, cycles: CycleBudget) -> Budget {
        self.cycles = cycles;
        self
    }

    /// With another fact limit.
    pub fn with_facts(mut self, facts: FactBudget) -> Budget {
        self.facts = facts;
        self
    }

    /// With a token limit.
    pub fn with_tokens(mut self, tokens: TokenBudget) -> Budget {
        self.tokens = Some(tokens);
        self
    }
}

/// Which budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "budget", rename_all = "snake_case")]
pub enum Exhausted {
    /// The cycle budget.
    Cycles {
        /// The limit.
        limit: u32,
    },
    /// The fact budget.
    Facts {
        /// The limit.
        limit: u64,
    },
    /// The token budget.
    Tokens {
        /// The limit.
        limit: u64,
        /// Tokens spent when the run stopped.
        used: u64,
    },
    /// A driver's wall-clock budget.
    Time {
        /// The limit, in milliseconds.
        limit_ms: u64,
        /// Elapsed time by the driver's clock, in milliseconds.
        elapsed_ms: u64,
    },
}
