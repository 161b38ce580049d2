//! The checks of `agents:` entries: names, grants, the fields of each kind, and compiling
//! their conditions, templates and commands.
//!
//! Each entry becomes an [`AgentEntry`] ready to register, or problems at its lines. Who
//! writes and who reads is recorded on the [`Checker`] for its cross-checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use converge_core::ContextKey;
use serde_json::Value;
use serde_saphyr::Spanned;

use super::{AGENT_NAME_LEN_MAX, Checker, RESERVED_AGENT_NAMES, Seen, at, is_empty};
use crate::spec::command::{
    COMMAND_OUTPUT_BYTES_CAP, COMMAND_OUTPUT_BYTES_MAX_DEFAULT, COMMAND_TIMEOUT_MS_DEFAULT,
    CommandAgent,
};
use crate::spec::error::At;
use crate::spec::expr::Expression;
use crate::spec::llm::{
    LLM_ATTEMPTS_MAX, LLM_ERROR_KINDS, LLM_TIMEOUT_MS_DEFAULT, LLM_TIMEOUT_MS_MAX, LlmRetry,
    StructuredOutput, check_base_url,
};
use crate::spec::raw::{RawAgent, RawKind, RawPropose, RawRetry, RawStructured, kind_fields};
use crate::spec::rule::{Propose, RuleAgent};
use crate::spec::seed::SeedFactsAgent;
use crate::spec::template::{ContentTemplate, Templates};
use crate::spec::wake::Wake;
use crate::spec::{AgentEntry, LlmAgentSpec};

/// The longest environment variable name `env` and `pass_env` accept.
const ENV_NAME_BYTES_MAX: usize = 256;

impl Checker<'_> {
    pub(super) fn agent(&mut self, spanned: &Spanned<RawAgent>) -> Option<AgentEntry> {
        let raw = &spanned.value;
        let (Some(name), Some(kind)) = (&raw.name, &raw.kind) else {
            if raw.name.is_none() {
                self.error(at(spanned), "an agent needs a `name`");
            }
            if raw.kind.is_none() {
                let message = "an agent needs a `kind`: seed, rule, command or llm";
                self.error(at(spanned), message);
            }
            return None;
        };
        let name_ok = self.agent_name(name);
        self.kind_fields(raw, kind.value);
        let reads = self.key_list(&raw.reads);
        let writes = match &raw.writes {
            Some(writes) if writes.value.is_empty() => {
                let message = format!(
                    "agent `{}` may write no key; list the keys it proposes into in `writes`",
                    name.value
                );
                self.error(at(writes), message);
                Vec::new()
            }
            Some(writes) => self.key_list(&writes.value),
            None => {
                let message = format!(
                    "agent `{}` needs `writes`: the keys it may propose into",
                    name.value
                );
                self.error(at(name), message);
                Vec::new()
            }
        };
        for (key, read) in reads.iter().zip(&raw.reads) {
            self.reads.push((name.value.clone(), *key, at(read)));
        }
        self.writers.extend(writes.iter().copied());
        let common = Common {
            name: Arc::from(name.value.as_str()),
            kind: kind.value,
            kind_at: at(kind),
            reads,
            writes,
            grant_known: raw.writes.is_some(),
        };
        let entry = match kind.value {
            RawKind::Seed => self.seed_agent(raw, common),
            RawKind::Rule => self.rule_agent(raw, common),
            RawKind::Command => self.command_agent(raw, common),
            RawKind::Llm => self.llm_agent(raw, common),
        };
        entry.filter(|_| name_ok)
    }

    fn agent_name(&mut self, name: &Spanned<String>) -> bool {
        let text = name.value.as_str();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if text.is_empty() || text.len() > AGENT_NAME_LEN_MAX || !text.chars().all(valid_char) {
            let message = format!(
                "invalid agent name {text:?}: expected 1 to {AGENT_NAME_LEN_MAX} ASCII letters, digits, '-', '_' or '.'"
            );
            self.error(at(name), message);
            return false;
        }
        if RESERVED_AGENT_NAMES.contains(&text) {
            let message = format!("agent name `{text}` is reserved for the runtime's own agent");
            self.error(at(name), message);
            return false;
        }
        if let Some(first) = self.agent_names.get(text) {
            let message = format!("agent `{text}` is already defined at line {}", first.line);
            self.error(at(name), message);
            return false;
        }
        self.agent_names.insert(text.to_owned(), at(name));
        true
    }

    /// Refuses fields that belong to another kind.
    fn kind_fields(&mut self, raw: &RawAgent, kind: RawKind) {
        let allowed = kind_fields(kind);
        for (field, place) in present_fields(raw) {
            if !allowed.contains(&field) {
                let message = format!(
                    "field `{field}` does not apply to a `{}` agent; its own fields are: {}",
                    kind.name(),
                    allowed.join(", ")
                );
                self.error(place, message);
            }
        }
    }

    fn require<'r, T>(
        &mut self,
        common: &Common,
        field: &str,
        value: Option<&'r T>,
    ) -> Option<&'r T> {
        if value.is_none() {
            let message = format!("a `{}` agent needs `{field}`", common.kind.name());
            self.error(common.kind_at, message);
        }
        value
    }

    fn seed_agent(&mut self, raw: &RawAgent, common: Common) -> Option<AgentEntry> {
        if let Some(read) = raw.reads.first() {
            let message = "a `seed` agent reads nothing: its facts are written in the spec";
            self.error(at(read), message);
        }
        let facts = self.require(&common, "facts", raw.facts.as_ref())?;
        if facts.value.is_empty() {
            self.error(at(facts), "a seed agent needs at least one fact");
        }
        let mut seeds = Vec::new();
        for raw_fact in &facts.value {
            let Some(fact) = self.seed_fact(raw_fact) else {
                continue;
            };
            if common.grant_known && !common.writes.contains(&fact.key) {
                let message = ungranted(&common.name, fact.key);
                self.error(at(&raw_fact.key), message);
                continue;
            }
            seeds.push(fact);
        }
        Some(AgentEntry::Seed(SeedFactsAgent {
            name: common.name,
            writes: common.writes,
            facts: seeds.into(),
        }))
    }

    fn condition(
        &mut self,
        when: Option<&Spanned<String>>,
        common: &Common,
        for_each: Option<ContextKey>,
    ) -> Result<Option<Expression>, ()> {
        let Some(when) = when else { return Ok(None) };
        self.expression(when, common.seen("when", for_each))
            .map(Some)
    }

    fn rule_agent(&mut self, raw: &RawAgent, common: Common) -> Option<AgentEntry> {
        let for_each = raw.for_each.as_ref().and_then(|name| {
            let key = self.key(name)?;
            if !common.reads.contains(&key) {
                let message = format!("`for_each: {key}` must also be listed in `reads`");
                self.error(at(name), message);
            }
            Some(key)
        });
        let when = self.condition(raw.when.as_ref(), &common, for_each);
        let propose = self.require(&common, "propose", raw.propose.as_ref())?;
        let mut templates = Templates::new();
        let propose = self.propose(&propose.value, &common, &mut templates, for_each);
        Some(AgentEntry::Rule(RuleAgent {
            name: common.name,
            reads: common.reads,
            writes: common.writes,
            for_each,
            when: when.ok()?,
            propose: propose?,
            templates: Arc::new(templates),
            cel: self.cel.clone(),
        }))
    }

    fn propose(
        &mut self,
        raw: &RawPropose,
        common: &Common,
        templates: &mut Templates,
        for_each: Option<ContextKey>,
    ) -> Option<Propose> {
        let key = self.key(&raw.key);
        if let Some(key) = key.filter(|key| common.grant_known && !common.writes.contains(key)) {
            self.error(at(&raw.key), ungranted(&common.name, key));
        }
        let confidence = self.confidence(raw.confidence.as_ref());
        let id_text = Value::String(raw.id.value.clone());
        let id = ContentTemplate::compile(&id_text, "propose.id", templates)
            .map_err(|error| self.error(at(&raw.id), error));
        if let Ok(ContentTemplate::Literal(_)) = &id {
            self.fact_id(&raw.id);
        }
        if let Ok(id) = &id {
            let seen = common.seen("propose.id", for_each);
            self.template_names(&raw.id.value, &raw.id, id, templates, seen);
        }
        if is_empty(&raw.content.value) {
            self.error(
                at(&raw.content),
                "the content is empty (null, \"\", [] or {})",
            );
        }
        let content = ContentTemplate::compile(&raw.content.value, "propose.content", templates)
            .map_err(|error| self.error(at(&raw.content), error));
        if let Ok(content) = &content {
            let seen = common.seen("propose.content", for_each);
            let text = raw.content.value.to_string();
            self.template_names(&text, &raw.content, content, templates, seen);
        }
        Some(Propose {
            key: key?,
            id: id.ok()?,
            content: content.ok()?,
            confidence,
        })
    }

    fn command_agent(&mut self, raw: &RawAgent, common: Common) -> Option<AgentEntry> {
        let when = self.condition(raw.when.as_ref(), &common, None);
        let command = self.require(&common, "command", raw.command.as_ref())?;
        let argv: Vec<String> = command.value.iter().map(|arg| arg.value.clone()).collect();
        let Some(program) = argv.first().filter(|program| !program.trim().is_empty()) else {
            self.error(
                at(command),
                "`command` needs a program: [program, arguments…]",
            );
            return None;
        };
        let program = resolve_program(self.base_dir, program);
        if program.components().count() > 1 && !program.exists() {
            let message = format!("program {} does not exist (yet)", program.display());
            self.warn(at(&command.value[0]), message);
        }
        let timeout_ms = self.positive(raw.timeout_ms.as_ref(), "timeout_ms");
        let output_bytes_max = self.positive(raw.output_bytes_max.as_ref(), "output_bytes_max");
        if let Some(output) = raw.output_bytes_max.as_ref()
            && output.value > COMMAND_OUTPUT_BYTES_CAP
        {
            let message = format!(
                "`output_bytes_max` must be at most {COMMAND_OUTPUT_BYTES_CAP} (16 MiB): an answer is stored whole in the journal"
            );
            self.error(at(output), message);
        }
        let env = self.command_env(raw);
        let pass_env = self.pass_env(raw);
        Some(AgentEntry::Command(CommandAgent {
            wake: Wake {
                name: common.name,
                reads: common.reads,
                writes: common.writes,
                when: when.ok()?,
                cel: self.cel.clone(),
            },
            argv: argv.into(),
            program,
            dir: self.base_dir.to_path_buf(),
            env: Arc::new(env),
            pass_env: pass_env.into(),
            timeout_ms: timeout_ms.unwrap_or(COMMAND_TIMEOUT_MS_DEFAULT),
            output_bytes_max: output_bytes_max.unwrap_or(COMMAND_OUTPUT_BYTES_MAX_DEFAULT),
        }))
    }

    /// The `env:` values, each name checked.
    fn command_env(&mut self, raw: &RawAgent) -> BTreeMap<String, String> {
        let Some(env) = &raw.env else {
            return BTreeMap::new();
        };
        for (name, value) in &env.value {
            if let Err(problem) = check_env_name(name) {
                self.error(at(env), format!("`env`: {problem}"));
            } else if value.contains('\0') {
                let message = format!("`env`: the value of `{name}` contains a NUL character");
                self.error(at(env), message);
            }
        }
        env.value.clone()
    }

    /// The `pass_env:` names, each checked.
    fn pass_env(&mut self, raw: &RawAgent) -> Vec<String> {
        let Some(names) = &raw.pass_env else {
            return Vec::new();
        };
        for name in &names.value {
            if let Err(problem) = check_env_name(&name.value) {
                self.error(at(name), format!("`pass_env`: {problem}"));
            }
            if raw
                .env
                .as_ref()
                .is_some_and(|env| env.value.contains_key(&name.value))
            {
                let message = format!(
                    "`pass_env`: `{}` is also set in `env`; name it in one of them",
                    name.value
                );
                self.error(at(name), message);
            }
        }
        names.value.iter().map(|name| name.value.clone()).collect()
    }

    fn llm_agent(&mut self, raw: &RawAgent, common: Common) -> Option<AgentEntry> {
        let when = self.condition(raw.when.as_ref(), &common, None);
        let model = self.require(&common, "model", raw.model.as_ref());
        if let Some(model) = model.filter(|model| model.value.trim().is_empty()) {
            self.error(at(model), "`model` is empty");
        }
        let prompt = self.require(&common, "prompt", raw.prompt.as_ref());
        let mut templates = Templates::new();
        for (field, text) in [("prompt", prompt), ("system", raw.system.as_ref())] {
            let Some(text) = text else { continue };
            match templates.add(field, &text.value) {
                Err(error) => self.error(at(text), format!("{field}: {error}")),
                Ok(()) => {
                    let compiled = ContentTemplate::Text(Arc::from(field));
                    let seen = common.seen(field, None);
                    self.template_names(&text.value, text, &compiled, &templates, seen);
                }
            }
        }
        if let Some(tokens) = raw.max_tokens.as_ref().filter(|tokens| tokens.value == 0) {
            self.error(at(tokens), "`max_tokens` must be at least 1");
        }
        let temperature = raw.temperature.as_ref();
        if let Some(t) =
            temperature.filter(|t| !(t.value.is_finite() && (0.0..=2.0).contains(&t.value)))
        {
            self.error(at(t), "`temperature` must be a number from 0 to 2");
        }
        if let Some(url) = &raw.base_url
            && let Err(error) = check_base_url(url.value.trim())
        {
            self.error(at(url), format!("`base_url` {error}"));
        }
        let timeout_ms = self.positive(raw.timeout_ms.as_ref(), "timeout_ms");
        if let Some(timeout) = raw.timeout_ms.as_ref()
            && timeout.value > LLM_TIMEOUT_MS_MAX
        {
            let message =
                format!("`timeout_ms` must be at most {LLM_TIMEOUT_MS_MAX} (ten minutes)");
            self.error(at(timeout), message);
        }
        let retry = (raw.retry.as_ref())
            .map_or(Some(LlmRetry::default()), |retry| self.retry(&retry.value));
        Some(AgentEntry::Llm(LlmAgentSpec {
            wake: Wake {
                name: common.name,
                reads: common.reads,
                writes: common.writes,
                when: when.ok()?,
                cel: self.cel.clone(),
            },
            description: raw.description.clone(),
            provider: raw.provider.as_ref().map(|p| p.value.clone()),
            base_url: raw.base_url.as_ref().map(|url| url.value.clone()),
            model: model?.value.clone(),
            max_tokens: raw.max_tokens.as_ref().map(|t| t.value),
            temperature: temperature.map(|t| t.value),
            timeout_ms: timeout_ms.unwrap_or(LLM_TIMEOUT_MS_DEFAULT),
            structured_output: match raw.structured_output.as_ref().map(|s| s.value) {
                Some(RawStructured::Schema) | None => StructuredOutput::Schema,
                Some(RawStructured::JsonObject) => StructuredOutput::JsonObject,
                Some(RawStructured::Prompt) => StructuredOutput::Prompt,
            },
            retry: retry?,
            has_system: raw.system.is_some(),
            templates: Arc::new(templates),
            origin: self.origin.clone(),
            at: common.kind_at,
        }))
    }

    fn retry(&mut self, raw: &RawRetry) -> Option<LlmRetry> {
        let mut retry = LlmRetry::default();
        let mut ok = true;
        if !(1..=LLM_ATTEMPTS_MAX).contains(&raw.attempts.value) {
            let message = format!("`attempts` must be from 1 to {LLM_ATTEMPTS_MAX}");
            self.error(at(&raw.attempts), message);
            ok = false;
        }
        retry.attempts = raw.attempts.value;
        if let Some(backoff) = &raw.backoff_ms {
            retry.backoff_ms = backoff.value;
        }
        if let Some(max) = &raw.backoff_max_ms {
            retry.backoff_max_ms = max.value;
        }
        if retry.backoff_max_ms > LLM_TIMEOUT_MS_MAX || retry.backoff_ms > retry.backoff_max_ms {
            let place = raw.backoff_max_ms.as_ref().or(raw.backoff_ms.as_ref());
            let message = format!(
                "`backoff_ms` must be at most `backoff_max_ms` ({} unless set), itself at most \
                 {LLM_TIMEOUT_MS_MAX}",
                LlmRetry::default().backoff_max_ms
            );
            self.error(place.map(at).unwrap_or_default(), message);
            ok = false;
        }
        if let Some(on) = &raw.on {
            retry.on = Vec::new();
            for name in on {
                if LLM_ERROR_KINDS.contains(&name.value.as_str()) {
                    retry.on.push(name.value.clone());
                } else {
                    let message = format!(
                        "unknown failure `{}` in `retry.on`; expected one of {}",
                        name.value,
                        LLM_ERROR_KINDS.join(", ")
                    );
                    self.error(at(name), message);
                    ok = false;
                }
            }
        }
        ok.then_some(retry)
    }
}

/// What every kind of agent has.
struct Common {
    name: Arc<str>,
    kind: RawKind,
    kind_at: At,
    /// Whether `writes` was given; without it, proposals are not checked against the grant.
    grant_known: bool,
    reads: Vec<ContextKey>,
    writes: Vec<ContextKey>,
}

impl Common {
    /// What an expression or template of this agent sees: `facts` of its `reads`, and
    /// `fact` with `for_each`.
    fn seen(&self, field: &'static str, for_each: Option<ContextKey>) -> Seen {
        Seen {
            field,
            owner: format!("agent `{}`", self.name),
            visible: self.reads.iter().map(|key| key.name().to_owned()).collect(),
            fact_key: for_each.map(|key| key.name().to_owned()),
            agent: true,
        }
    }
}

fn ungranted(agent: &str, key: ContextKey) -> String {
    format!(
        "agent `{agent}` proposes into `{key}`, which its `writes` does not grant; add `{key}` to `writes`"
    )
}

/// An environment variable name: not empty, no `=` and no NUL (the operating system could
/// not pass it), at most [`ENV_NAME_BYTES_MAX`] bytes.
fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > ENV_NAME_BYTES_MAX || name.contains(['=', '\0']) {
        return Err(format!(
            "invalid variable name {name:?}: expected 1 to {ENV_NAME_BYTES_MAX} bytes without `=` or NUL"
        ));
    }
    Ok(())
}

/// A program named by a path is found relative to the spec's directory; a bare name is
/// looked up in `PATH`.
fn resolve_program(base_dir: &Path, program: &str) -> PathBuf {
    if program.contains('/') || program.contains(std::path::MAIN_SEPARATOR) {
        base_dir.join(program)
    } else {
        PathBuf::from(program)
    }
}

/// The optional fields an agent sets, with where.
fn present_fields(raw: &RawAgent) -> Vec<(&'static str, At)> {
    let mut fields = Vec::new();
    let mut note = |name: &'static str, place: Option<At>| {
        if let Some(place) = place {
            fields.push((name, place));
        }
    };
    note("facts", raw.facts.as_ref().map(at));
    note("when", raw.when.as_ref().map(at));
    note("for_each", raw.for_each.as_ref().map(at));
    note("propose", raw.propose.as_ref().map(at));
    note("command", raw.command.as_ref().map(at));
    note("env", raw.env.as_ref().map(at));
    note("pass_env", raw.pass_env.as_ref().map(at));
    note("timeout_ms", raw.timeout_ms.as_ref().map(at));
    note("output_bytes_max", raw.output_bytes_max.as_ref().map(at));
    note("provider", raw.provider.as_ref().map(at));
    note("model", raw.model.as_ref().map(at));
    note("system", raw.system.as_ref().map(at));
    note("prompt", raw.prompt.as_ref().map(at));
    note("max_tokens", raw.max_tokens.as_ref().map(at));
    note("temperature", raw.temperature.as_ref().map(at));
    note("base_url", raw.base_url.as_ref().map(at));
    note("structured_output", raw.structured_output.as_ref().map(at));
    note("retry", raw.retry.as_ref().map(at));
    fields
}
