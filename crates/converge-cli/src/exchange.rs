//! Recorded observations as people read them: `converge show RUN OBSERVATION` prints one
//! whole, and `converge why` shows the ones a fact cites, abridged.
//!
//! A model exchange (`llm.exchange`) reads as the provider, the model asked for and the one
//! that answered, tokens, latency, the rendered system and user prompts and the answer; a
//! command's output as its command line, exit code, stdout and stderr; any other observation
//! as where it came from and its payload as indented JSON. Everything is
//! read from the recorded payload, never recomputed, and a field an older journal lacks is
//! said to be unrecorded rather than guessed. Nothing here prints Rust debug output.

use std::fmt::Write as _;

use converge_core::ObservationId;
use converge_llm::EXCHANGE_KIND;
use converge_runtime::{Inspection, RecordedObservation, RemoteRecord, ReplayabilityRecord};
use serde_json::Value;

/// How much of each long text (a prompt, an answer, a payload) `converge why` shows; the
/// rest is counted and `converge show` prints it whole.
const WHY_TEXT_CHARS_MAX: usize = 1_200;
/// How many lines of each long text `converge why` shows.
const WHY_TEXT_LINES_MAX: usize = 40;

/// The kind of a `command` agent's observation (see `docs/command-agents.md`).
const COMMAND_KIND: &str = "command.output";

/// How much of an observation is printed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Length<'a> {
    /// Every field and every text whole (`converge show`).
    Whole,
    /// The essentials, long texts cut at [`WHY_TEXT_CHARS_MAX`] with a pointer to
    /// `converge show` for the run named here (`converge why`).
    Abridged { run: &'a str },
}

/// The observation named `text` in the inspected run, or why there is none.
pub(crate) fn find<'s>(
    seen: &'s Inspection,
    text: &str,
) -> Result<&'s RecordedObservation, String> {
    let id: ObservationId = text.parse().map_err(|_| {
        format!("{text:?} is not an observation id (like c2.a3.o0: cycle, agent, position)")
    })?;
    if let Some(observed) = seen.observation(id) {
        return Ok(observed);
    }
    let run = &seen.summary.id;
    if seen.observations.is_empty() {
        return Err(format!("run {run} recorded no observations"));
    }
    let known: Vec<String> = seen
        .observations
        .iter()
        .take(KNOWN_SHOWN_MAX)
        .map(|observed| observed.id.to_string())
        .collect();
    let more = seen.observations.len().saturating_sub(KNOWN_SHOWN_MAX);
    let more = if more > 0 {
        format!(" and {more} more (`converge inspect {run} --json` lists them)")
    } else {
        String::new()
    };
    Err(format!(
        "run {run} has no observation {id}; it has {}{more}",
        known.join(", ")
    ))
}

/// How many ids an error for an unknown observation lists.
const KNOWN_SHOWN_MAX: usize = 12;

/// `converge show RUN OBSERVATION`: the observation whole, as text or JSON.
pub(crate) fn show(observed: &RecordedObservation, json: bool) -> String {
    if json {
        return serde_json::to_value(observed)
            .unwrap_or_default()
            .to_string();
    }
    text(observed, Length::Whole)
}

/// The observation as lines of text, without indentation: a heading line, then its fields.
pub(crate) fn text(observed: &RecordedObservation, length: Length<'_>) -> String {
    let mut out = String::new();
    match observed.record.kind.as_str() {
        EXCHANGE_KIND => exchange(&mut out, observed, length),
        COMMAND_KIND if observed.record.payload.is_object() => {
            command(&mut out, observed, length);
        }
        _ => other(&mut out, observed, length),
    }
    out
}

/// A model exchange.
fn exchange(out: &mut String, observed: &RecordedObservation, length: Length<'_>) {
    let payload = &observed.record.payload;
    let field = |name: &str| payload[name].as_str().filter(|text| !text.is_empty());
    let _ = writeln!(
        out,
        "model exchange {} by agent `{}`, attempt {}",
        observed.id,
        observed.agent,
        payload["attempt"].as_u64().unwrap_or(1)
    );
    if payload.is_null() {
        let _ = writeln!(out, "its payload was withheld (audit only)");
        origin(out, observed);
        return;
    }
    let _ = writeln!(
        out,
        "provider: {} ({} wire, {})",
        field("provider").unwrap_or("unrecorded"),
        field("wire").unwrap_or("unrecorded"),
        field("base_url").unwrap_or("no base URL recorded")
    );
    let _ = writeln!(out, "model: {}", models(payload));
    let _ = writeln!(out, "tokens: {}", tokens(payload));
    let _ = writeln!(out, "latency: {}", latency(payload));
    if let Length::Whole = length {
        whole_only(out, observed);
    }
    if let Some(finish) = payload["answer"]["finish"].as_str() {
        let _ = writeln!(out, "finish: {finish}");
    }
    if let Some(error) = error(&payload["error"]) {
        let _ = writeln!(out, "error: {error}");
    }
    block(out, "system prompt", field("system"), length, observed);
    block(out, "user prompt", field("prompt"), length, observed);
    let answer = payload["answer"]["text"].as_str().map(readable);
    match answer {
        Some(answer) => block(out, "answer", Some(answer.as_str()), length, observed),
        None => {
            let _ = writeln!(out, "answer: none came");
        }
    }
}

/// The fields only `converge show` prints: parameters, prompt hash, waits, the reference.
fn whole_only(out: &mut String, observed: &RecordedObservation) {
    let payload = &observed.record.payload;
    let parameters = &payload["parameters"];
    if let Some(parameters) = parameters.as_object() {
        let listed: Vec<String> = parameters
            .iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(name, value)| format!("{name} {}", scalar(value)))
            .collect();
        let _ = writeln!(out, "parameters: {}", listed.join(", "));
    }
    if let Some(waited) = payload["waited_ms"].as_u64().filter(|ms| *ms > 0) {
        let _ = writeln!(out, "waited before this attempt: {waited} ms");
    }
    if let Some(hash) = payload["prompt_hash"].as_str() {
        let _ = writeln!(out, "prompt hash: {hash}");
    }
    origin(out, observed);
}

/// Where the observation came from and how a replay treats it.
fn origin(out: &mut String, observed: &RecordedObservation) {
    if let Some(RemoteRecord { system, reference }) = &observed.record.remote {
        let _ = writeln!(out, "from: {system} (reference {reference})");
    }
    let replay = match observed.record.replayability {
        ReplayabilityRecord::Deterministic => "re-executing the agent reproduces it",
        ReplayabilityRecord::Recorded => "replay uses this record and calls nothing",
        ReplayabilityRecord::AuditOnly => "only its reference was kept",
    };
    let _ = writeln!(out, "replay: {replay}");
}

/// What a `command` agent's program printed, and how it exited.
fn command(out: &mut String, observed: &RecordedObservation, length: Length<'_>) {
    let payload = &observed.record.payload;
    let _ = writeln!(
        out,
        "command output {} by agent `{}`",
        observed.id, observed.agent
    );
    let argv: Vec<String> = (payload["argv"].as_array().into_iter().flatten())
        .map(scalar)
        .collect();
    let _ = writeln!(out, "command: {}", argv.join(" "));
    let exit = match payload["exit_code"].as_i64() {
        Some(code) => code.to_string(),
        None => "none (ended by a signal)".to_owned(),
    };
    let _ = writeln!(out, "exit code: {exit}");
    if let Length::Whole = length {
        origin(out, observed);
    }
    let stdout = payload["stdout"].as_str().map(readable);
    block(out, "stdout", stdout.as_deref(), length, observed);
    let mut stderr = payload["stderr"].as_str().unwrap_or_default().to_owned();
    if payload["stderr_truncated"].as_bool() == Some(true) {
        stderr.push_str("\n[cut off at the output limit]");
    }
    block(out, "stderr", Some(stderr.as_str()), length, observed);
}

/// Any other observation: its kind, origin and payload.
fn other(out: &mut String, observed: &RecordedObservation, length: Length<'_>) {
    let _ = writeln!(
        out,
        "observation {} by agent `{}`: {}",
        observed.id, observed.agent, observed.record.kind
    );
    origin(out, observed);
    let payload = serde_json::to_string_pretty(&observed.record.payload).unwrap_or_default();
    block(out, "payload", Some(payload.as_str()), length, observed);
}

/// The model asked for and the one that answered.
fn models(payload: &Value) -> String {
    let asked = payload["model"].as_str().unwrap_or("unrecorded");
    // Older records name the served model only inside the answer.
    let served = payload["served_model"]
        .as_str()
        .or_else(|| payload["answer"]["model"].as_str());
    match served {
        Some(served) if served == asked => format!("{asked} (asked for and answered)"),
        Some(served) => format!("asked for {asked}, answered by {served}"),
        None if payload["answer"].is_null() => format!("asked for {asked}; no answer came"),
        None => format!("asked for {asked}; the answer named no model"),
    }
}

/// Tokens in and out, with the cached prompt tokens among them.
fn tokens(payload: &Value) -> String {
    let usage = if payload["answer"].is_null() {
        &payload["error"]["usage"]
    } else {
        &payload["answer"]["usage"]
    };
    let (Some(input), Some(output)) = (usage["input"].as_u64(), usage["output"].as_u64()) else {
        return "none reported".to_owned();
    };
    let cached = &payload["answer"]["cached"];
    let cached = match (cached["read"].as_u64(), cached["written"].as_u64()) {
        (None, None) => String::new(),
        (read, written) => format!(
            " (of which {} read from the prompt cache, {} written to it)",
            read.unwrap_or(0),
            written.unwrap_or(0)
        ),
    };
    format!("{input} in{cached}, {output} out")
}

/// How long the call took, as recorded.
fn latency(payload: &Value) -> String {
    match payload["latency_ms"].as_u64() {
        Some(ms) => format!("{ms} ms"),
        None => "not recorded (the run predates latency records)".to_owned(),
    }
}

/// A recorded call error in words: `rate_limited (HTTP 429): slow down`.
fn error(error: &Value) -> Option<String> {
    let kind = error["kind"].as_str()?;
    let status = error["status"]
        .as_u64()
        .map(|status| format!(" (HTTP {status})"))
        .unwrap_or_default();
    let message = error["message"].as_str().unwrap_or_default();
    Some(format!("{kind}{status}: {message}"))
}

/// A JSON scalar as text: strings without quotes.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// An answer as people read it: a JSON object or array indented, with its keys in the order
/// they were written; anything else as written.
fn readable(text: &str) -> String {
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(Value::Object(_) | Value::Array(_)) => indent_json(text.trim()),
        _ => text.to_owned(),
    }
}

/// `json` (valid JSON) indented by two spaces a level, as `serde_json::to_string_pretty`
/// would, but keeping every character of its strings and the order of its keys.
fn indent_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', depth * 2));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.next_if(|c| c.is_whitespace()).is_some() {}
                match chars.next_if(|c| matches!(c, '}' | ']')) {
                    Some(close) => out.push(close),
                    None => {
                        depth += 1;
                        newline(&mut out, depth);
                    }
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// A titled text, indented by four spaces, cut when abridged.
fn block(
    out: &mut String,
    title: &str,
    text: Option<&str>,
    length: Length<'_>,
    observed: &RecordedObservation,
) {
    let Some(text) = text else {
        let _ = writeln!(out, "{title}: none");
        return;
    };
    if text.trim().is_empty() {
        let _ = writeln!(out, "{title}: empty");
        return;
    }
    let _ = writeln!(out, "{title}:");
    let (shown, cut) = match length {
        Length::Whole => (text, 0),
        Length::Abridged { .. } => abridge(text),
    };
    for line in shown.lines() {
        let _ = writeln!(out, "    {line}");
    }
    if let (Length::Abridged { run }, 1..) = (length, cut) {
        let _ = writeln!(
            out,
            "    … {cut} more characters: `converge show {run} {}` prints it whole",
            observed.id
        );
    }
}

/// The start of `text` up to [`WHY_TEXT_CHARS_MAX`] characters and [`WHY_TEXT_LINES_MAX`]
/// lines (at a line end when one is near), and how many characters were left out.
fn abridge(text: &str) -> (&str, usize) {
    let by_chars = text
        .char_indices()
        .nth(WHY_TEXT_CHARS_MAX)
        .map(|(at, _)| at);
    let by_lines = (text.match_indices('\n').nth(WHY_TEXT_LINES_MAX - 1)).map(|(at, _)| at);
    let end = match (by_chars, by_lines) {
        (None, None) => return (text, 0),
        (None, Some(lines)) => lines,
        (Some(chars), Some(lines)) if lines <= chars => lines,
        (Some(chars), _) => {
            // Prefer to end at a line end in the last quarter of what is shown.
            match text[..chars].rfind('\n') {
                Some(newline) if newline >= chars / 4 * 3 => newline,
                _ => chars,
            }
        }
    };
    (&text[..end], text[end..].chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_are_whole_and_long_ones_cut_at_a_line_end_when_near() {
        assert_eq!(abridge("short"), ("short", 0));
        let long = "x".repeat(WHY_TEXT_CHARS_MAX + 10);
        assert_eq!(abridge(&long), (&long[..WHY_TEXT_CHARS_MAX], 10));
        let lines = format!("{}\n{}", "a".repeat(1_000), "b".repeat(500));
        assert_eq!(abridge(&lines), (&lines[..1_000], 501));
        let multibyte = "é".repeat(WHY_TEXT_CHARS_MAX + 1);
        assert_eq!(abridge(&multibyte).1, 1);
        let many = "line\n".repeat(WHY_TEXT_LINES_MAX + 2);
        let (shown, cut) = abridge(&many);
        assert_eq!(shown.lines().count(), WHY_TEXT_LINES_MAX);
        assert_eq!(cut, "\nline\nline\n".len());
    }

    #[test]
    fn json_answers_are_indented_in_the_order_written() {
        let answer = r#"{"proposals": [{"key": "h", "id": "a,b", "content": {"q": "say \"{x}\"", "e": {}, "l": [ ]}}]}"#;
        let expected = r#"{
  "proposals": [
    {
      "key": "h",
      "id": "a,b",
      "content": {
        "q": "say \"{x}\"",
        "e": {},
        "l": []
      }
    }
  ]
}"#;
        assert_eq!(readable(answer), expected);
        let reparsed: Value = serde_json::from_str(&readable(answer)).unwrap();
        assert_eq!(reparsed, serde_json::from_str::<Value>(answer).unwrap());
        assert_eq!(readable("Sure! {not json"), "Sure! {not json");
        assert_eq!(readable("42"), "42");
    }

    #[test]
    fn models_say_which_was_asked_for_and_which_answered() {
        let payload = |json: &str| serde_json::from_str::<Value>(json).unwrap();
        let cases = [
            (
                r#"{"model": "a", "served_model": "b", "answer": {}}"#,
                "asked for a, answered by b",
            ),
            (
                r#"{"model": "a", "served_model": "a", "answer": {}}"#,
                "a (asked for and answered)",
            ),
            (
                r#"{"model": "a", "answer": {"model": "c"}}"#,
                "asked for a, answered by c",
            ),
            (
                r#"{"model": "a", "answer": null}"#,
                "asked for a; no answer came",
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(models(&payload(json)), expected, "{json}");
        }
    }

    #[test]
    fn tokens_name_the_cached_ones() {
        let payload: Value = serde_json::from_str(
            r#"{"answer": {"usage": {"input": 1020, "output": 10},
                           "cached": {"read": 900, "written": 100}}}"#,
        )
        .unwrap();
        assert_eq!(
            tokens(&payload),
            "1020 in (of which 900 read from the prompt cache, 100 written to it), 10 out"
        );
        let failed: Value = serde_json::from_str(
            r#"{"answer": null, "error": {"usage": {"input": 3, "output": 0}}}"#,
        )
        .unwrap();
        assert_eq!(tokens(&failed), "3 in, 0 out");
        assert_eq!(tokens(&Value::Null), "none reported");
    }
}
