//! Where inside a YAML value a problem is: from a position within an expression or template
//! to the line and column of the spec file.
//!
//! serde-saphyr locates a value only at its start. A plain or quoted scalar on one line maps
//! exactly (after the opening quote, when the text between is the value as written); other
//! scalars (block scalars, escaped or folded text) are searched for the words at fault,
//! from the value's start on. When neither finds it, the value's start is the place. Nothing
//! here decides what is a problem.

use super::At;

/// Lines after a value's start that a search looks through.
const SEARCH_LINES_MAX: usize = 64;

/// The spec's text, for locating things inside its values.
pub(super) struct Source<'a> {
    text: &'a str,
}

impl<'a> Source<'a> {
    pub(super) fn new(text: &'a str) -> Source<'a> {
        Source { text }
    }

    /// The place of the character at `offset` of `value`, a scalar starting at `start`, or of
    /// the first whole-word occurrence of `words` after `start`, or `start` itself.
    pub(super) fn place(&self, start: At, value: &str, offset: Option<usize>, words: &str) -> At {
        if let Some(offset) = offset
            && let Some(column) = self.inline_column(start, value)
        {
            return At {
                line: start.line,
                column: column + offset as u64,
            };
        }
        self.search(start, words).unwrap_or(start)
    }

    /// The column where `value` begins, if it is written whole on the line of `start`.
    fn inline_column(&self, start: At, value: &str) -> Option<u64> {
        let line = self.line(start.line)?;
        let skip = usize::try_from(start.column.checked_sub(1)?).ok()?;
        let rest: String = line.chars().skip(skip).collect();
        if rest.starts_with(value) {
            return Some(start.column);
        }
        let quoted = rest.strip_prefix(['"', '\''])?;
        quoted.starts_with(value).then_some(start.column + 1)
    }

    /// The first whole-word occurrence of `words` at or after `start`.
    fn search(&self, start: At, words: &str) -> Option<At> {
        if words.trim().is_empty() {
            return None;
        }
        let first = usize::try_from(start.line.checked_sub(1)?).ok()?;
        for (index, line) in self
            .text
            .lines()
            .enumerate()
            .skip(first)
            .take(SEARCH_LINES_MAX)
        {
            let skip = match index == first {
                true => usize::try_from(start.column.saturating_sub(1)).ok()?,
                false => 0,
            };
            let chars: Vec<char> = line.chars().collect();
            let needle: Vec<char> = words.chars().collect();
            if let Some(column) = find_word(&chars, &needle, skip) {
                return Some(At {
                    line: index as u64 + 1,
                    column: column as u64 + 1,
                });
            }
        }
        None
    }

    fn line(&self, number: u64) -> Option<&'a str> {
        let index = usize::try_from(number.checked_sub(1)?).ok()?;
        self.text.lines().nth(index)
    }
}

/// The index of the first occurrence of `needle` in `line` at or after `from` that is not
/// part of a longer word.
fn find_word(line: &[char], needle: &[char], from: usize) -> Option<usize> {
    let word = |c: &char| c.is_alphanumeric() || *c == '_';
    (from..line.len().saturating_sub(needle.len() - 1)).find(|&at| {
        line.get(at..at + needle.len()) == Some(needle)
            && !(at > 0 && line.get(at - 1).is_some_and(word) && needle.first().is_some_and(word))
            && !line.get(at + needle.len()).is_some_and(word)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u64, column: u64) -> At {
        At { line, column }
    }

    #[test]
    fn inline_scalars_map_exactly_and_others_are_searched() {
        let text =
            "a:\n  when: fact.x > 1\n  q: \"facts.y\"\n  b: >-\n    size(facts.zz)\n      > 0\n";
        let source = Source::new(text);
        assert_eq!(
            source.place(at(2, 9), "fact.x > 1", Some(5), "x"),
            at(2, 14)
        );
        assert_eq!(source.place(at(3, 6), "facts.y", Some(6), "y"), at(3, 13));
        assert_eq!(
            source.place(at(4, 6), "size(facts.zz) > 0", Some(11), "zz"),
            at(5, 16)
        );
        assert_eq!(source.place(at(4, 6), "x", None, "nowhere"), at(4, 6));
        assert_eq!(source.place(at(2, 9), "fact.x > 1", None, "fact"), at(2, 9));
    }
}
