//! Bounded rendering: a template's output, the values it builds and the work it does are
//! capped per rendering, not only its instructions (fuel).
//!
//! MiniJinja counts instructions but not bytes: within its fuel, `{% set s = s ~ s %}`
//! repeated thirty times builds a gigabyte, and `format('%1000000000s')`, `replace`, `join`,
//! `batch` or `indent` allocate whatever their arguments ask. MiniJinja has no hook for its
//! operators, so each template's compiled instructions are rewritten before they run (with
//! the engine's `unstable_machinery` API, hence the exact version pin):
//!
//! - `~`, `+` and `*` call bounded functions instead: a string they build is at most
//!   [`TEMPLATE_VALUE_BYTES_MAX`], a list at most [`TEMPLATE_VALUE_ITEMS_MAX`] items;
//! - literal text is written through the same check as expressions, so everything written
//!   to the output, captured or not, counts against [`TEMPLATE_OUTPUT_BYTES_MAX`].
//!
//! The filters that allocate from their arguments (`format`, `replace`, `join`, `batch`,
//! `slice`, `indent`, `tojson`, `pprint`, `string`, `chain`) are replaced by versions that
//! check what they would build first, then call the original. Every byte a rendering builds
//! is charged to [`TEMPLATE_BUILT_BYTES_MAX`], so time is bounded with memory. What is not
//! bounded here: comparing two values that share structure (`[x, x]` nested in a namespace)
//! costs their unshared size; fuel keeps such nesting shallow in practice.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::OnceLock;

use minijinja::machinery::{self, Instruction, Instructions};
use minijinja::value::{Kwargs, Rest};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State, Value};

/// The longest string one operator or filter may build, in bytes.
pub const TEMPLATE_VALUE_BYTES_MAX: usize = 1 << 20;

/// The most items a list built by one operator or filter may hold.
pub const TEMPLATE_VALUE_ITEMS_MAX: usize = 100_000;

/// The most one rendering may write, captured output included, in bytes.
pub const TEMPLATE_OUTPUT_BYTES_MAX: usize = 1 << 20;

/// The most bytes one rendering may build in values and output together.
pub const TEMPLATE_BUILT_BYTES_MAX: usize = 16 << 20;

/// The widest field a format specification or an indentation may ask for.
const TEMPLATE_WIDTH_MAX: usize = 1_000;

/// The size charged for one list item, in bytes.
const ITEM_BYTES: usize = 16;

/// Names the bounded operators are called by; not identifiers a template can write.
const CONCAT: &str = "~!";
const ADD: &str = "+!";
const MUL: &str = "*!";

/// What is left of the current rendering's limits, on this thread.
#[derive(Clone, Copy)]
struct Budget {
    output_bytes: usize,
    built_bytes: usize,
}

thread_local! {
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// Runs `render` with a fresh budget (restoring an outer one afterwards).
pub(crate) fn with_budget<T>(render: impl FnOnce() -> T) -> T {
    let fresh = Budget {
        output_bytes: TEMPLATE_OUTPUT_BYTES_MAX,
        built_bytes: TEMPLATE_BUILT_BYTES_MAX,
    };
    let outer = BUDGET.with(|budget| budget.replace(Some(fresh)));
    let result = render();
    BUDGET.with(|budget| budget.set(outer));
    result
}

fn limit_error(what: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, what)
}

/// Spends `bytes` of what the rendering may build.
fn charge_built(bytes: usize) -> Result<(), Error> {
    BUDGET.with(|cell| {
        let Some(mut budget) = cell.get() else {
            return Ok(());
        };
        if bytes > budget.built_bytes {
            return Err(limit_error(format!(
                "the rendering built more than {TEMPLATE_BUILT_BYTES_MAX} bytes, its limit"
            )));
        }
        budget.built_bytes -= bytes;
        cell.set(Some(budget));
        Ok(())
    })
}

/// Spends `bytes` of output.
fn charge_output(bytes: usize) -> Result<(), Error> {
    BUDGET.with(|cell| {
        let Some(mut budget) = cell.get() else {
            return Ok(());
        };
        if bytes > budget.output_bytes {
            return Err(limit_error(format!(
                "the rendering wrote more than {TEMPLATE_OUTPUT_BYTES_MAX} bytes, its limit"
            )));
        }
        budget.output_bytes -= bytes;
        cell.set(Some(budget));
        Ok(())
    })?;
    charge_built(bytes)
}

/// A string that refuses to grow past its cap.
struct Capped {
    text: String,
    cap: usize,
}

impl std::fmt::Write for Capped {
    fn write_str(&mut self, piece: &str) -> std::fmt::Result {
        if self.text.len() + piece.len() > self.cap {
            return Err(std::fmt::Error);
        }
        self.text.push_str(piece);
        Ok(())
    }
}

/// `value` as text, or `None` if it is longer than `cap` bytes (found without writing more
/// than `cap` bytes).
fn display_capped(value: &Value, cap: usize) -> Option<String> {
    let mut capped = Capped {
        text: String::new(),
        cap,
    };
    write!(capped, "{value}").ok().map(|()| capped.text)
}

/// The formatter of every `{{ … }}` and every piece of literal text: counts it against the
/// output limit before writing it.
fn write_bounded(
    out: &mut Output<'_>,
    state: &mut State<'_, '_>,
    value: &Value,
) -> Result<(), Error> {
    if value.is_undefined()
        && matches!(
            state.undefined_behavior(),
            minijinja::UndefinedBehavior::Strict
        )
    {
        return Err(Error::from(ErrorKind::UndefinedError));
    }
    let text = display_capped(value, TEMPLATE_OUTPUT_BYTES_MAX).ok_or_else(|| {
        limit_error(format!(
            "the rendering wrote more than {TEMPLATE_OUTPUT_BYTES_MAX} bytes, its limit"
        ))
    })?;
    charge_output(text.len())?;
    out.write_str(&text).map_err(Error::from)
}

/// Sets up `env` for bounded rendering: the formatter, the bounded operators and filters.
pub(crate) fn bound(env: &mut Environment<'static>) {
    env.set_formatter(write_bounded);
    env.add_function(CONCAT, concat);
    env.add_function(ADD, add);
    env.add_function(MUL, mul);
    // The originals, under names a template cannot write, for the bounded versions to call.
    env.add_filter("format!", minijinja::filters::format);
    env.add_filter("join!", minijinja::filters::join);
    env.add_filter("batch!", minijinja::filters::batch);
    env.add_filter("slice!", minijinja::filters::slice);
    env.add_filter("indent!", minijinja::filters::indent);
    env.add_filter("format", bounded_format);
    env.add_filter("replace", bounded_replace);
    env.add_filter("join", bounded_join);
    env.add_filter("batch", bounded_count("batch"));
    env.add_filter("slice", bounded_count("slice"));
    env.add_filter("indent", bounded_indent);
    env.add_filter("tojson", bounded_tojson);
    env.add_filter("pprint", bounded_text);
    env.add_filter("string", bounded_text);
    env.add_filter("chain", bounded_chain);
}

fn all_args(value: Value, args: Rest<Value>) -> Vec<Value> {
    std::iter::once(value).chain(args.0).collect()
}

/// `a ~ b`.
fn concat(a: Value, b: Value) -> Result<Value, Error> {
    let left = display_capped(&a, TEMPLATE_VALUE_BYTES_MAX).ok_or_else(string_too_long)?;
    let right =
        display_capped(&b, TEMPLATE_VALUE_BYTES_MAX - left.len()).ok_or_else(string_too_long)?;
    charge_built(left.len() + right.len())?;
    Ok(Value::from(left + &right))
}

fn is_sequence(value: &Value) -> bool {
    matches!(
        value.kind(),
        minijinja::value::ValueKind::Seq | minijinja::value::ValueKind::Iterable
    )
}

/// `a + b`: bounded for strings and lists, MiniJinja's own for numbers.
fn add(a: Value, b: Value) -> Result<Value, Error> {
    if let (Some(left), Some(right)) = (a.as_str(), b.as_str()) {
        if left.len() + right.len() > TEMPLATE_VALUE_BYTES_MAX {
            return Err(limit_error(format!(
                "a string would be longer than {TEMPLATE_VALUE_BYTES_MAX} bytes, the limit"
            )));
        }
        charge_built(left.len() + right.len())?;
        return Ok(Value::from([left, right].concat()));
    }
    if is_sequence(&a) && is_sequence(&b) {
        let items = a.try_iter()?.chain(b.try_iter()?);
        return collect_bounded(items);
    }
    plain_operator(Operator::Add, a, b)
}

/// Collects at most [`TEMPLATE_VALUE_ITEMS_MAX`] items, charging each.
fn collect_bounded(items: impl Iterator<Item = Value>) -> Result<Value, Error> {
    let mut list = Vec::new();
    for item in items {
        if list.len() == TEMPLATE_VALUE_ITEMS_MAX {
            return Err(limit_error(format!(
                "a list would hold more than {TEMPLATE_VALUE_ITEMS_MAX} items, the limit"
            )));
        }
        charge_built(ITEM_BYTES)?;
        list.push(item);
    }
    Ok(Value::from(list))
}

/// `a * b`: bounded repetition, MiniJinja's own multiplication for numbers.
fn mul(a: Value, b: Value) -> Result<Value, Error> {
    let (repeated, count) = if a.is_number() { (&b, &a) } else { (&a, &b) };
    let times = count.as_usize();
    if let (Some(text), Some(times)) = (repeated.as_str(), times) {
        let bytes = text.len().saturating_mul(times);
        if bytes > TEMPLATE_VALUE_BYTES_MAX {
            return Err(limit_error(format!(
                "a string would be longer than {TEMPLATE_VALUE_BYTES_MAX} bytes, the limit"
            )));
        }
        charge_built(bytes)?;
        return Ok(Value::from(text.repeat(times)));
    }
    if let (true, Some(times)) = (is_sequence(repeated), times) {
        let length = repeated.len().unwrap_or(TEMPLATE_VALUE_ITEMS_MAX);
        if length.saturating_mul(times) > TEMPLATE_VALUE_ITEMS_MAX {
            return Err(limit_error(format!(
                "a list would hold more than {TEMPLATE_VALUE_ITEMS_MAX} items, the limit"
            )));
        }
        let items: Vec<Value> = repeated.try_iter()?.collect();
        return collect_bounded((0..times).flat_map(|_| items.iter().cloned()));
    }
    plain_operator(Operator::Mul, a, b)
}

#[derive(Clone, Copy)]
enum Operator {
    Add,
    Mul,
}

/// Applies an operator to values that cannot grow (numbers), with MiniJinja's semantics.
fn plain_operator(operator: Operator, a: Value, b: Value) -> Result<Value, Error> {
    static PLAIN: OnceLock<Environment<'static>> = OnceLock::new();
    let env = PLAIN.get_or_init(Environment::new);
    let source = match operator {
        Operator::Add => "a + b",
        Operator::Mul => "a * b",
    };
    env.compile_expression(source)?
        .eval(minijinja::context! { a => a, b => b })
}

fn too_wide() -> Error {
    limit_error(format!(
        "a field width or indentation is larger than {TEMPLATE_WIDTH_MAX}, the limit"
    ))
}

/// The numbers in a printf-style format string (widths and precisions).
fn widths_fit(format: &str) -> bool {
    format
        .split(|c: char| !c.is_ascii_digit())
        .filter(|digits| !digits.is_empty())
        .all(|digits| {
            digits
                .parse::<usize>()
                .is_ok_and(|width| width <= TEMPLATE_WIDTH_MAX)
        })
}

fn bounded_format(
    state: &mut State<'_, '_>,
    value: Value,
    args: Rest<Value>,
) -> Result<Value, Error> {
    let format = value.as_str().unwrap_or_default();
    if !widths_fit(format) {
        return Err(too_wide());
    }
    let mut bound = format.len();
    let specs = format.matches('%').count();
    for arg in &args.0 {
        bound += display_capped(arg, TEMPLATE_VALUE_BYTES_MAX)
            .ok_or_else(string_too_long)?
            .len()
            .saturating_mul(specs.max(1));
    }
    bound = bound.saturating_add(specs.saturating_mul(TEMPLATE_WIDTH_MAX));
    check_bytes(bound)?;
    state.apply_filter("format!", &all_args(value, args))
}

fn check_bytes(bytes: usize) -> Result<(), Error> {
    if bytes > TEMPLATE_VALUE_BYTES_MAX {
        return Err(string_too_long());
    }
    charge_built(bytes)
}

fn string_too_long() -> Error {
    limit_error(format!(
        "a string would be longer than {TEMPLATE_VALUE_BYTES_MAX} bytes, the limit"
    ))
}

fn list_too_long() -> Error {
    limit_error(format!(
        "a list would hold more than {TEMPLATE_VALUE_ITEMS_MAX} items, the limit"
    ))
}

fn bounded_replace(
    value: String,
    from: String,
    to: String,
    count: Option<usize>,
) -> Result<Value, Error> {
    let matches = if from.is_empty() {
        value.chars().count() + 1
    } else {
        value.matches(from.as_str()).count()
    };
    let matches = count.map_or(matches, |count| count.min(matches));
    check_bytes(value.len().saturating_add(matches.saturating_mul(to.len())))?;
    Ok(Value::from(match count {
        Some(count) => value.replacen(from.as_str(), &to, count),
        None => value.replace(from.as_str(), &to),
    }))
}

fn bounded_join(
    state: &mut State<'_, '_>,
    value: Value,
    args: Rest<Value>,
) -> Result<Value, Error> {
    let joiner = args
        .0
        .first()
        .and_then(|joiner| joiner.as_str())
        .unwrap_or("")
        .len();
    let mut bytes = 0_usize;
    if let Ok(items) = value.try_iter() {
        for item in items {
            let cap = TEMPLATE_VALUE_BYTES_MAX.saturating_sub(bytes);
            bytes += display_capped(&item, cap)
                .ok_or_else(string_too_long)?
                .len()
                + joiner;
            if bytes > TEMPLATE_VALUE_BYTES_MAX {
                return Err(string_too_long());
            }
        }
    }
    check_bytes(bytes)?;
    state.apply_filter("join!", &all_args(value, args))
}

/// `batch` and `slice`: a count past the list limit is refused before anything is built.
fn bounded_count(
    name: &'static str,
) -> impl Fn(&mut State<'_, '_>, Value, Rest<Value>) -> Result<Value, Error> + Send + Sync + 'static
{
    move |state, value, args| {
        let count = args.0.first().and_then(Value::as_usize).unwrap_or(0);
        if count > TEMPLATE_VALUE_ITEMS_MAX {
            return Err(limit_error(format!(
                "{name} was asked for {count} items; the limit is {TEMPLATE_VALUE_ITEMS_MAX}"
            )));
        }
        let original = format!("{name}!");
        state.apply_filter(&original, &all_args(value, args))
    }
}

fn bounded_indent(
    state: &mut State<'_, '_>,
    value: Value,
    width: Option<usize>,
    first: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let width = kwargs.get::<Option<usize>>("width")?.or(width).unwrap_or(4);
    let first = kwargs
        .get::<Option<bool>>("first")?
        .or(first)
        .unwrap_or(false);
    let blank = kwargs.get::<Option<bool>>("blank")?.unwrap_or(false);
    if width > TEMPLATE_WIDTH_MAX {
        return Err(too_wide());
    }
    let text = value.as_str().map_or(0, str::len);
    let lines = value.as_str().map_or(1, |text| text.lines().count() + 1);
    check_bytes(text.saturating_add(lines.saturating_mul(width)))?;
    let args = [value, width.into(), first.into(), blank.into()];
    state.apply_filter("indent!", &args)
}

fn bounded_tojson(value: Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = kwargs.get::<Option<Value>>("indent")?.or(indent);
    let indent = match indent.as_ref() {
        Some(flag) if flag.kind() == minijinja::value::ValueKind::Bool && flag.is_true() => 2,
        Some(width) => width.as_usize().unwrap_or(0),
        None => 0,
    };
    if indent > TEMPLATE_WIDTH_MAX {
        return Err(too_wide());
    }
    let mut capped = CappedBytes::default();
    let written = if indent == 0 {
        serde_json::to_writer(&mut capped, &value)
    } else {
        let spaces = " ".repeat(indent);
        let formatter = serde_json::ser::PrettyFormatter::with_indent(spaces.as_bytes());
        let mut serializer = serde_json::Serializer::with_formatter(&mut capped, formatter);
        serde::Serialize::serialize(&value, &mut serializer)
    };
    written.map_err(|_| {
        limit_error(format!(
            "the JSON would be longer than {TEMPLATE_VALUE_BYTES_MAX} bytes, the limit, or \
             the value is not JSON"
        ))
    })?;
    charge_built(capped.bytes.len())?;
    let text = String::from_utf8(capped.bytes).unwrap_or_default();
    Ok(Value::from_safe_string(text))
}

/// Bytes that refuse to grow past [`TEMPLATE_VALUE_BYTES_MAX`].
#[derive(Default)]
struct CappedBytes {
    bytes: Vec<u8>,
}

impl std::io::Write for CappedBytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > TEMPLATE_VALUE_BYTES_MAX {
            return Err(std::io::Error::other("too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `string` and `pprint`: the value as text, bounded.
fn bounded_text(value: Value) -> Result<Value, Error> {
    if value.as_str().is_some() {
        return Ok(value);
    }
    let text = display_capped(&value, TEMPLATE_VALUE_BYTES_MAX).ok_or_else(string_too_long)?;
    charge_built(text.len())?;
    Ok(Value::from(text))
}

fn bounded_chain(value: Value, args: Rest<Value>) -> Result<Value, Error> {
    let mut iterators = Vec::new();
    for part in all_args(value, args) {
        iterators.push(
            part.try_iter()?
                .take(TEMPLATE_VALUE_ITEMS_MAX + 1)
                .collect::<Vec<_>>(),
        );
        if iterators.iter().map(Vec::len).sum::<usize>() > TEMPLATE_VALUE_ITEMS_MAX {
            return Err(list_too_long());
        }
    }
    collect_bounded(iterators.into_iter().flatten())
}

/// A copy of `original` whose operators and literal text go through the bounded versions.
pub(crate) fn rewrite<'s>(original: &Instructions<'s>) -> Instructions<'s> {
    let count = instruction_count(original);
    // Where each original instruction lands (literal text takes two).
    let mut moved = Vec::with_capacity(count as usize + 1);
    let mut next = 0_u32;
    for index in 0..count {
        moved.push(next);
        next += match original.get(index) {
            Some(Instruction::EmitRaw(_)) => 2,
            _ => 1,
        };
    }
    moved.push(next);
    let target = |old: u32| moved.get(old as usize).copied().unwrap_or(next);
    let mut rewritten = Instructions::new(original.name(), original.source());
    for index in 0..count {
        let Some(instruction) = original.get(index) else {
            continue;
        };
        let replaced: Vec<Instruction<'s>> = match instruction {
            Instruction::EmitRaw(text) => vec![
                Instruction::LoadConst(Value::from(*text)),
                Instruction::Emit,
            ],
            Instruction::StringConcat => vec![Instruction::CallFunction(CONCAT, Some(2))],
            Instruction::Add => vec![Instruction::CallFunction(ADD, Some(2))],
            Instruction::Mul => vec![Instruction::CallFunction(MUL, Some(2))],
            Instruction::Jump(to) => vec![Instruction::Jump(target(*to))],
            Instruction::JumpIfFalse(to) => vec![Instruction::JumpIfFalse(target(*to))],
            Instruction::JumpIfFalseOrPop(to) => vec![Instruction::JumpIfFalseOrPop(target(*to))],
            Instruction::JumpIfTrueOrPop(to) => vec![Instruction::JumpIfTrueOrPop(target(*to))],
            Instruction::Iterate(to) => vec![Instruction::Iterate(target(*to))],
            other => vec![other.clone()],
        };
        for instruction in replaced {
            match (original.get_span(index), original.get_line(index)) {
                (Some(span), _) => rewritten.add_with_span(instruction, span),
                (None, Some(line)) => {
                    rewritten.add_with_line(instruction, u16::try_from(line).unwrap_or(u16::MAX))
                }
                (None, None) => rewritten.add(instruction),
            };
        }
    }
    rewritten
}

fn instruction_count(instructions: &Instructions<'_>) -> u32 {
    let mut count = 0;
    while instructions.get(count).is_some() {
        count += 1;
    }
    count
}

/// Renders `instructions` (rewritten) with `root`, under a fresh budget.
pub(crate) fn render(
    env: &Environment<'static>,
    template: &minijinja::Template<'_, '_>,
    root: &Value,
) -> Result<String, Error> {
    let compiled = machinery::get_compiled_template(template);
    let instructions = rewrite(&compiled.instructions);
    let blocks = compiled
        .blocks
        .iter()
        .map(|(name, block)| (*name, rewrite(block)))
        .collect();
    with_budget(|| {
        let mut text = String::new();
        let mut out = machinery::make_string_output(&mut text);
        machinery::eval(
            env,
            &instructions,
            root.clone(),
            &blocks,
            &mut out,
            AutoEscape::None,
        )?;
        Ok(text)
    })
}

/// Evaluates the lone expression `source` with `root`, keeping the value's type, under a
/// fresh budget.
pub(crate) fn evaluate(
    env: &Environment<'static>,
    source: &str,
    root: &Value,
) -> Result<Value, Error> {
    let expression = machinery::parse_expr(source)?;
    let mut generator = machinery::CodeGenerator::new("<expression>", source);
    generator.compile_expr(&expression);
    let (instructions, _) = generator.finish();
    let instructions = rewrite(&instructions);
    with_budget(|| {
        let mut ignored = String::new();
        let mut out = machinery::make_string_output(&mut ignored);
        let blocks = Default::default();
        let (value, _) = machinery::eval(
            env,
            &instructions,
            root.clone(),
            &blocks,
            &mut out,
            AutoEscape::None,
        )?;
        Ok(value.unwrap_or(Value::UNDEFINED))
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::template::{Templates, variables};

    /// Renders `source`, requiring it to end within five seconds with an error containing
    /// `expected`.
    fn check_refused(source: &str, expected: &str) {
        let mut templates = Templates::new();
        templates.add("t", source).unwrap();
        let started = Instant::now();
        let error = templates.render("t", &variables(&[])).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{source}");
        assert!(error.contains(expected), "{source}: {error}");
        assert!(!error.contains("{ ") && !error.contains("Some("), "{error}");
    }

    #[test]
    fn growing_values_are_refused_at_their_limit() {
        let doubling = "{% set s = 'ab' %}".to_owned() + &"{% set s = s ~ s %}".repeat(40);
        check_refused(&doubling, "longer than 1048576 bytes");
        let adding = "{% set s = 'ab' %}".to_owned() + &"{% set s = s + s %}".repeat(40);
        check_refused(&adding, "longer than 1048576 bytes");
        let in_a_loop = "{% set ns = namespace(s='ab') %}{% for i in range(60) %}\
                         {% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}";
        check_refused(in_a_loop, "longer than 1048576 bytes");
        let lists = "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}\
                     {% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | length }}";
        check_refused(lists, "more than 100000 items");
        check_refused("{{ 'x' * 1000000000 }}", "longer than 1048576 bytes");
        check_refused(
            "{{ ([1, 2] * 1000000000) | length }}",
            "more than 100000 items",
        );
        let nested = "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}\
                      {% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l | tojson | length }}";
        check_refused(nested, "JSON would be longer");
        let shown = "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}\
                     {% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}";
        check_refused(shown, "wrote more than 1048576 bytes");
    }

    #[test]
    fn filters_that_allocate_from_their_arguments_are_bounded() {
        check_refused("{{ '%1000000000s' | format('x') }}", "larger than 1000");
        check_refused(
            "{{ ('ab' * 100000) | replace('', 'xyz' * 300) }}",
            "longer than",
        );
        check_refused("{{ range(100000) | join('x' * 100) }}", "longer than");
        check_refused(
            "{{ [1] | batch(1000000000, 0) | list | length }}",
            "limit is 100000",
        );
        check_refused(
            "{{ [1] | slice(1000000000, 0) | list | length }}",
            "limit is 100000",
        );
        check_refused("{{ 'a\nb' | indent(1000000000) }}", "larger than 1000");
        check_refused("{{ [1] | tojson(indent=1000000000) }}", "larger than 1000");
        check_refused(
            "{{ range(1000000000) | list | length }}",
            "too many elements",
        );
    }

    #[test]
    fn output_is_bounded_including_literal_text() {
        let text = "x".repeat(1024);
        check_refused(
            &format!("{{% for i in range(30000) %}}{text}{{% endfor %}}"),
            "wrote more than 1048576 bytes",
        );
        check_refused(
            "{% for i in range(30000) %}{{ 'y' * 1000 }}{% endfor %}",
            "wrote more than 1048576 bytes",
        );
    }

    #[test]
    fn ordinary_templates_render_as_before() {
        let mut templates = Templates::new();
        let source = "{% set ns = namespace(n=0) %}{% for x in [1, 2, 3] %}\
                      {% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }} {{ 'a' ~ 'b' }} \
                      {{ [1] + [2] }} {{ 2 * 3 }} {{ 'ab' * 2 }} {{ '%s-%03d' | format('x', 7) }} \
                      {{ 'a.b' | replace('.', '/') }} {{ [1, 2] | join(',') }} \
                      {{ [1, 2, 3] | batch(2) | list | length }} {{ {'k': 1} | tojson }} \
                      {{ 'a\nb' | indent(2) }} {{ [1] | chain([2]) | list }} {{ 1.5 + 1 }}";
        templates.add("t", source).unwrap();
        let rendered = templates.render("t", &variables(&[])).unwrap();
        assert_eq!(
            rendered,
            "6 ab [1, 2] 6 abab x-007 a/b 1,2 2 {\"k\":1} a\n  b [1, 2] 2.5"
        );
    }
}
