//! From the spec as written to the spec as run: every check that can refuse a spec.
//!
//! The [`Checker`] walks the raw spec once, in source order, collecting every problem it
//! finds instead of stopping at the first, then cross-checks who writes and who reads each
//! key. It compiles everything that can be compiled — CEL expressions, templates, JSON
//! Schemas — so that a spec that passes can be built without another error (except an `llm`
//! agent without a factory). It reads nothing but the raw spec, except to warn when a
//! command's program is missing. The checks of agents are in `agent.rs`.

mod agent;
mod cel;
mod place;
mod suggest;
mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use converge_core::{
    Budget, Confidence, ContextKey, CycleBudget, FactBudget, FactId, FailurePolicy, Frame,
    InvariantClass, RootIntent, SuccessCriterion, TokenBudget,
};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::cost::{EXPRESSION_COST_DEFAULT, EXPRESSION_COST_MAX};
use super::error::{At, Problem};
use super::expr::{Cel, Expression};
use super::invariant::CelInvariant;
use super::raw::{
    RawBudgets, RawClass, RawFact, RawFailurePolicy, RawIntent, RawInvariant, RawKey, RawRuntime,
    RawSpec, RawSuccess,
};
use super::schema::Schema;
use super::seed::{SeedFact, SeedFactsAgent};
use super::{AgentEntry, KeyPolicy, LLM_CONCURRENCY_MAX_DEFAULT, Parts};
use crate::DriverConfig;

/// The only spec version this runtime reads.
pub const SPEC_VERSION: u32 = 1;

/// Longest agent name, in bytes.
pub const AGENT_NAME_LEN_MAX: usize = 64;

/// Most async agents in flight that a spec may ask for.
const CONCURRENCY_MAX_LIMIT: usize = 1024;

/// Names the runtime gives its own agents.
const RESERVED_AGENT_NAMES: [&str; 2] = ["intent", "seeds"];

fn at<T>(spanned: &Spanned<T>) -> At {
    At::of(&spanned.referenced)
}

/// Collects problems while turning a raw spec into its parts.
pub(crate) struct Checker<'a> {
    origin: &'a Arc<Path>,
    base_dir: &'a Path,
    source: place::Source<'a>,
    /// Every key the spec knows (well-known and declared), with its schema if any: what
    /// expressions and templates are checked against.
    known: Arc<BTreeMap<String, Option<Value>>>,
    /// Whether expressions and templates are checked against `known` (not when rebuilding a
    /// journaled run: see `JobSpec::parse_recorded`).
    static_checks: bool,
    cel: Cel,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    /// Keys declared under `keys:`, with where.
    declared: BTreeMap<ContextKey, At>,
    schemas: BTreeMap<ContextKey, Schema>,
    /// Keys some agent (or the intent, or a seed) may write.
    writers: BTreeSet<ContextKey>,
    /// (agent, key, where) for every key an agent reads.
    reads: Vec<(String, ContextKey, At)>,
    seed_facts: BTreeMap<(ContextKey, String), At>,
    agent_names: BTreeMap<String, At>,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(origin: &'a Arc<Path>, base_dir: &'a Path, source: &'a str) -> Checker<'a> {
        Checker {
            origin,
            base_dir,
            source: place::Source::new(source),
            known: Arc::default(),
            static_checks: true,
            cel: Cel::new(EXPRESSION_COST_DEFAULT),
            errors: Vec::new(),
            warnings: Vec::new(),
            declared: BTreeMap::new(),
            schemas: BTreeMap::new(),
            writers: BTreeSet::new(),
            reads: Vec::new(),
            seed_facts: BTreeMap::new(),
            agent_names: BTreeMap::new(),
        }
    }

    /// With `false`, expressions and templates are compiled but not checked against the
    /// spec's keys, `reads` and schemas.
    pub(crate) fn with_static_checks(mut self, static_checks: bool) -> Checker<'a> {
        self.static_checks = static_checks;
        self
    }

    /// Checks the whole spec: its parts and warnings, or every problem found.
    pub(crate) fn check(mut self, raw: RawSpec) -> Result<(Parts, Vec<Problem>), Vec<Problem>> {
        if raw.version.value != SPEC_VERSION {
            self.error(
                at(&raw.version),
                format!(
                    "unsupported spec version {}; expected {SPEC_VERSION}",
                    raw.version.value
                ),
            );
        }
        self.cel = Cel::new(self.expression_cost_max(raw.runtime.as_ref()));
        let policies = self.keys(&raw.keys);
        self.known = Arc::new(self.known_keys());
        let (intent, time_budget_ms) = self.intent(&raw.intent);
        let seeds = self.top_level_seeds(&raw.seeds);
        let agents: Vec<AgentEntry> = raw.agents.iter().filter_map(|a| self.agent(a)).collect();
        let invariants = self.invariants(&raw.invariants);
        let (driver, failure_policy) = self.runtime(raw.runtime.as_ref(), time_budget_ms);
        let llm_concurrency_max = self.llm_concurrency_max(raw.runtime.as_ref());
        self.cross_check(&raw.intent);
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let parts = Parts {
            intent,
            policies,
            seeds,
            agents,
            invariants,
            driver,
            failure_policy,
            llm_concurrency_max,
        };
        Ok((parts, self.warnings))
    }

    fn error(&mut self, at: At, message: impl Into<String>) {
        self.errors.push(Problem::new(self.origin, at, message));
    }

    fn warn(&mut self, at: At, message: impl Into<String>) {
        self.warnings.push(Problem::new(self.origin, at, message));
    }

    /// Resolves a key name: a well-known key or one declared under `keys:`.
    fn key(&mut self, name: &Spanned<String>) -> Option<ContextKey> {
        match name.value.parse::<ContextKey>() {
            Ok(key @ ContextKey::Custom(_)) if !self.declared.contains_key(&key) => {
                let message = format!(
                    "unknown key `{}`; declare it under `keys:`, or use a well-known key ({})",
                    name.value,
                    well_known_names()
                );
                self.error(at(name), message);
                None
            }
            Ok(key) => Some(key),
            Err(error) => {
                self.error(at(name), format!("invalid key: {error}"));
                None
            }
        }
    }

    /// Resolves a list of key names, keeping their first-seen order without repeats.
    fn key_list(&mut self, names: &[Spanned<String>]) -> Vec<ContextKey> {
        let mut keys = Vec::new();
        for name in names {
            if let Some(key) = self.key(name).filter(|key| !keys.contains(key)) {
                keys.push(key);
            }
        }
        keys
    }

    // ---- keys -------------------------------------------------------------------------

    fn keys(&mut self, raw: &[RawKey]) -> Vec<KeyPolicy> {
        for entry in raw {
            match entry.name.value.parse::<ContextKey>() {
                Err(error) => self.error(at(&entry.name), format!("invalid key name: {error}")),
                Ok(key) => {
                    if let Some(first) = self.declared.get(&key) {
                        let message =
                            format!("key `{key}` is already declared at line {}", first.line);
                        self.error(at(&entry.name), message);
                    } else {
                        self.declared.insert(key, at(&entry.name));
                    }
                }
            }
        }
        raw.iter()
            .filter_map(|entry| self.key_policy(entry))
            .collect()
    }

    fn key_policy(&mut self, entry: &RawKey) -> Option<KeyPolicy> {
        let key = entry.name.value.parse::<ContextKey>().ok()?;
        let schema = match &entry.schema {
            None => None,
            Some(schema) => match Schema::compile(&schema.value) {
                Ok(compiled) => {
                    self.schemas.insert(key, compiled.clone());
                    Some(compiled)
                }
                Err(error) => {
                    self.error(at(schema), format!("schema of key `{key}`: {error}"));
                    None
                }
            },
        };
        Some(KeyPolicy {
            key,
            schema,
            approval: entry.approval,
        })
    }

    // ---- intent -----------------------------------------------------------------------

    fn intent(&mut self, raw: &RawIntent) -> (RootIntent, Option<u64>) {
        if raw.objective.value.trim().is_empty() {
            self.error(
                at(&raw.objective),
                "the objective is empty; say what the job is for",
            );
        }
        let success_criteria = raw.success.iter().filter_map(|s| self.success(s)).collect();
        let (budget, time_budget_ms) = match &raw.budgets {
            Some(budgets) => self.budgets(budgets),
            None => (None, None),
        };
        self.writers.insert(ContextKey::Seeds);
        if !raw.constraints.is_empty() {
            self.writers.insert(ContextKey::Constraints);
        }
        let intent = RootIntent {
            objective: raw.objective.value.clone(),
            frame: Frame {
                scope: raw.scope.clone(),
                constraints: raw.constraints.clone(),
            },
            success_criteria,
            budget,
        };
        (intent, time_budget_ms)
    }

    fn success(&mut self, raw: &RawSuccess) -> Option<SuccessCriterion> {
        match raw {
            RawSuccess::KeyNotEmpty(key) => {
                let key = self.key(key)?;
                Some(SuccessCriterion::KeyNotEmpty { key })
            }
            RawSuccess::MinFacts { key, count } => {
                let key = self.key(key)?;
                Some(SuccessCriterion::MinFacts {
                    key,
                    count: count.value,
                })
            }
            RawSuccess::FactPresent { key, id } => {
                let key = self.key(key)?;
                let id = self.fact_id(id)?;
                Some(SuccessCriterion::FactPresent { key, id })
            }
        }
    }

    fn budgets(&mut self, raw: &RawBudgets) -> (Option<Budget>, Option<u64>) {
        let mut budget = Budget::default();
        if let Some(cycles) = &raw.cycles {
            match CycleBudget::new(cycles.value) {
                Ok(limit) => budget = budget.with_cycles(limit),
                Err(error) => self.error(at(cycles), error.to_string()),
            }
        }
        if let Some(facts) = &raw.facts {
            match FactBudget::new(facts.value) {
                Ok(limit) => budget = budget.with_facts(limit),
                Err(error) => self.error(at(facts), error.to_string()),
            }
        }
        if let Some(tokens) = &raw.tokens {
            match TokenBudget::new(tokens.value) {
                Ok(limit) => budget = budget.with_tokens(limit),
                Err(error) => self.error(at(tokens), error.to_string()),
            }
        }
        let time_budget_ms = raw.time_ms.as_ref().and_then(|time| {
            if time.value == 0 {
                self.error(at(time), "a time budget must be at least 1 ms");
            }
            (time.value > 0).then_some(time.value)
        });
        (Some(budget), time_budget_ms)
    }

    // ---- facts written in the spec ----------------------------------------------------

    fn top_level_seeds(&mut self, raw: &[RawFact]) -> Option<SeedFactsAgent> {
        if raw.is_empty() {
            return None;
        }
        let facts: Vec<SeedFact> = raw.iter().filter_map(|fact| self.seed_fact(fact)).collect();
        // Keys named by refused facts count as written too, so a bad fact is reported once.
        let named = raw
            .iter()
            .filter_map(|fact| fact.key.value.parse::<ContextKey>().ok());
        self.writers.extend(named);
        let mut writes: Vec<ContextKey> = facts.iter().map(|fact| fact.key).collect();
        writes.sort();
        writes.dedup();
        Some(SeedFactsAgent {
            name: Arc::from("seeds"),
            writes,
            facts: facts.into(),
        })
    }

    fn seed_fact(&mut self, raw: &RawFact) -> Option<SeedFact> {
        let key = self.key(&raw.key);
        let id = self.fact_id(&raw.id);
        let confidence = self.confidence(raw.confidence.as_ref());
        let content_ok = self.content(&raw.content, key);
        let (key, id) = (key?, id?);
        let place = (key, id.as_str().to_owned());
        if let Some(first) = self.seed_facts.get(&place) {
            let message = format!("fact `{key}/{id}` is already seeded at line {}", first.line);
            self.error(at(&raw.id), message);
            return None;
        }
        self.seed_facts.insert(place, at(&raw.id));
        content_ok.then(|| SeedFact {
            key,
            id: id.as_str().to_owned(),
            content: raw.content.value.clone(),
            confidence,
        })
    }

    fn fact_id(&mut self, id: &Spanned<String>) -> Option<FactId> {
        FactId::new(&id.value)
            .map_err(|error| self.error(at(id), format!("invalid fact id: {error}")))
            .ok()
    }

    fn confidence(&mut self, confidence: Option<&Spanned<f64>>) -> f64 {
        let Some(confidence) = confidence else {
            return 1.0;
        };
        match Confidence::new(confidence.value) {
            Ok(valid) => valid.value(),
            Err(error) => {
                self.error(at(confidence), error.to_string());
                1.0
            }
        }
    }

    /// Checks seeded content: not empty, and matching the key's schema if it has one.
    fn content(&mut self, content: &Spanned<Value>, key: Option<ContextKey>) -> bool {
        if is_empty(&content.value) {
            self.error(at(content), "the content is empty (null, \"\", [] or {})");
            return false;
        }
        let Some(schema) = key.and_then(|key| self.schemas.get(&key)) else {
            return true;
        };
        match schema.check(&content.value) {
            Ok(()) => true,
            Err(error) => {
                let key = key.map(|key| key.to_string()).unwrap_or_default();
                self.error(
                    at(content),
                    format!("the content does not match the schema of `{key}`: {error}"),
                );
                false
            }
        }
    }
}

impl Checker<'_> {
    fn positive(&mut self, value: Option<&Spanned<u64>>, field: &str) -> Option<u64> {
        let value = value?;
        if value.value == 0 {
            self.error(at(value), format!("`{field}` must be at least 1"));
        }
        Some(value.value.max(1))
    }

    // ---- invariants and runtime -------------------------------------------------------

    fn invariants(&mut self, raw: &[RawInvariant]) -> Vec<CelInvariant> {
        let keys: Arc<[ContextKey]> = ContextKey::well_known()
            .chain(
                self.declared
                    .keys()
                    .copied()
                    .filter(|key| matches!(key, ContextKey::Custom(_))),
            )
            .collect();
        let mut names = BTreeMap::new();
        let mut invariants = Vec::new();
        for entry in raw {
            let name = entry.name.value.trim();
            if name.is_empty() {
                self.error(at(&entry.name), "an invariant needs a name");
                continue;
            }
            if let Some(line) = names.insert(name.to_owned(), at(&entry.name).line) {
                let message = format!("invariant `{name}` is already defined at line {line}");
                self.error(at(&entry.name), message);
                continue;
            }
            let scope = Seen {
                field: "check",
                owner: format!("invariant `{name}`"),
                visible: keys.iter().map(|key| key.name().to_owned()).collect(),
                fact_key: None,
                agent: false,
            };
            if let Ok(check) = self.expression(&entry.check, scope) {
                invariants.push(CelInvariant {
                    name: Arc::from(name),
                    class: class(entry.class),
                    check,
                    keys: keys.clone(),
                    cel: self.cel.clone(),
                });
            }
        }
        invariants
    }

    /// Every key the spec knows, by name, with its schema if it has one.
    fn known_keys(&self) -> BTreeMap<String, Option<Value>> {
        let declared = self.declared.keys().copied();
        ContextKey::well_known()
            .chain(declared)
            .map(|key| {
                let schema = self.schemas.get(&key).map(|schema| schema.source().clone());
                (key.name().to_owned(), schema)
            })
            .collect()
    }

    /// Compiles a CEL expression and checks it statically against what `seen` may see;
    /// every problem is reported where it is.
    fn expression(&mut self, text: &Spanned<String>, seen: Seen) -> Result<Expression, ()> {
        let (ast, info) = Expression::parse(&self.cel, &text.value).map_err(|error| {
            self.error(at(text), format!("{}: {error}", seen.field));
        })?;
        let known = self.known.clone();
        let scope = cel::Scope {
            known: &known,
            visible: seen.visible,
            fact_key: seen.fact_key,
            agent: seen.agent,
        };
        // The parser counts offsets in its own units; they are characters only in ASCII text.
        let ascii = text.value.is_ascii();
        let offsets = |id| {
            (info.offset_for(id))
                .filter(|_| ascii)
                .map(|(start, _)| start as usize)
        };
        let findings = match self.static_checks {
            true => cel::check(&ast, &offsets, &scope, true),
            false => Vec::new(),
        };
        if findings.is_empty() {
            return Ok(Expression::instrumented(ast));
        }
        for finding in findings {
            let offset = finding.offset.map(|offset| at_name(&text.value, offset));
            let words = word_at(&text.value, offset);
            let place = self.source.place(at(text), &text.value, offset, &words);
            let message = format!("`{}` of {}: {}", seen.field, seen.owner, finding.message);
            self.error(place, message);
        }
        Err(())
    }

    fn runtime(
        &mut self,
        raw: Option<&RawRuntime>,
        time_budget_ms: Option<u64>,
    ) -> (DriverConfig, FailurePolicy) {
        let mut driver = DriverConfig {
            time_budget_ms,
            ..DriverConfig::default()
        };
        let Some(raw) = raw else {
            return (driver, FailurePolicy::Quarantine);
        };
        if let Some(concurrency) = &raw.concurrency_max {
            if concurrency.value == 0 || concurrency.value > CONCURRENCY_MAX_LIMIT {
                let message =
                    format!("`concurrency_max` must be from 1 to {CONCURRENCY_MAX_LIMIT}");
                self.error(at(concurrency), message);
            }
            driver.concurrency_max = concurrency.value.clamp(1, CONCURRENCY_MAX_LIMIT);
        }
        driver.agent_timeout_ms = self.positive(raw.agent_timeout_ms.as_ref(), "agent_timeout_ms");
        let policy = match raw.on_agent_failure {
            Some(RawFailurePolicy::StopRun) => FailurePolicy::StopRun,
            Some(RawFailurePolicy::Quarantine) | None => FailurePolicy::Quarantine,
        };
        (driver, policy)
    }

    /// The cost limit of every CEL evaluation (`runtime.expression_cost_max`).
    fn expression_cost_max(&mut self, raw: Option<&RawRuntime>) -> u64 {
        let Some(limit) = raw.and_then(|raw| raw.expression_cost_max.as_ref()) else {
            return EXPRESSION_COST_DEFAULT;
        };
        if limit.value == 0 || limit.value > EXPRESSION_COST_MAX {
            let message = format!("`expression_cost_max` must be from 1 to {EXPRESSION_COST_MAX}");
            self.error(at(limit), message);
        }
        limit.value.clamp(1, EXPRESSION_COST_MAX)
    }

    fn llm_concurrency_max(&mut self, raw: Option<&RawRuntime>) -> usize {
        let Some(limit) = raw.and_then(|raw| raw.llm_concurrency_max.as_ref()) else {
            return LLM_CONCURRENCY_MAX_DEFAULT;
        };
        if limit.value == 0 || limit.value > CONCURRENCY_MAX_LIMIT {
            let message =
                format!("`llm_concurrency_max` must be from 1 to {CONCURRENCY_MAX_LIMIT}");
            self.error(at(limit), message);
        }
        limit.value.clamp(1, CONCURRENCY_MAX_LIMIT)
    }

    // ---- who writes, who reads --------------------------------------------------------

    fn cross_check(&mut self, intent: &RawIntent) {
        let written = self.writers.clone();
        let unwritable: Vec<(ContextKey, At)> = self
            .declared
            .iter()
            .filter(|(key, _)| !written.contains(key))
            .map(|(key, place)| (*key, *place))
            .collect();
        for (key, place) in unwritable {
            let message = format!(
                "no agent may write key `{key}`; add it to the `writes` of the agent that should produce it"
            );
            self.error(place, message);
        }
        for success in &intent.success {
            let name = match success {
                RawSuccess::KeyNotEmpty(key)
                | RawSuccess::MinFacts { key, .. }
                | RawSuccess::FactPresent { key, .. } => key,
            };
            let Ok(key) = name.value.parse::<ContextKey>() else {
                continue;
            };
            let known = self.declared.contains_key(&key) || !matches!(key, ContextKey::Custom(_));
            if known && !written.contains(&key) {
                let message = format!(
                    "success depends on key `{key}`, but no agent may write it; the run could never succeed"
                );
                self.error(at(name), message);
            }
        }
        let reads = std::mem::take(&mut self.reads);
        for (agent, key, place) in reads {
            if !written.contains(&key) {
                let message = format!(
                    "agent `{agent}` reads `{key}`, but no agent and no seed can produce it; it will never be woken by it"
                );
                self.warn(place, message);
            }
        }
    }
}

/// Whose expression or template is checked, and what it sees.
struct Seen {
    /// The field, as the spec names it: `when`, `check`, `prompt`.
    field: &'static str,
    /// In words: "agent `x`", "invariant `y`".
    owner: String,
    /// The keys `facts` holds.
    visible: Vec<String>,
    /// With `for_each`, the key of `fact`.
    fact_key: Option<String>,
    /// Whether it is an agent's (its `reads` is what it sees).
    agent: bool,
}

/// Where the name of the node the parser places at `offset` begins: a field at its name
/// rather than the `.` before it, a call at its name rather than its `(`.
fn at_name(text: &str, offset: usize) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let is_word = |c: &char| c.is_alphanumeric() || *c == '_';
    match chars.get(offset) {
        Some('.') => offset + 1,
        Some('(') => {
            let before = chars.get(..offset).unwrap_or_default();
            offset - before.iter().rev().take_while(|c| is_word(c)).count()
        }
        _ => offset,
    }
}

/// The name at `offset` of `text` (skipping the `.` or space before it), for searching.
fn word_at(text: &str, offset: Option<usize>) -> String {
    let Some(offset) = offset else {
        return String::new();
    };
    let is_word = |c: &char| c.is_alphanumeric() || *c == '_';
    text.chars()
        .skip(offset)
        .skip_while(|c| !is_word(c))
        .take_while(is_word)
        .collect()
}

fn class(raw: RawClass) -> InvariantClass {
    match raw {
        RawClass::Structural => InvariantClass::Structural,
        RawClass::Semantic => InvariantClass::Semantic,
        RawClass::Acceptance => InvariantClass::Acceptance,
    }
}

fn well_known_names() -> String {
    ContextKey::well_known()
        .map(|key| key.name().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the gate would refuse `content` as empty.
fn is_empty(content: &Value) -> bool {
    match content {
        Value::Null => true,
        Value::String(text) => text.trim().is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}
